"""The dispatcher: while it holds the lease, fold the job events and release waiting requests
to the workers, round-robin across tenants; answer admission and queue-position questions;
keep the usage projection. Every worker process runs one; one leads at a time.

Nothing it holds is needed after a crash: the next leader folds the stream again from the
saved floor (the oldest open job's request), so a waiting job is never lost, and a job is
released at most once because each release is written with the job's expected last sequence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from datetime import UTC, datetime, timedelta

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from audioprep.domain.events import Event, JobCancelled, JobReleased, decode_event
from audioprep.domain.kinds import Kind
from audioprep.services.worker.dispatch.lease import LEASE_TTL_S, Lease
from audioprep.services.worker.dispatch.state import CancelWaiting, DispatchState
from audioprep.services.worker.dispatch.usage_writer import UsageWriter
from audioprep.shared import direct_get, metrics, names
from audioprep.shared.admission import (
    AdmitReply,
    AdmitRequest,
    PositionReply,
    PositionRequest,
    StatusReply,
)
from audioprep.shared.event_store import EventStore
from audioprep.shared.nats_conn import is_transient
from audioprep.shared.settings import Settings
from audioprep.shared.usage import day_of, usage_of

log = logging.getLogger("audioprep.dispatch")

RELEASE_ORDER: tuple[Kind, ...] = ("preview", "ingest", "save")  # previews first
STANDBY_POLL_S = 0.5
RENEW_EVERY_S = 1.0
FLUSH_EVERY_S = 0.5
CHECKPOINT_EVERY_S = 1.0
WAKE_S = 0.25  # with no nudge, read anyway this often
READ_BATCH = 512
# After a nudge that found nothing stored yet (the nudge is the publish itself, which can
# come before the server has stored the event): look again, 0.25 ms after, doubling up to
# 8 ms between reads, for up to 50 ms before waiting for the next nudge (or WAKE_S).
READ_RETRY_S = 0.00025
READ_RETRY_MAX_S = 0.008
READ_PATIENCE_S = 0.05
RESPONDER_GROUP = "dispatch"
DECODED = frozenset({"requested", "retrying", "completed", "failed", "cancelled"})


class Checkpoint(msgspec.Struct, kw_only=True, rename="camel"):
    """KV `scheduler` key `checkpoint`: where a new leader starts folding (`floor`)."""

    floor: int
    applied_seq: int = 0


def holder_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def seconds_to_midnight(now: datetime) -> float:
    tomorrow = (now + timedelta(days=1)).date()
    return (datetime(tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=UTC) - now).total_seconds()


class StreamReader:
    """Batched direct gets of one stream through one long-lived inbox (one read at a time)."""

    def __init__(self, nc: Client, stream: str, subject: str) -> None:
        self.nc, self.stream, self.subject = nc, stream, subject
        self.inbox = nc.new_inbox()
        self.queue: asyncio.Queue[Msg] = asyncio.Queue()
        self.sub: Subscription

    @classmethod
    async def open(cls, nc: Client, stream: str, subject: str) -> StreamReader:
        reader = cls(nc, stream, subject)

        async def collect(msg: Msg) -> None:
            reader.queue.put_nowait(msg)

        reader.sub = await nc.subscribe(reader.inbox, cb=collect)
        return reader

    async def read(self, start_seq: int, batch: int, timeout: float) -> list[Msg]:
        while not self.queue.empty():  # leftovers of a read that timed out
            self.queue.get_nowait()
        request = {"seq": start_seq, "next_by_subj": self.subject, "batch": batch}
        await self.nc.publish(
            names.direct_get_subject(self.stream), msgspec.json.encode(request), reply=self.inbox
        )
        out: list[Msg] = []
        while True:  # a batch always ends with a status message (204 end, 404 nothing more)
            msg = await asyncio.wait_for(self.queue.get(), timeout=timeout)
            if (msg.headers or {}).get("Status") is not None:
                return out
            out.append(msg)


class Dispatcher:
    def __init__(self, *, nc: Client, js: JetStreamContext, settings: Settings) -> None:
        self.nc = nc
        self.js = js
        self.settings = settings
        self.names = settings.names
        self.events = EventStore(nc, js, settings.names)
        self.holder = holder_name()
        self.state: DispatchState | None = None
        self.caught_up = False
        self.leading = asyncio.Event()
        self._wake = asyncio.Event()
        self._next_seq = 1
        self._responders: list[Subscription] = []
        self._last_flush = self._last_checkpoint = 0.0
        self._reader: StreamReader | None = None
        self._usage: UsageWriter | None = None
        self._admit_lock = asyncio.Lock()

    # ---- leadership ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Stand by until the lease is free, lead until stopped or the lease is lost."""
        lease: Lease | None = None
        while not stop.is_set():
            try:
                if lease is None:
                    lease = Lease(
                        await self.js.key_value(self.names.scheduler_lease_bucket), self.holder
                    )
                if await lease.acquire():
                    await self._lead(lease, stop)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("dispatcher not running yet", extra={"error": repr(exc)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=STANDBY_POLL_S)

    async def _renew(self, lease: Lease, lost: asyncio.Event) -> None:
        last_ok = time.monotonic()
        while not lost.is_set():
            await asyncio.sleep(RENEW_EVERY_S)
            try:
                if not await lease.renew():
                    log.warning("dispatch lease taken over; stepping down")
                    lost.set()
                    return
                last_ok = time.monotonic()
            except Exception as exc:
                if time.monotonic() - last_ok > LEASE_TTL_S:
                    log.warning("dispatch lease not renewed in time", extra={"error": repr(exc)})
                    lost.set()
                    return

    async def _lead(self, lease: Lease, stop: asyncio.Event) -> None:
        settings = self.settings
        state = DispatchState(
            policies=settings.tenant_policies,
            window=settings.dispatch_window,
            fair=settings.dispatch == "fair",
        )
        self.state, self.caught_up = state, False
        checkpoints = await self.js.key_value(self.names.scheduler_bucket)
        self._usage = UsageWriter(await self.js.key_value(self.names.usage_bucket))
        floor = await self._load_floor(checkpoints)
        self._next_seq = floor
        log.info(
            "dispatching",
            extra={"holder": self.holder, "from_seq": floor, "mode": settings.dispatch},
        )
        self._wake = asyncio.Event()
        self._reader = await StreamReader.open(
            self.nc, self.names.stream, self.names.stream_subjects
        )
        wakers = await self._wake_ups()
        lost = asyncio.Event()
        renewer = asyncio.create_task(self._renew(lease, lost))
        self._responders = []
        self.leading.set()
        metrics.dispatch_leading(True)
        self._last_flush = self._last_checkpoint = asyncio.get_running_loop().time()
        try:
            while not stop.is_set() and not lost.is_set():
                try:
                    await self._step(state, checkpoints)
                except Exception as exc:
                    if not is_transient(exc):
                        raise
                    log.warning("dispatch step failed, retrying", extra={"error": repr(exc)})
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=0.5)
        finally:
            self.leading.clear()
            metrics.dispatch_leading(False)
            renewer.cancel()
            for subscription in (*self._responders, *wakers, self._reader.sub):
                with contextlib.suppress(Exception):
                    await subscription.unsubscribe()
            try:
                await self._usage.flush()
                await self._save(checkpoints, state)
            except Exception as exc:
                log.warning("dispatcher state not saved at exit", extra={"error": repr(exc)})
            if not lost.is_set():
                with contextlib.suppress(Exception):
                    await lease.release()
            log.info("dispatcher stepped down", extra={"applied_seq": state.applied_seq})

    async def _step(self, state: DispatchState, checkpoints: KeyValue) -> None:
        """Read, fold, release, keep the projection and checkpoint; wait for a nudge."""
        assert self._usage is not None
        loop = asyncio.get_running_loop()
        nudged = self._wake.is_set()  # taken before clearing: the read is for this nudge
        self._wake.clear()
        read = await self._read(state, loop.time(), nudged)
        now = loop.time()
        if read < READ_BATCH:
            self.caught_up = True
        if self.caught_up and not self._responders:
            self._responders = await self._respond()
            log.info(
                "dispatcher caught up",
                extra={"applied_seq": state.applied_seq, "open_jobs": len(state.jobs)},
            )
        state.tick(now)
        if self.caught_up:
            await self._release(state)
        if now - self._last_flush >= FLUSH_EVERY_S:
            await self._usage.flush()
            self._last_flush = now
            metrics.dispatch_counts(state.counts(), self.settings.metrics_max_tenants)
        if now - self._last_checkpoint >= CHECKPOINT_EVERY_S:
            await self._save(checkpoints, state)
            self._last_checkpoint = now
        if read < READ_BATCH and not self._wake.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=WAKE_S)

    # ---- reading the stream --------------------------------------------------------------------

    async def _load_floor(self, checkpoints: KeyValue) -> int:
        try:
            entry = await checkpoints.get(names.SCHEDULER_CHECKPOINT_KEY)
        except KeyNotFoundError:
            return 1
        if not entry.value:
            return 1
        return max(1, msgspec.json.decode(entry.value, type=Checkpoint).floor)

    async def _save(self, checkpoints: KeyValue, state: DispatchState) -> None:
        assert self._usage is not None
        if self._usage.dirty:
            await self._usage.flush()  # the floor may pass events only once they are counted
        value = Checkpoint(floor=state.floor(), applied_seq=state.applied_seq)
        await checkpoints.put(names.SCHEDULER_CHECKPOINT_KEY, msgspec.json.encode(value))

    async def _wake_ups(self) -> list[Subscription]:
        """Core subscriptions on the job events we fold: a nudge to read (the data comes from
        the stream, in order, by direct get; no consumer is created)."""

        async def nudge(_: Msg) -> None:
            self._wake.set()

        return [await self.nc.subscribe(f, cb=nudge) for f in self.names.dispatch_filters()]

    async def _read(self, state: DispatchState, now: float, nudged: bool = False) -> int:
        """Fold the events after the last one read (one batched direct get); returns how many
        messages came. A nudge can arrive a moment before its event is stored: then look
        again for a while before going back to waiting (a nudge whose publish the server
        refused finds nothing, and costs those reads)."""
        assert self._reader is not None
        loop = asyncio.get_running_loop()
        give_up = loop.time() + READ_PATIENCE_S
        pause = READ_RETRY_S
        while True:
            msgs = await self._reader.read(self._next_seq, READ_BATCH, self.events.timeout)
            if msgs or not nudged or loop.time() >= give_up:
                break
            await asyncio.sleep(pause)
            pause = min(READ_RETRY_MAX_S, pause * 2)
        effects: list[CancelWaiting] = []
        for msg in msgs:
            effect = self._apply(state, msg, now)
            if effect is not None:
                effects.append(effect)
        if msgs:
            self._next_seq = direct_get.sequence(msgs[-1]) + 1
        for effect in effects:
            await self._cancel_waiting(effect)
        return len(msgs)

    def _apply(self, state: DispatchState, msg: Msg, now: float) -> CancelWaiting | None:
        seq, subject = direct_get.sequence(msg), direct_get.subject_of(msg)
        if seq <= state.applied_seq:
            return None
        try:
            kind, job_id, name = self.names.parse_subject(subject)
            event: Event | None = decode_event(msg.data) if name in DECODED else None
        except (ValueError, msgspec.DecodeError):
            log.error("undecodable event skipped", extra={"seq": seq, "subject": subject})
            state.applied_seq = seq
            return None
        if name == "progressed":
            state.applied_seq = seq  # not folded: progress changes nothing here
            return None
        if event is not None and self._usage is not None:
            counted = usage_of(event)
            if counted is not None:
                self._usage.add(counted[0], seq, counted[1])
        traceparent = (msg.headers or {}).get("traceparent") if name == "requested" else None
        return state.apply(seq, kind, job_id, name, event, now, traceparent)

    async def _cancel_waiting(self, effect: CancelWaiting) -> None:
        """Cancelled before it was released or started: it ends here, at once."""
        entry = effect.entry
        event = JobCancelled(job_id=entry.job_id, kind=entry.kind, tenant=entry.tenant, attempt=0)
        try:
            await self.events.append_terminal(event)
            log.info("waiting job cancelled", extra={"job_id": entry.job_id, "kind": entry.kind})
        except Exception as exc:  # a worker ends it when it meets the request (fifo path)
            log.warning("cancel not recorded", extra={"job_id": entry.job_id, "error": repr(exc)})

    # ---- releasing -----------------------------------------------------------------------------

    async def _release(self, state: DispatchState) -> None:
        for kind in RELEASE_ORDER:
            while (entry := state.next_release(kind)) is not None:
                event = JobReleased(
                    job_id=entry.job_id,
                    kind=entry.kind,
                    tenant=entry.tenant,
                    request_seq=entry.request_seq,
                    attempt_base=entry.attempt_base,
                )
                try:
                    seq = await self.events.append_expecting(
                        event, entry.request_seq, traceparent=entry.traceparent
                    )
                except Exception as exc:
                    state.release_failed(entry)
                    log.warning(
                        "release not written", extra={"job_id": entry.job_id, "error": repr(exc)}
                    )
                    return
                state.release_done(entry, seq is not None)
                if seq is not None:
                    metrics.job_released(entry.kind)

    # ---- answering -----------------------------------------------------------------------------

    async def _respond(self) -> list[Subscription]:
        n = self.names
        return [
            await self.nc.subscribe(n.scheduler_admit_subject, RESPONDER_GROUP, cb=self._on_admit),
            await self.nc.subscribe(
                n.scheduler_position_subject, RESPONDER_GROUP, cb=self._on_position
            ),
            await self.nc.subscribe(
                n.scheduler_status_subject, RESPONDER_GROUP, cb=self._on_status
            ),
        ]

    async def _reply(self, msg: Msg, answer: msgspec.Struct) -> None:
        if msg.reply:
            await self.nc.publish(msg.reply, msgspec.json.encode(answer))

    async def _on_admit(self, msg: Msg) -> None:
        try:
            await self._admit(msg)
        except Exception:
            log.exception("admission not answered")

    async def _admit(self, msg: Msg) -> None:
        state, usage = self.state, self._usage
        try:
            request = msgspec.json.decode(msg.data, type=AdmitRequest)
        except msgspec.DecodeError:
            return
        if state is None or usage is None:
            return
        async with self._admit_lock:
            now = datetime.now(UTC)
            quotas = (
                request.max_processing_s_per_day is not None
                or request.max_upload_bytes_per_day is not None
            )
            today = await usage.current(day_of(now), request.tenant) if quotas else None
            reply: AdmitReply = state.admit(
                request, today, asyncio.get_running_loop().time(), seconds_to_midnight(now)
            )
        await self._reply(msg, reply)

    async def _on_position(self, msg: Msg) -> None:
        state = self.state
        try:
            request = msgspec.json.decode(msg.data, type=PositionRequest)
        except msgspec.DecodeError:
            return
        if state is None:
            return
        positions = {}
        for job_id in request.job_ids[:100]:
            position = state.position(job_id)
            if position is not None:
                positions[job_id] = position
        await self._reply(msg, PositionReply(positions=positions))

    async def _on_status(self, msg: Msg) -> None:
        state = self.state
        if state is None:
            return
        await self._reply(msg, self.status(state))

    def status(self, state: DispatchState) -> StatusReply:
        return StatusReply(
            leader=self.holder,
            mode=self.settings.dispatch,
            applied_seq=state.applied_seq,
            floor=state.floor(),
            caught_up=self.caught_up,
            tenants=state.counts(),
            kinds=state.kind_counts(),
        )
