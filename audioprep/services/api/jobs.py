"""Creating jobs (create-once, idempotency keys) and reading their views."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import msgspec
from litestar import Request

from audioprep.domain.events import JobCompleted, JobRequested
from audioprep.domain.kinds import Kind
from audioprep.domain.views import JobView
from audioprep.services.api.context import ApiContext
from audioprep.services.api.limits import admit_request
from audioprep.services.api.problems import ProblemError
from audioprep.shared import logs, metrics
from audioprep.shared.event_store import JobAlreadyExists
from audioprep.shared.ids import idempotent_job_id, is_job_id, new_job_id

log = logging.getLogger("audioprep.api")

MAX_IDEMPOTENCY_KEY = 200


def traceparent_of(request: Request[Any, Any, Any]) -> str | None:
    value = request.headers.get("traceparent")
    return value if value and len(value) < 128 else None


def job_id_for(request: Request[Any, Any, Any], tenant: str) -> str:
    """Deterministic id for an Idempotency-Key (per tenant), else a fresh time-sorted id."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return new_job_id()
    if not key.strip() or len(key) > MAX_IDEMPOTENCY_KEY:
        raise ProblemError(
            400, "invalid_idempotency_key", f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} chars"
        )
    return idempotent_job_id(tenant, key)


def has_idempotency_key(request: Request[Any, Any, Any]) -> bool:
    return request.headers.get("idempotency-key") is not None


def request_fingerprint(route: str, canonical: bytes) -> str:
    """sha256 of the route and the request's canonical body: what an Idempotency-Key stands for."""
    return hashlib.sha256(route.encode() + b"\n" + canonical).hexdigest()


def body_fingerprint(route: str, body: msgspec.Struct) -> str:
    """A decoded JSON body, re-encoded with every field (defaults too) in sorted order: key
    order, spacing, `1` vs `1.0` and defaults left out or written out all fingerprint alike."""
    return request_fingerprint(route, msgspec.json.encode(body, order="sorted"))


def idempotency_key_reused() -> ProblemError:
    return ProblemError(
        422,
        "idempotency_key_reused",
        "this Idempotency-Key was used for a different request (another body or route); "
        "send a new key for a new request",
    )


def check_same_request(first: JobRequested, kind: Kind, fingerprint: str | None) -> None:
    """A replayed key must repeat the request it was first used for (same route and body).

    Jobs requested before fingerprints existed have none: for those only the kind is compared.
    """
    if first.kind != kind:
        raise idempotency_key_reused()
    if fingerprint and first.request_fingerprint and first.request_fingerprint != fingerprint:
        raise idempotency_key_reused()


async def existing_job(
    ctx: ApiContext, job_id: str, tenant: str, *, kind: Kind, fingerprint: str | None
) -> JobRequested | None:
    """The job's JobRequested if it already exists for this tenant (idempotent replays).

    409 when another tenant's job has the id, 422 when the key was first used for another
    request; `fingerprint` None skips the body comparison (the caller compares later).
    """
    first = await ctx.events.first_event(job_id)
    if first is None or not isinstance(first.event, JobRequested):
        return None
    if first.event.tenant != tenant:
        raise ProblemError(409, "idempotency_conflict", "this Idempotency-Key is already used")
    check_same_request(first.event, kind, fingerprint)
    return first.event


async def submit(
    ctx: ApiContext,
    event: JobRequested,
    traceparent: str | None,
    *,
    completed: JobCompleted | None = None,
    admitted: bool = False,
) -> str:
    """Publish JobRequested once (with its JobCompleted when the API answers the job itself);
    a replay of the same request answers with the same job.

    A tenant with a queue limit or a daily quota is checked first (429 past it) unless the
    route already did (`admitted`: an upload is checked before it is stored); a job the API
    answers itself (render-cache hit) costs nothing and is never refused."""
    if not admitted and completed is None:
        await admit_request(ctx, event)
    try:
        if completed is None:
            await ctx.events.request_job(event, traceparent=traceparent)
        else:
            await ctx.events.request_completed(event, completed, traceparent=traceparent)
        metrics.job_requested(event.kind)
    except JobAlreadyExists:
        # A concurrent request with the same key won: it must have been the same request.
        existing = await existing_job(
            ctx,
            event.job_id,
            event.tenant,
            kind=event.kind,
            fingerprint=event.request_fingerprint,
        )
        if existing is None:
            # The stream has this id (our own earlier publish whose answer was lost, or a
            # racing request) but the read did not see it yet (a replica behind the leader):
            # we can't tell which request it was. Ask for a retry; it will know.
            raise ProblemError(
                503,
                "service_unavailable",
                "could not confirm whether this job was created; retry with the same "
                "Idempotency-Key",
                headers={"Retry-After": "1"},
            ) from None
        log.info("idempotent replay", extra={"job_id": event.job_id})
    logs.info_line(log, "job requested", job_id=event.job_id, kind=event.kind)
    return event.job_id


async def load_view(ctx: ApiContext, job_id: str, tenant: str, *, fresh: bool = False) -> JobView:
    """The tenant's job (`JobViews.get`, or `.fresh` for a decision right after an event);
    404 for unknown ids and other tenants' jobs."""
    if not is_job_id(job_id):
        raise ProblemError(404, "job_not_found", f"no job {job_id!r}")
    view = await (ctx.views.fresh(job_id) if fresh else ctx.views.get(job_id))
    if view is None or view.tenant != tenant:
        raise ProblemError(404, "job_not_found", f"no job {job_id!r}")
    return view
