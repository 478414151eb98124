"""Preview requests: answer from the render cache, join an identical render in flight, or start one.

Coalescing, in KV bucket `render_cache` next to the cache entries (`<cacheKey>` → output key):
- `inflight.<cacheKey>` → id of the job rendering that preview, written with `create()` so
  exactly one request wins the right to start a render;
- a request that loses the race reads the marker and *joins* that job (answers its id) while
  it is pending or running; a marker whose job ended (failed, cancelled) or never appeared is
  deleted with compare-and-set on its revision and the request tries again;
- `alias.<jobId>` → `<joined job id> <request fingerprint>`, when the joining request carried
  an Idempotency-Key, so a retry with the same key (and body) answers the same job.
Markers are cleaned up lazily by the next request for the same cache key (a completed job's
marker leads to the cache entry, which the next request finds first).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from audioprep.domain.events import JobCompleted, JobRequested, JobResult
from audioprep.domain.kinds import Kind
from audioprep.domain.recipe import Recipe, render_cache_key
from audioprep.domain.views import JobView
from audioprep.services.api.context import ApiContext
from audioprep.services.api.jobs import existing_job, idempotency_key_reused, submit
from audioprep.shared import names, render_cache

log = logging.getLogger("audioprep.api")

JOIN_WAIT_S = 2.0  # how long a marker may point at a job whose request isn't visible yet
ATTEMPTS = 4


@dataclass(frozen=True, slots=True)
class PreviewAnswer:
    job_id: str
    status: str
    cache_key: str
    from_cache: bool = False
    joined: bool = False


@dataclass(frozen=True, slots=True)
class Alias:
    job_id: str
    fingerprint: str | None  # None for aliases written before fingerprints existed


async def aliased_job(api: ApiContext, job_id: str) -> Alias | None:
    """The job an idempotent preview request joined earlier, if it did."""
    kv = api.cache_kv
    try:
        entry = await kv.get(names.render_alias_key(job_id))
    except KeyNotFoundError:
        return None
    if not entry.value:
        return None
    joined, _, fingerprint = entry.value.decode().partition(" ")
    return Alias(joined, fingerprint or None)


Fingerprint = str | Callable[[], Awaitable[str]] | None


async def replayed_job(
    api: ApiContext, job_id: str, tenant: str, *, kind: Kind, fingerprint: Fingerprint
) -> str | None:
    """For a POST with an Idempotency-Key: the job the key already made or joined, if any.

    422 `idempotency_key_reused` when the key was first used for another body or route (409
    for another tenant's). `fingerprint` may be a coroutine function, called only when there
    is a job to compare with (an upload's is computed by reading the whole body).
    """
    first = await existing_job(api, job_id, tenant, kind=kind, fingerprint=None)
    if first is not None:
        found, stored = job_id, first.request_fingerprint
    else:
        joined = await aliased_job(api, job_id)
        if joined is None:
            return None
        if kind != "preview":  # only previews join other jobs
            raise idempotency_key_reused()
        found, stored = joined.job_id, joined.fingerprint
    if fingerprint is not None and stored is not None:
        given = fingerprint if isinstance(fingerprint, str) else await fingerprint()
        if given != stored:
            raise idempotency_key_reused()
    return found


async def _cached_output(
    api: ApiContext, cache_key: str
) -> tuple[str, int, JobResult | None] | None:
    """The cached preview's key, size and result, if the entry and its object still exist."""
    entry = await render_cache.lookup_entry(api.cache_kv, cache_key)
    if entry is None:
        return None
    info = await api.storage.head(entry.key)
    if info is None:  # evicted from storage: the entry is stale
        await render_cache.forget(api.cache_kv, cache_key)
        return None
    return entry.key, info.size, entry.result


async def _joinable(api: ApiContext, job_id: str, tenant: str) -> JobView | None:
    """The marker's job when it is this tenant's and still pending or running."""
    async with api.events.wake_ups(job_id) as published:
        view = await api.views.fresh(job_id)
        if view is None:  # the winner is between its marker and its publish: wait for that
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(published.wait(), JOIN_WAIT_S)
            view = await api.views.fresh(job_id)
    if view is None or view.is_terminal or view.tenant != tenant:
        return None
    return view


async def request_preview(
    api: ApiContext,
    *,
    job_id: str,
    tenant: str,
    source_key: str,
    recipe: Recipe,
    fmt: str,
    fingerprint: str | None,
    traceparent: str | None,
) -> PreviewAnswer:
    """Answer from the cache, join an identical render in flight, or start one.

    `fingerprint` is set for requests with an Idempotency-Key (it goes into the JobRequested,
    or into the alias when the request joins another job).
    """
    cache_key = render_cache_key(source_key, recipe, fmt)
    request = JobRequested(
        job_id=job_id,
        kind="preview",
        tenant=tenant,
        source_key=source_key,
        recipe=msgspec.to_builtins(recipe),
        format=fmt,
        cache_key=cache_key,
        request_fingerprint=fingerprint,
    )
    kv = api.cache_kv
    marker = names.render_marker_key(cache_key)
    for _ in range(ATTEMPTS):
        cached = await _cached_output(api, cache_key)
        if cached is not None:
            await _answer_from_cache(api, request, *cached, traceparent)
            return PreviewAnswer(job_id, "completed", cache_key, from_cache=True)
        try:
            await kv.create(marker, job_id.encode())
        except KeyWrongLastSequenceError:
            pass
        else:
            try:
                await submit(api, request, traceparent)
            except BaseException:
                await _drop_marker(kv, marker, job_id)
                raise
            return PreviewAnswer(job_id, "pending", cache_key)
        try:
            entry = await kv.get(marker)
        except KeyNotFoundError:
            continue  # deleted meanwhile: try again
        other = entry.value.decode() if entry.value else ""
        if other == job_id:  # our own marker (an idempotent retry after a lost answer)
            await submit(api, request, traceparent)
            return PreviewAnswer(job_id, "pending", cache_key)
        view = await _joinable(api, other, tenant) if other else None
        if view is not None:
            if fingerprint is not None:
                await kv.put(names.render_alias_key(job_id), f"{other} {fingerprint}".encode())
            log.info("preview joined", extra={"job_id": other, "cache_key": cache_key})
            return PreviewAnswer(other, view.status, cache_key, joined=True)
        with contextlib.suppress(KeyWrongLastSequenceError):  # replaced meanwhile: look again
            await kv.delete(marker, last=entry.revision)
    # Heavy contention on one key: render without coalescing rather than fail the request.
    await submit(api, request, traceparent)
    return PreviewAnswer(job_id, "pending", cache_key)


async def _drop_marker(kv: KeyValue, marker: str, job_id: str) -> None:
    try:
        entry = await kv.get(marker)
        if entry.value and entry.value.decode() == job_id:
            await kv.delete(marker, last=entry.revision)
    except Exception as exc:
        log.warning("in-flight marker not removed", extra={"job_id": job_id, "error": repr(exc)})


async def _answer_from_cache(
    api: ApiContext,
    request: JobRequested,
    key: str,
    size: int,
    rendered: JobResult | None,
    traceparent: str | None,
) -> None:
    """JobRequested (marked from_cache, so no worker starts it) and JobCompleted in one atomic
    batch (`EventStore.request_completed`: create-once, so also end-once)."""
    cached = msgspec.structs.replace(request, from_cache=True)
    done = JobCompleted(
        job_id=request.job_id,
        kind="preview",
        tenant=request.tenant,
        attempt=0,
        result=msgspec.structs.replace(
            rendered or JobResult(),  # same shape as the render that made it
            source_key=request.source_key,
            preview_key=key,
            format=request.format or (rendered.format if rendered else None),
            size_bytes=size,
            from_cache=True,
        ),
    )
    await submit(api, cached, traceparent, completed=done)
    log.info("preview from cache", extra={"job_id": request.job_id, "cache_key": request.cache_key})
