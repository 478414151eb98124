"""The projector: read stream JOBS in order, fold each event, write the view with CAS."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from services.projector.fold import fold
from shared import subjects
from shared.events import Event, decode_event
from shared.views import JobView, decode_view, encode_view

log = logging.getLogger("audioprep.projector")

CHECKPOINT_EVERY_S = 1.0
CACHE_SIZE = 10_000
CAS_RETRIES = 20


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

    async def apply(self, seq: int, event: Event) -> JobView | None:
        """Fold one event into its job's view; safe against other projectors (CAS + seq)."""
        job_id = event.job_id
        cached = self.cache.get(job_id)
        view, revision = cached if cached else await self._load(job_id)
        for _ in range(CAS_RETRIES):
            new = fold(view, event, seq)
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

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self.applied_seq = 0
        self._writer: ViewWriter | None = None
        self._state: KeyValue | None = None
        self._queue: asyncio.Queue[Msg] = asyncio.Queue(maxsize=10_000)

    async def load_checkpoint(self) -> int:
        state = await self.js.key_value(subjects.PROJECTOR_STATE_BUCKET)
        self._state = state
        try:
            entry = await state.get(subjects.PROJECTOR_CHECKPOINT_KEY)
        except KeyNotFoundError:
            return 0
        return int(entry.value or b"0")

    async def save_checkpoint(self) -> None:
        if self._state is not None and self.applied_seq:
            await self._state.put(subjects.PROJECTOR_CHECKPOINT_KEY, str(self.applied_seq).encode())

    async def run(self, stop: asyncio.Event) -> None:
        """Project until `stop` is set; the checkpoint is saved about once a second."""
        self._writer = ViewWriter(await self.js.key_value(subjects.JOBS_BUCKET))
        self.applied_seq = await self.load_checkpoint()
        log.info("projector starting", extra={"from_seq": self.applied_seq + 1})

        async def on_msg(msg: Msg) -> None:
            await self._queue.put(msg)

        sub = await self.js.subscribe(
            subjects.STREAM_SUBJECTS,
            stream=subjects.STREAM,
            ordered_consumer=True,
            idle_heartbeat=1.0,
            cb=on_msg,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=self.applied_seq + 1,
            ),
        )
        saver = asyncio.create_task(self._checkpoint_loop(stop))
        try:
            while not stop.is_set():
                try:
                    msg = await asyncio.wait_for(self._queue.get(), timeout=0.5)
                except TimeoutError:
                    continue
                await self._handle(msg)
        finally:
            saver.cancel()
            await sub.unsubscribe()
            await self.save_checkpoint()

    async def _handle(self, msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        try:
            event = decode_event(msg.data)
        except Exception:
            log.error("undecodable event skipped", extra={"seq": seq, "subject": msg.subject})
            self.applied_seq = seq
            return
        assert self._writer is not None
        await self._writer.apply(seq, event)
        self.applied_seq = seq

    async def _checkpoint_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(CHECKPOINT_EVERY_S)
            try:
                await self.save_checkpoint()
            except Exception as exc:
                log.warning("checkpoint not saved", extra={"error": str(exc)})
