"""The projector: read stream JOBS in order, fold each event, write the view with CAS."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from audioprep.domain.events import Event, JobRequested, decode_event
from audioprep.domain.fold import fold
from audioprep.domain.views import JobView, decode_view, encode_view
from audioprep.shared import metrics, names
from audioprep.shared.names import Names
from audioprep.shared.nats_conn import is_transient

log = logging.getLogger("audioprep.projector")

CHECKPOINT_EVERY_S = 1.0
CACHE_SIZE = 10_000
CAS_RETRIES = 20
# With events waiting in the stream and none applied for this long, the ordered consumer is
# presumed lost (nats-py does not always recreate it after a restart): subscribe again from
# applied_seq + 1.
STALL_S = 5.0
# Events taken from the queue at once: one KV write per job per batch, jobs written
# concurrently (with fsync on every write, sequential per-event CAS capped the projector at
# ~1.5k events/s and let lag grow without bound at 1k events/s; see bench/RESULTS.md).
BATCH_MAX = 512


class ViewWriter:
    """Applies events to KV views with compare-and-set, caching (view, revision) per job."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self.cache: OrderedDict[str, tuple[JobView, int]] = OrderedDict()

    async def _load(self, job_id: str) -> tuple[JobView | None, int]:
        try:
            entry = await self.kv.get(job_id)
        except KeyNotFoundError:
            return None, 0
        if entry.value is None or entry.revision is None:
            return None, 0
        return decode_view(entry.value), entry.revision

    async def apply_batch(self, items: list[tuple[int, Event]]) -> None:
        """Apply events given in stream order: one write per job, the jobs concurrently."""
        by_job: dict[str, list[tuple[int, Event]]] = {}
        for seq, event in items:
            by_job.setdefault(event.job_id, []).append((seq, event))
        async with asyncio.TaskGroup() as group:
            for job_id, job_items in by_job.items():
                group.create_task(self.apply_job(job_id, job_items))

    async def apply_job(self, job_id: str, items: list[tuple[int, Event]]) -> JobView | None:
        """Fold one job's events (stream order) and write its view once, with CAS."""
        cached = self.cache.get(job_id)
        if cached:
            view, revision = cached
        elif isinstance(items[0][1], JobRequested):
            view, revision = None, 0  # a new job: create-only write; CAS catches an old view
        else:
            view, revision = await self._load(job_id)
        for _ in range(CAS_RETRIES):
            new = view
            for seq, event in items:
                folded = fold(new, event, seq)
                if folded is not None:
                    new = folded
            if new is None or new is view:
                return view
            try:
                if revision:
                    revision = await self.kv.update(job_id, encode_view(new), last=revision)
                else:
                    revision = await self.kv.create(job_id, encode_view(new))
            except KeyWrongLastSequenceError:
                view, revision = await self._load(job_id)  # someone else wrote: re-read
                continue
            self._remember(job_id, new, revision)
            return new
        raise RuntimeError(f"could not write view of {job_id} after {CAS_RETRIES} tries")

    def _remember(self, job_id: str, view: JobView, revision: int) -> None:
        self.cache[job_id] = (view, revision)
        self.cache.move_to_end(job_id)
        if len(self.cache) > CACHE_SIZE:
            self.cache.popitem(last=False)


