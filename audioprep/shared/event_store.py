"""Appending job events to stream JOBS and reading a job's history back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import PubAck, RawStreamMsg
from nats.js.errors import BadRequestError, NotFoundError

from audioprep.domain import kinds
from audioprep.domain.events import (
    Event,
    JobCompleted,
    JobReleased,
    JobRequested,
    decode_event,
    encode_event,
)
from audioprep.shared import direct_get
from audioprep.shared.js_publish import (
    WRONG_LAST_SEQUENCE,
    AckPublisher,
    header_block,
    header_value,
    publish_after,
)
from audioprep.shared.names import Names

DUPLICATE_IN_BATCH = 10201  # "atomic publish batch contains duplicate message id"
HISTORY_BATCH = 256
TERMINAL_CAS_RETRIES = 50


class BatchRejected(Exception):
    """The server refused an atomic batch for another reason than the job existing."""

    def __init__(self, job_id: str, error: dict[str, object]) -> None:
        super().__init__(f"batch for job {job_id} refused: {error}")
        self.error = error


class JobAlreadyExists(Exception):
    """A JobRequested for this id is already in the stream."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} already exists")
        self.job_id = job_id


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event together with its place in the stream."""

    seq: int
    subject: str
    event: Event


def msg_id_for(event: Event) -> str | None:
    """Deterministic Msg-Id: a redelivered job re-emitting an event is deduplicated."""
    attempt = getattr(event, "attempt", None)
    match event.name:
        case "requested":
            return event.job_id
        case "released":
            return f"{event.job_id}:released"
        case "completed" | "failed" | "cancelled":
            return f"{event.job_id}:{event.name}"
        case "started" | "retrying":
            return f"{event.job_id}:{event.name}:{attempt}"
        case _:
            return None


class EventStore:
    """The only writer and reader of stream JOBS for services."""

    def __init__(
        self, nc: Client, js: JetStreamContext, names: Names, *, timeout: float = 5.0
    ) -> None:
        self.nc = nc
        self.js = js
        self.names = names
        self.timeout = timeout
        self._acks = AckPublisher(nc)  # request_job's publish (the API's hot path)

    async def append(self, event: Event, *, traceparent: str | None = None) -> int:
        """Publish one event and wait until the server has it on disk; returns its sequence."""
        headers: dict[str, str] = {}
        msg_id = msg_id_for(event)
        if msg_id:
            headers["Nats-Msg-Id"] = msg_id
        if traceparent:
            headers["traceparent"] = traceparent
        subject = self.names.event_subject(event.kind, event.job_id, event.name)
        ack = await self.js.publish(
            subject, encode_event(event), timeout=self.timeout, headers=headers or None
        )
        return ack.seq

    async def request_job(self, event: JobRequested, *, traceparent: str | None = None) -> int:
        """Publish a job's first event exactly once (create-once headers + Msg-Id).

        Raises JobAlreadyExists when another request already created this job id.
        """
        job_id = event.job_id.encode()
        block = header_block(
            (b"Nats-Msg-Id", job_id),
            (b"Nats-Expected-Last-Subject-Sequence", b"0"),
            (
                b"Nats-Expected-Last-Subject-Sequence-Subject",
                self.names.job_subjects(event.job_id).encode(),
            ),
            *([(b"traceparent", header_value(traceparent))] if traceparent else []),
        )
        subject = self.names.event_subject(event.kind, event.job_id, "requested")
        try:
            ack = await self._acks.publish(
                subject, encode_event(event), block, timeout=self.timeout
            )
        except BadRequestError as exc:
            if exc.err_code != WRONG_LAST_SEQUENCE:
                raise
            raise JobAlreadyExists(event.job_id) from exc
        return ack.seq

    async def append_expecting(
        self, event: Event, last_seq: int, *, traceparent: str | None = None
    ) -> int | None:
        """Append only if the job's latest event is still at `last_seq`; None if it moved on
        (the dispatcher releases a job this way: once, and never after a cancel)."""
        ack = await self._publish_after(event, last_seq, traceparent)
        return None if ack is None or ack.duplicate else ack.seq

    async def _publish_after(
        self, event: Event, last_seq: int, traceparent: str | None
    ) -> PubAck | None:
        """Publish `event` if the job's subjects still end at `last_seq` (its Msg-Id, if it has
        one, for the dedupe window); None when another event landed there first."""
        headers: dict[str, str] = {}
        if msg_id := msg_id_for(event):
            headers["Nats-Msg-Id"] = msg_id
        if traceparent:
            headers["traceparent"] = traceparent
        return await publish_after(
            self.js,
            self.names.event_subject(event.kind, event.job_id, event.name),
            encode_event(event),
            filter_subject=self.names.job_subjects(event.job_id),
            last_seq=last_seq,
            timeout=self.timeout,
            headers=headers,
        )

    async def request_completed(
        self, request: JobRequested, completed: JobCompleted, *, traceparent: str | None = None
    ) -> int:
        """Publish a job that is answered at once (a render-cache hit): its JobRequested and its
        JobCompleted in one atomic batch, so no reader ever sees the one without the other.

        The request carries the create-once check, which makes the completion the job's only
        terminal event too. Returns the completion's sequence; raises JobAlreadyExists like
        `request_job` (also for a replay inside the duplicate window).
        """
        batch_id = uuid.uuid4().hex
        create_once = {
            "Nats-Batch-Id": batch_id,
            "Nats-Batch-Sequence": "1",
            "Nats-Expected-Last-Subject-Sequence": "0",
            "Nats-Expected-Last-Subject-Sequence-Subject": self.names.job_subjects(request.job_id),
        }
        commit = {"Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": "2", "Nats-Batch-Commit": "1"}
        if traceparent:
            create_once["traceparent"] = commit["traceparent"] = traceparent
        await self.nc.publish(
            self.names.event_subject(request.kind, request.job_id, request.name),
            encode_event(request),
            headers=create_once,
        )
        reply = await self.nc.request(
            self.names.event_subject(completed.kind, completed.job_id, completed.name),
            encode_event(completed),
            headers=commit,
            timeout=self.timeout,
        )
        answer = json.loads(reply.data or b"{}")
        error = answer.get("error")
        if error is None:
            return int(answer["seq"])
        if error.get("err_code") in (WRONG_LAST_SEQUENCE, DUPLICATE_IN_BATCH):
            raise JobAlreadyExists(request.job_id)
        raise BatchRejected(request.job_id, error)

    async def first_event(self, job_id: str) -> StoredEvent | None:
        """The job's JobRequested (its first message), or None if the job is unknown."""
        history = await self.history(job_id, limit=1)
        return history[0] if history else None

    @contextlib.asynccontextmanager
    async def wake_ups(self, job_id: str) -> AsyncIterator[asyncio.Event]:
        """An asyncio.Event set whenever something is published on the job's subjects (a core
        NATS subscription: a wake-up means "read again", never the data itself)."""
        wake = asyncio.Event()

        async def on_msg(_msg: Msg) -> None:
            wake.set()

        sub = await self.nc.subscribe(self.names.job_subjects(job_id), cb=on_msg)
        try:
            await self.nc.flush()  # registered before the caller reads: nothing slips by
            yield wake
        finally:
            # A caller that goes away (an SSE client) cancels this scope; shield the clean-up
            # or the await is cancelled again and the subscription lingers on the connection.
            with anyio.CancelScope(shield=True), contextlib.suppress(NatsError):
                await sub.unsubscribe()

    async def request_at(self, seq: int) -> JobRequested | None:
        """The JobRequested at stream sequence `seq`, or the one a JobReleased there points
        at (None if aged out or neither)."""
        for _ in range(2):
            raw = await self._stored_at(seq)
            if raw is None or raw.data is None:
                return None
            try:
                event = decode_event(raw.data)
            except msgspec.DecodeError:
                return None
            if isinstance(event, JobReleased) and event.request_seq < seq:
                seq = event.request_seq
                continue
            return event if isinstance(event, JobRequested) else None
        return None

    async def _stored_at(self, seq: int) -> RawStreamMsg | None:
        """The message at `seq`: a direct get, which any replica may answer; "no message"
        from it is asked again of the stream's leader (a replica still catching up, e.g. a
        node just added to the cluster, has not got it yet: tests/faults/test_partitions.py
        ended a released job `internal_error` on that answer)."""
        try:
            return await self.js.get_msg(self.names.stream, seq, direct=True)
        except NotFoundError:
            pass
        try:
            return await self.js.get_msg(self.names.stream, seq)
        except NotFoundError:
            return None

    async def last_event(
        self, job_id: str, name: kinds.EventName | None = None
    ) -> StoredEvent | None:
        """Last event of a job (or its last event of one name) by direct get."""
        subject = (
            self.names.job_event_any_kind(job_id, name) if name else self.names.job_subjects(job_id)
        )
        try:
            raw = await self.js.get_last_msg(self.names.stream, subject, direct=True)
        except NotFoundError:
            return None
        if raw.data is None or raw.seq is None or raw.subject is None:
            return None
        return StoredEvent(seq=raw.seq, subject=raw.subject, event=decode_event(raw.data))

    async def terminal_event(self, job_id: str) -> StoredEvent | None:
        """The job's completed/failed/cancelled event, if it has one (three direct gets)."""
        found = await asyncio.gather(
            *(self.last_event(job_id, n) for n in kinds.TERMINAL_EVENT_NAMES)
        )
        ended = [e for e in found if e is not None]
        return min(ended, key=lambda e: e.seq) if ended else None

    async def append_terminal(self, event: Event, *, traceparent: str | None = None) -> int | None:
        """Append a terminal event unless the job already ended; returns its seq, else None.

        Optimistic concurrency on the job's subjects (expected last sequence = the job's latest
        event) makes "at most one terminal event per job" hold across workers, redeliveries and
        the dead-letter failer, also after the Msg-Id dedupe window.
        """
        for _ in range(TERMINAL_CAS_RETRIES):
            ended, last = await asyncio.gather(
                self.terminal_event(event.job_id), self.last_event(event.job_id)
            )
            if ended is not None:
                return None
            ack = await self._publish_after(event, last.seq if last else 0, traceparent)
            if ack is None:
                continue  # another event landed in between (or our lost-ack retry): look again
            return None if ack.duplicate else ack.seq
        raise RuntimeError(f"could not append {event.name} to {event.job_id}: too much contention")

    async def history(
        self, job_id: str, *, after_seq: int = 0, limit: int | None = None
    ) -> list[StoredEvent]:
        """All events of one job in stream order, via batched direct gets.

        The first read takes one event, whose `Nats-Num-Pending` says how many follow; the
        next asks for exactly that many. A batch asked for more than there are makes the
        server look through the rest of the stream for them, so sized reads keep the cost of
        an old job's history flat however long the stream has grown (bench/growth.py).
        """
        out: list[StoredEvent] = []
        next_seq = after_seq + 1
        subject = self.names.job_subjects(job_id)
        batch = 1
        while True:
            if limit is not None:
                batch = min(batch, limit - len(out))
            got, pending = await self._direct_batch(subject, next_seq, batch)
            out.extend(got)
            if len(got) < batch or (limit is not None and len(out) >= limit) or pending == 0:
                return out
            next_seq = got[-1].seq + 1
            batch = min(HISTORY_BATCH, pending) if pending is not None else HISTORY_BATCH

    async def _direct_batch(
        self, subject: str, start_seq: int, batch: int
    ) -> tuple[list[StoredEvent], int | None]:
        """Up to `batch` events, and how many more the stream has on `subject` after them."""
        msgs = await direct_get.next_by_subject(
            self.nc, self.names.stream, subject, start_seq, batch, self.timeout
        )
        events = [
            StoredEvent(
                seq=direct_get.sequence(msg),
                subject=direct_get.subject_of(msg),
                event=decode_event(msg.data),
            )
            for msg in msgs
        ]
        return events, direct_get.num_pending(msgs[-1]) if msgs else None
