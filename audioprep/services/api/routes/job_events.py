"""GET /api/audio/jobs/{jobId}/events: the job's events as Server-Sent Events, resumable.

The API never creates a JetStream consumer (deploy/nats-prod.conf denies it): events are read
by batched direct gets from the last sequence sent, and a plain core-NATS subscription on the
job's subjects only says "look again". A periodic re-check covers a missed wake-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

from litestar import Request, get
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import ServerSentEvent, ServerSentEventMessage

from audioprep.domain.events import Event, encode_event, is_terminal
from audioprep.services.api.auth import tenant_for
from audioprep.services.api.context import ApiContext
from audioprep.services.api.jobs import load_view
from audioprep.services.api.openapi import problems
from audioprep.services.api.problems import ProblemError
from audioprep.shared.event_store import EventStore, StoredEvent

log = logging.getLogger("audioprep.api")

KEEPALIVE_S = 15.0
RECHECK_S = 3.0  # look for new events this often even without a wake-up
WAKE_RETRY_S = 0.01  # a wake-up can arrive before the stream has stored the message: retry,
WAKE_RETRY_MAX_S = 0.64  # doubling, up to this delay (a rejected publish also wakes us up)
RETRY_MS = 2000
_EVENT_ID_RE = re.compile(r"^[0-9]{1,19}$")  # a stream sequence, ASCII digits only


def _message(seq: int, event: Event) -> ServerSentEventMessage:
    return ServerSentEventMessage(
        data=encode_event(event).decode(), event=type(event).__name__, id=str(seq)
    )


def _last_event_id(request: Request[Any, Any, Any]) -> int:
    raw = request.headers.get("last-event-id") or request.query_params.get("lastEventId")
    if raw is None or raw == "":  # empty: from the start (as the schema says)
        return 0
    if not _EVENT_ID_RE.match(raw):  # HTTP already trims a header; a query value is exact
        raise ProblemError(
            400, "invalid_last_event_id", "Last-Event-ID must be a stream sequence number"
        )
    return int(raw)


async def _woken(wake: asyncio.Event, timeout: float) -> bool:
    """Wait for a wake-up (then clear it) or the timeout; True when woken."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(wake.wait(), timeout=max(0.0, timeout))
    woken = wake.is_set()
    wake.clear()
    return woken


async def follow_job(
    events: EventStore,
    job_id: str,
    after: int,
    wake: asyncio.Event,
    *,
    recheck_s: float = RECHECK_S,
    keepalive_s: float = KEEPALIVE_S,
) -> AsyncIterator[StoredEvent | None]:
    """The job's events after `after` in stream order until the terminal one; None = idle.

    Every read is a batched direct get from the last sequence yielded, so ids are stream
    sequences with no gap and no duplicate whatever woke us up (or didn't).
    """
    loop = asyncio.get_running_loop()
    history = await events.history(job_id)
    last = after
    for stored in history:
        if stored.seq > after:
            yield stored
            last = stored.seq
        if is_terminal(stored.event):
            return
    last = max([last, *(s.seq for s in history)])
    last_sent = loop.time()
    backoff = 0.0  # > 0 while a wake-up's message is not readable yet
    while True:
        if loop.time() - last_sent >= keepalive_s:
            yield None
            last_sent = loop.time()
        timeout = min(backoff or recheck_s, last_sent + keepalive_s - loop.time())
        woken = await _woken(wake, timeout)
        got = await events.history(job_id, after_seq=last)
        if got:
            backoff = 0.0
            for stored in got:
                yield stored
                last = stored.seq
                if is_terminal(stored.event):
                    return
            last_sent = loop.time()
        elif woken or backoff:
            backoff = backoff * 2 if backoff else WAKE_RETRY_S
            if backoff > WAKE_RETRY_MAX_S:
                backoff = 0.0  # nothing was stored (a duplicate or refused publish): wait again


async def job_event_stream(
    api: NamedDependency[ApiContext], job_id: str, after: int
) -> AsyncIterator[ServerSentEventMessage]:
    """SSE messages for `follow_job`, with a keep-alive comment while idle."""
    async with api.events.wake_ups(job_id) as wake:
        async for stored in follow_job(api.events, job_id, after, wake):
            if stored is None:
                yield ServerSentEventMessage(comment="keep-alive", data=None)
            else:
                yield _message(stored.seq, stored.event)


@get(
    "/api/audio/jobs/{job_id:str}/events",
    summary="Follow a job's events (Server-Sent Events)",
    description=(
        "One SSE message per event of the job in stream order: `id` = stream sequence, "
        "`event` = event type (JobRequested, JobStarted, JobProgressed, ...), `data` = the "
        "event's JSON as stored. The stream ends after the terminal event (JobCompleted, "
        "JobFailed or JobCancelled). Resume with `Last-Event-ID: <seq>` (or `?lastEventId=`): "
        "only later events are sent. A comment line is sent every 15 s while idle."
    ),
    responses=problems(400, 401, 404),
    response_description="text/event-stream",
)
async def job_events(
    request: Request[Any, Any, Any], api: NamedDependency[ApiContext], job_id: FromPath[str]
) -> ServerSentEvent:
    tenant = tenant_for(request, api.settings)
    after = _last_event_id(request)
    await load_view(api, job_id, tenant)  # 404 for unknown ids and other tenants
    return ServerSentEvent(
        job_event_stream(api, job_id, after),
        retry_duration=RETRY_MS,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