class Projector:
    """Runs the fold over the live stream, resuming from its checkpoint."""

    def __init__(self, js: JetStreamContext, n: Names) -> None:
        self.js = js
        self.names = n
        self.applied_seq = 0
        self._writer: ViewWriter | None = None
        self._state: KeyValue | None = None
        self._queue: asyncio.Queue[Msg] = asyncio.Queue(maxsize=10_000)
        self._stall_checked = 0.0

    async def load_checkpoint(self) -> int:
        state = await self.js.key_value(self.names.projector_state_bucket)
        self._state = state
        try:
            entry = await state.get(names.PROJECTOR_CHECKPOINT_KEY)
        except KeyNotFoundError:
            return 0
        return int(entry.value or b"0")

    async def save_checkpoint(self) -> None:
        if self._state is not None and self.applied_seq:
            await self._state.put(names.PROJECTOR_CHECKPOINT_KEY, str(self.applied_seq).encode())

    async def _subscribe(self) -> JetStreamContext.PushSubscription:
        """An ordered consumer on the whole stream, starting after the last applied event."""

        async def on_msg(msg: Msg) -> None:
            await self._queue.put(msg)

        return await self.js.subscribe(
            self.names.stream_subjects,
            stream=self.names.stream,
            ordered_consumer=True,
            idle_heartbeat=1.0,
            cb=on_msg,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=self.applied_seq + 1,
            ),
        )

    async def _stalled(self, last_progress: float) -> bool:
        """No progress for STALL_S although the stream has newer events."""
        now = time.monotonic()
        if now - last_progress < STALL_S or now - self._stall_checked < STALL_S:
            return False
        self._stall_checked = now
        try:
            info = await self.js.stream_info(self.names.stream)
        except Exception:
            return False  # NATS is down: nothing to resubscribe to yet
        return (info.state.last_seq or 0) > self.applied_seq

    async def run(self, stop: asyncio.Event) -> None:
        """Project until `stop` is set; the checkpoint is saved about once a second."""
        self._writer = ViewWriter(await self.js.key_value(self.names.jobs_bucket))
        self.applied_seq = await self.load_checkpoint()
        log.info("projector starting", extra={"from_seq": self.applied_seq + 1})
        sub: JetStreamContext.PushSubscription | None = await self._subscribe()
        saver = asyncio.create_task(self._checkpoint_loop(stop))
        last_progress = time.monotonic()
        try:
            while not stop.is_set():
                try:
                    msg = await asyncio.wait_for(self._queue.get(), timeout=0.5)
                except TimeoutError:
                    if sub is None or await self._stalled(last_progress):
                        sub = await self._resubscribe(sub)
                        last_progress = time.monotonic()
                    continue
                batch = [msg]
                while len(batch) < BATCH_MAX and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                if await self._handle(batch, stop):
                    last_progress = time.monotonic()
        finally:
            saver.cancel()
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            try:
                await self.save_checkpoint()
            except Exception as exc:
                log.warning("checkpoint not saved at exit", extra={"error": repr(exc)})

    async def _resubscribe(
        self, old: JetStreamContext.PushSubscription | None
    ) -> JetStreamContext.PushSubscription | None:
        log.warning("projector stalled, resubscribing", extra={"from_seq": self.applied_seq + 1})
        if old is not None:
            with contextlib.suppress(Exception):
                await old.unsubscribe()
        try:
            return await self._subscribe()
        except Exception as exc:
            log.warning("resubscribe failed", extra={"error": repr(exc)})
            return None

    async def _apply_patiently(self, items: list[tuple[int, Event]], stop: asyncio.Event) -> bool:
        """Write the events' views, retrying through NATS outages; False if stopped first."""
        assert self._writer is not None
        delay = 0.1
        while True:
            try:
                await self._writer.apply_batch(items)
                return True
            except Exception as exc:
                # TaskGroup wraps failures: retry if every one of them is transient
                errors = exc.exceptions if isinstance(exc, BaseExceptionGroup) else (exc,)
                if not all(is_transient(e) for e in errors):
                    raise
                seq = items[-1][0]
                log.warning("view not written, retrying", extra={"seq": seq, "error": repr(exc)})
            if stop.is_set():
                return False
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 2)

    async def _handle(self, msgs: list[Msg], stop: asyncio.Event) -> bool:
        """Apply delivered events (in stream order); True if applied_seq moved."""
        items: list[tuple[int, Event]] = []
        last = self.applied_seq
        for msg in msgs:
            seq = msg.metadata.sequence.stream
            if seq <= last:
                continue  # a redelivery after resubscribing: already applied, in stream order
            last = seq
            try:
                items.append((seq, decode_event(msg.data)))
            except Exception:
                log.error("undecodable event skipped", extra={"seq": seq, "subject": msg.subject})
        if last == self.applied_seq:
            return False
        if items and not await self._apply_patiently(items, stop):
            return False
        self.applied_seq = last
        for i, (seq, event) in enumerate(items, 1):
            pending = msgs[-1].metadata.num_pending if i == len(items) else None
            metrics.projector_applied(seq, type(event).__name__, pending)
        return True

    async def _checkpoint_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(CHECKPOINT_EVERY_S)
            try:
                await self.save_checkpoint()
            except Exception as exc:
                log.warning("checkpoint not saved", extra={"error": str(exc)})
