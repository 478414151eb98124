"""The projector: read stream JOBS in order, fold each event, write the view with CAS."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import Counter, OrderedDict

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KV_DEL, KV_OP, KV_PURGE, KeyValue

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
# A compare-and-set refused while nobody wrote the key waits this long before trying again,
# doubling up to the cap (about 5 s over all tries).
CAS_PAUSE_S = 0.01
CAS_PAUSE_MAX_S = 0.5
# With events waiting in the stream and none applied for this long, the ordered consumer is
# presumed lost (nats-py does not always recreate it after a restart): subscribe again from
# applied_seq + 1.
STALL_S = 5.0
# Events taken from the queue at once: one KV write per job per batch (with fsync on every
# write, sequential per-event CAS capped the projector at ~1.5k events/s and let lag grow
# without bound at 1k events/s; see bench/RESULTS.md).
BATCH_MAX = 10_000
# The views of one batch go to the bucket as atomic batches of up to this many messages (the
# server takes 1000), committed concurrently: one fsync per batch instead of one per view, each
# message still compare-and-set on its key's revision. A batch that any key refuses is not
# applied at all; its jobs are then written one by one with CAS (also the path when the
# bucket's stream does not allow atomic batches).
ATOMIC_MAX = 1000
# Fewer views than this are written one by one (concurrently, CAS): an atomic batch's commit
# answers a few ms later than a plain update, which a live job's next poll would see
# (bench/e2e.py "visible": 8 ms per key vs 11-14 ms as a batch of one).
ATOMIC_MIN = 8
ATOMIC_TIMEOUT_S = 10.0
LOAD_CONCURRENCY = 64


class ViewContended(Exception):
    """A view's compare-and-set kept being refused for every try: retried later, like an
    outage (the projector never skips an event)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"could not write view of {job_id} after {CAS_RETRIES} tries")
        self.job_id = job_id


