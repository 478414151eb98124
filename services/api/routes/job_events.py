"""GET /api/audio/jobs/{jobId}/events: the job's events as Server-Sent Events, resumable."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import anyio
import nats.errors
from litestar import Request, get
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import ServerSentEvent, ServerSentEventMessage
from nats.js.api import ConsumerConfig, DeliverPolicy

from services.api.auth import tenant_for
from services.api.context import ApiContext
from services.api.jobs import load_view
from services.api.openapi import problems
from services.api.problems import ProblemError
from shared import subjects
from shared.event_store import StoredEvent
from shared.events import Event, decode_event, encode_event, is_terminal

log = logging.getLogger("audioprep.api")

KEEPALIVE_S = 15.0
RETRY_MS = 2000
_EVENT_ID_RE = re.compile(r"^[0-9]{1,19}$")  # a stream sequence, ASCII digits only


def _message(seq: int, event: Event) -> ServerSentEventMessage:
    return ServerSentEventMessage(
        data=encode_event(event).decode(), event=type(event).__name__, id=str(seq)
    )


def _last_event_id(request: Request[Any, Any, Any]) -> int:
    raw = request.headers.get("last-event-id") or request.query_params.get("lastEventId")
    if raw is None or raw == "":
        return 0
    if not _EVENT_ID_RE.match(raw.strip()):
        raise ProblemError(
            400, "invalid_last_event_id", "Last-Event-ID must be a stream sequence number"
        )
    return int(raw.strip())


async def job_event_stream(
    api: NamedDependency[ApiContext], job_id: str, after: int
) -> AsyncIterator[ServerSentEventMessage]:
    """History after `after` in one batched read, then live events until the terminal one."""
    history: list[StoredEvent] = await api.events.history(job_id)
    last = after
    ended = False
    for stored in history:
        ended = ended or is_terminal(stored.event)
        if stored.seq > after:
            yield _message(stored.seq, stored.event)
            last = stored.seq
    if ended:
        return
    start = max([last, *(s.seq for s in history)]) + 1
    sub = await api.js.subscribe(
        subjects.job_subjects(job_id),
        stream=subjects.STREAM,
        ordered_consumer=True,
        idle_heartbeat=5.0,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start),
    )
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=KEEPALIVE_S)
            except nats.errors.TimeoutError:
                yield ServerSentEventMessage(comment="keep-alive", data=None)
                continue
            event = decode_event(msg.data)
            yield _message(msg.metadata.sequence.stream, event)
            if is_terminal(event):
                return
    finally:
        # A client that goes away cancels this generator's scope; shield the clean-up or the
        # await is cancelled again and the consumer lingers until its inactivity timeout.
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await sub.unsubscribe()


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