class ViewWriter:
    """Applies events to KV views with compare-and-set, caching (view, revision) per job.

    Reads of a view are direct gets (cheap, answered by any replica of the bucket), so in a
    cluster one can come from a replica that has not got the latest revision yet. CAS makes a
    stale read harmless for a write (it is refused), but not for a decision not to write: a
    direct get saying "no such key" for a job that exists would have the job's events dropped
    (nothing folds onto no view). So "not found", and every re-read after a refused write, is
    asked of the bucket stream's leader (`_current`), which has every acknowledged revision
    (tests/faults/test_projector_leader_changes.py: two projectors while leaders change).
    """

    def __init__(
        self,
        kv: KeyValue,
        js: JetStreamContext,
        *,
        bucket: str,
        atomic_via: Client | None = None,
    ) -> None:
        self.kv = kv
        self.js = js
        self.bucket = bucket
        # set: the bucket's stream allows atomic batches, written through this connection
        self.atomic_via = atomic_via
        self.cache: OrderedDict[str, tuple[JobView, int]] = OrderedDict()
        self.atomic_batches = 0
        self.fallbacks = 0
        self.current_reads = 0

    async def _load(self, job_id: str) -> tuple[JobView | None, int]:
        """The job's view and its revision; (None, 0) only if the key really doesn't exist."""
        try:
            entry = await self.kv.get(job_id)
        except KeyNotFoundError:
            return await self._current(job_id)  # absent, deleted, or a replica behind: ask
        if entry.value is None or entry.revision is None:
            return await self._current(job_id)
        return decode_view(entry.value), entry.revision

    async def _current(self, job_id: str) -> tuple[JobView | None, int]:
        """The key's latest revision as the bucket stream's leader has it (a message get, not a
        direct get); a delete marker gives (None, its revision) so a CAS can write over it."""
        self.current_reads += 1
        try:
            msg = await self.js.get_last_msg(
                names.kv_stream(self.bucket), names.kv_subject(self.bucket, job_id)
            )
        except NotFoundError:
            return None, 0
        revision = msg.seq or 0
        if not msg.data or (msg.headers or {}).get(KV_OP) in (KV_DEL, KV_PURGE):
            return None, revision
        return decode_view(msg.data), revision

    async def apply_batch(self, items: list[tuple[int, Event]]) -> None:
        """Apply events given in stream order: one write per job (atomic batches when the
        bucket allows them, else the jobs concurrently, each with CAS)."""
        by_job: dict[str, list[tuple[int, Event]]] = {}
        for seq, event in items:
            by_job.setdefault(event.job_id, []).append((seq, event))
        if self.atomic_via is None or len(by_job) < ATOMIC_MIN:
            await self._apply_each(by_job, list(by_job))
            return
        bases = await self._bases(by_job)
        writes: list[tuple[str, JobView, int]] = []
        for job_id, job_items in by_job.items():
            view, revision = bases[job_id]
            new = _folded(view, job_items)
            if new is not None and new is not view:
                writes.append((job_id, new, revision))
        chunks = [writes[i : i + ATOMIC_MAX] for i in range(0, len(writes), ATOMIC_MAX)]
        applied = await asyncio.gather(*(self._write_atomic(chunk) for chunk in chunks))
        refused = [
            job_id for ok, c in zip(applied, chunks, strict=True) if not ok for job_id, _, _ in c
        ]
        if refused:
            self.fallbacks += 1
            await self._apply_each(by_job, refused)

    async def _apply_each(
        self, by_job: dict[str, list[tuple[int, Event]]], jobs: list[str]
    ) -> None:
        async with asyncio.TaskGroup() as group:
            for job_id in jobs:
                group.create_task(self.apply_job(job_id, by_job[job_id]))

    async def _bases(
        self, by_job: dict[str, list[tuple[int, Event]]]
    ) -> dict[str, tuple[JobView | None, int]]:
        """Each job's (view, revision) before the batch: cached, new, or read from KV."""
        bases: dict[str, tuple[JobView | None, int]] = {}
        missing: list[str] = []
        for job_id, job_items in by_job.items():
            cached = self.cache.get(job_id)
            if cached:
                bases[job_id] = cached
            elif isinstance(job_items[0][1], JobRequested):
                bases[job_id] = (None, 0)  # a new job: create-only; CAS catches an old view
            else:
                missing.append(job_id)
        if missing:
            gate = asyncio.Semaphore(LOAD_CONCURRENCY)

            async def load(job_id: str) -> None:
                async with gate:
                    bases[job_id] = await self._load(job_id)

            await asyncio.gather(*(load(j) for j in missing))
        return bases

    async def _write_atomic(self, chunk: list[tuple[str, JobView, int]]) -> bool:
        """Write views as one atomic batch, each message CAS on its key's revision (0: the key
        must not exist). True when applied (the cache then holds the new revisions); False
        when the server refused it (nothing was written)."""
        assert self.atomic_via is not None
        nc = self.atomic_via
        batch_id = uuid.uuid4().hex
        last = len(chunk)
        reply: Msg | None = None
        for n, (job_id, view, revision) in enumerate(chunk, start=1):
            headers = {
                "Nats-Batch-Id": batch_id,
                "Nats-Batch-Sequence": str(n),
                "Nats-Expected-Last-Subject-Sequence": str(revision),
            }
            subject = names.kv_subject(self.bucket, job_id)
            if n < last:
                await nc.publish(subject, encode_view(view), headers=headers)
            else:
                headers["Nats-Batch-Commit"] = "1"
                reply = await nc.request(
                    subject, encode_view(view), headers=headers, timeout=ATOMIC_TIMEOUT_S
                )
        assert reply is not None
        answer = json.loads(reply.data or b"{}")
        if "error" in answer or "seq" not in answer:
            # 10071 (a key moved: another projector or a rebuild wrote it) or anything else
            # the server says about batches: write these jobs one by one instead.
            log.debug("atomic batch refused", extra={"error": answer.get("error")})
            return False
        first = int(answer["seq"]) - int(answer.get("count", last)) + 1
        for n, (job_id, view, _) in enumerate(chunk):
            self._remember(job_id, view, first + n)  # a batch's messages are consecutive
        self.atomic_batches += 1
        return True

    async def apply_job(self, job_id: str, items: list[tuple[int, Event]]) -> JobView | None:
        """Fold one job's events (stream order) and write its view once, with CAS."""
        cached = self.cache.get(job_id)
        if cached:
            view, revision = cached
        elif isinstance(items[0][1], JobRequested):
            view, revision = None, 0  # a new job: create-only write; CAS catches an old view
        else:
            view, revision = await self._load(job_id)
        pause = CAS_PAUSE_S
        for _ in range(CAS_RETRIES):
            new = _folded(view, items)
            if new is None or new is view:
                return view
            try:
                # last=0 is create-only. Not kv.create(): on a conflict it re-reads the key by
                # direct get, and a replica without the other writer's revision yet answered
                # KeyNotFoundError (which crashed the projector) instead of the conflict.
                revision = await self.kv.update(job_id, encode_view(new), last=revision)
            except KeyWrongLastSequenceError:
                tried = revision
                view, revision = await self._current(job_id)  # someone else wrote: re-read
                if revision == tried:
                    # Refused although nobody wrote since: another writer's update of this key
                    # is still being replicated (the leader refuses a compare-and-set on a key
                    # with a write in flight, "wrong last sequence" without a number). Wait
                    # for it to land instead of spending every try in a millisecond.
                    await asyncio.sleep(pause)
                    pause = min(CAS_PAUSE_MAX_S, pause * 2)
                continue
            self._remember(job_id, new, revision)
            return new
        raise ViewContended(job_id)

    def _remember(self, job_id: str, view: JobView, revision: int) -> None:
        self.cache[job_id] = (view, revision)
        self.cache.move_to_end(job_id)
        if len(self.cache) > CACHE_SIZE:
            self.cache.popitem(last=False)


def _folded(view: JobView | None, items: list[tuple[int, Event]]) -> JobView | None:
    """`view` with one job's events (stream order) folded in; `view` itself if none changed it."""
    new = view
    for seq, event in items:
        folded = fold(new, event, seq)
        if folded is not None:
            new = folded
    return new


class Projector:
    """Runs the fold over the live stream, resuming from its checkpoint."""

    def __init__(self, js: JetStreamContext, n: Names, *, nc: Client | None = None) -> None:
        """`nc` (the connection `js` belongs to) lets the projector write atomic batches when
        the bucket's stream allows them; without it every view is written on its own."""
        self.js = js
        self.nc = nc
        self.names = n
        self.applied_seq = 0
        self._writer: ViewWriter | None = None
        self._state: KeyValue | None = None
        self._queue: asyncio.Queue[Msg] = asyncio.Queue(maxsize=2 * BATCH_MAX)
        self._stall_checked = 0.0

    async def _make_writer(self) -> ViewWriter:
        bucket = self.names.jobs_bucket
        kv = await self.js.key_value(bucket)
        atomic = False
        if self.nc is not None:
            info = await self.js.stream_info(names.kv_stream(bucket))
            atomic = bool(info.config.allow_atomic)
            if not atomic:
                log.info("bucket has no atomic batches: views written one by one")
        return ViewWriter(kv, self.js, bucket=bucket, atomic_via=self.nc if atomic else None)

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
        self._writer = await self._make_writer()
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
                if not all(is_transient(e) or isinstance(e, ViewContended) for e in errors):
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
        if items:
            counts = Counter(type(event).__name__ for _, event in items)
            metrics.projector_applied_many(counts, items[-1][0], msgs[-1].metadata.num_pending)
        return True

    async def _checkpoint_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(CHECKPOINT_EVERY_S)
            try:
                await self.save_checkpoint()
            except Exception as exc:
                log.warning("checkpoint not saved", extra={"error": str(exc)})
