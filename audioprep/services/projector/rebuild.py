"""Rebuild KV bucket `jobs` from stream JOBS: fold every event in memory, then write the diff.

The result equals what the live projector produces, key for key (the same pure `fold` over
the same events), only KV revisions differ. Steps:

1. Snapshot the stream's last sequence S and fold events [first, S] in memory (ordered
   consumer with a message callback: the fastest way nats-py reads a stream, docs/benchmarks.md).
2. Read the bucket's current entries (shared/kv_read.py: an ordered consumer up to the
   last message the leader has) and write only keys whose bytes differ, in
   atomic batches of 500 (one fsync per batch instead of one per key: ~10× faster with
   `sync_interval: always`; provisioning sets `allow_atomic` on stream KV_jobs). Delete keys
   the stream does not produce.
3. Every write is a compare-and-set on the revision just read. A batch that hits a key a live
   projector moved meanwhile is rejected whole and written key by key; such a key, or one
   already newer than S, is re-folded from that job's full history, so rebuilding while a
   projector runs is safe.
4. Reset the projector checkpoint to S; a projector started afterwards resumes at S + 1.

Memory grows with the number of jobs (one view each, ~0.5 KB).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from audioprep.domain.events import decode_event
from audioprep.domain.fold import fold, fold_history
from audioprep.domain.views import JobView, decode_view, encode_view
from audioprep.shared import kv_read, names
from audioprep.shared.event_store import EventStore
from audioprep.shared.names import Names

log = logging.getLogger("audioprep.rebuild")

WRITERS = 128  # key-by-key writes in flight (the fallback when atomic batches are off)
BATCH_SIZE = 500  # views per atomic batch (the server allows up to 1000)
BATCH_TIMEOUT_S = 30.0
READ_TIMEOUT_S = 30.0  # no message for this long while reading means the server went away
CAS_RETRIES = 10

# progress(stage, done, total): stage is "read", "compare", "write" or "delete".
Progress = Callable[[str, int, int], None]


@dataclass
class RebuildReport:
    """What a rebuild did; `seconds` covers the whole run."""

    events: int = 0
    jobs: int = 0
    written: int = 0
    unchanged: int = 0
    deleted: int = 0
    refolded: int = 0
    last_seq: int = 0
    seconds: float = 0.0
    read_seconds: float = 0.0
    differences: list[str] = field(default_factory=list)

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Current:
    """A key in the bucket as read before writing; `value` None is a delete marker."""

    value: bytes | None
    revision: int


async def fold_stream(
    js: JetStreamContext,
    n: Names,
    *,
    start_seq: int,
    end_seq: int,
    progress: Progress | None = None,
) -> tuple[dict[str, JobView], int]:
    """Fold events [start_seq, end_seq] into views in memory; returns (views, events read)."""
    views: dict[str, JobView] = {}
    if end_seq < start_seq:
        return views, 0
    total = end_seq - start_seq + 1
    done = asyncio.Event()
    count = 0
    last_seen = time.monotonic()

    async def on_msg(msg: Msg) -> None:
        nonlocal count, last_seen
        seq = msg.metadata.sequence.stream
        if seq > end_seq:
            done.set()
            return
        count += 1
        try:
            event = decode_event(msg.data)
        except msgspec.DecodeError:
            log.error("undecodable event skipped", extra={"seq": seq, "subject": msg.subject})
        else:
            view = fold(views.get(event.job_id), event, seq)
            if view is not None:
                views[event.job_id] = view
        if seq >= end_seq:
            done.set()

    sub = await js.subscribe(
        n.stream_subjects,
        stream=n.stream,
        ordered_consumer=True,
        idle_heartbeat=1.0,
        cb=on_msg,
        pending_msgs_limit=-1,
        pending_bytes_limit=-1,
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start_seq
        ),
    )
    try:
        seen = -1
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), timeout=0.5)
            if count != seen:
                seen, last_seen = count, time.monotonic()
            elif time.monotonic() - last_seen > READ_TIMEOUT_S:
                raise TimeoutError(f"stream read stalled at {count}/{total} events")
            if progress is not None:
                progress("read", count, total)
    finally:
        await sub.unsubscribe()
    return views, count


async def read_bucket(nc: Client, bucket: str) -> dict[str, Current]:
    """Every key's latest entry, delete markers included (for CAS): the shared KV reader
    (shared/kv_read.py) with an ordered consumer, up to the last message the bucket stream's
    leader has when the read begins.

    Not `kv.watchall()`: its "caught up" marker comes from the consumer's info, which can say
    nothing is pending while the messages are still on their way to the callback; after a
    leader change of the bucket's stream it answered an empty bucket for 500 keys about one
    time in five (tests/faults/test_projector_leader_changes.py), and `rebuild --check` then
    reported every key as different."""
    # direct=False: a whole bucket is nearly always more keys than one direct get answers
    entries = await kv_read.read_latest(
        nc, bucket, deletes=True, direct=False, stall_timeout=READ_TIMEOUT_S
    )
    return {k: Current(None if e.deleted else e.value, e.revision) for k, e in entries.items()}


async def _pool(items: Iterable[str], work: Callable[[str], Awaitable[None]], size: int) -> None:
    """Run `await work(item)` for every item with at most `size` in flight."""
    it = iter(items)

    async def runner() -> None:
        for item in it:
            await work(item)

    await asyncio.gather(*(runner() for _ in range(size)))


def _batches(items: list[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class RebuildWriter:
    """CAS writes of rebuilt views; a conflict re-folds that job from its full history."""

    def __init__(self, kv: KeyValue, events: EventStore, report: RebuildReport) -> None:
        self.kv = kv
        self.events = events
        self.report = report

    async def write(self, key: str, view: JobView | None, current: Current | None) -> None:
        """One key: create, update or delete it unless it already holds `view`."""
        for _ in range(CAS_RETRIES):
            try:
                if view is None:
                    if current is not None and current.value is not None:
                        await self.kv.delete(key, last=current.revision)
                        self.report.deleted += 1
                    return
                data = encode_view(view)
                if current is not None and current.value == data:
                    self.report.unchanged += 1
                    return
                # last=0 is create-only (kv.create re-reads the key by direct get on a conflict,
                # and a replica behind answers KeyNotFoundError instead of the conflict).
                await self.kv.update(key, data, last=current.revision if current else 0)
                self.report.written += 1
                return
            except KeyWrongLastSequenceError:
                pass  # a live projector wrote this key meanwhile: take it from the top
            view, current = await self.refold(key)
        raise RuntimeError(f"view {key} kept changing under the rebuild")

    async def write_batch(
        self, keys: list[str], views: dict[str, JobView], current: dict[str, Current]
    ) -> bool:
        """Write many views as one atomic batch (one fsync): all of them, or none on a conflict.

        Every message carries its own compare-and-set (expected last subject sequence), so a
        key a live projector moved meanwhile rejects the whole batch; the caller then falls
        back to key-by-key writes.
        """
        nc = self.events.nc
        batch_id = uuid.uuid4().hex
        for n, key in enumerate(keys, start=1):
            cur = current.get(key)
            headers = {
                "Nats-Batch-Id": batch_id,
                "Nats-Batch-Sequence": str(n),
                "Nats-Expected-Last-Subject-Sequence": str(cur.revision if cur else 0),
            }
            subject = names.kv_subject(self.events.names.jobs_bucket, key)
            data = encode_view(views[key])
            if n < len(keys):
                await nc.publish(subject, data, headers=headers)
                continue
            headers["Nats-Batch-Commit"] = "1"
            reply = await nc.request(subject, data, headers=headers, timeout=BATCH_TIMEOUT_S)
            answer = json.loads(reply.data or b"{}")
            if "error" in answer:
                log.info("batch not applied, writing key by key", extra={"error": answer["error"]})
                return False
        self.report.written += len(keys)
        return True

    async def refold(self, key: str) -> tuple[JobView | None, Current | None]:
        """The job's view from its whole history, and the bucket's entry right now.

        The entry is read first: the history read after it covers every event the entry was
        folded from, so a CAS on that entry never sets back a view a live projector wrote in
        between (read the other way round, a projector's newer view could be replaced by the
        older fold: tests/faults/test_rebuild_concurrent.py caught it once the projector got
        fast enough to write between the two reads)."""
        self.report.refolded += 1
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            entry = None  # absent or deleted: `create` handles both
        view = fold_history(await self.events.history(key))
        if entry is None or entry.value is None or entry.revision is None:
            return view, None
        return view, Current(entry.value, entry.revision)


def _seq_of(data: bytes | None) -> int:
    if data is None:
        return 0
    try:
        return decode_view(data).seq
    except msgspec.DecodeError:
        return 0


async def rebuild(
    js: JetStreamContext,
    events: EventStore,
    *,
    progress: Progress | None = None,
    check_only: bool = False,
    writers: int = WRITERS,
    batch_size: int = BATCH_SIZE,
) -> RebuildReport:
    """Recreate the whole `jobs` bucket from the stream (see the module docstring)."""
    started = time.monotonic()
    report = RebuildReport()
    info = await js.stream_info(events.names.stream)
    first, last = info.state.first_seq or 1, info.state.last_seq or 0
    report.last_seq = last
    views, report.events = await fold_stream(
        js, events.names, start_seq=first, end_seq=last, progress=progress
    )
    report.jobs = len(views)
    report.read_seconds = time.monotonic() - started
    kv = await js.key_value(events.names.jobs_bucket)
    current = await read_bucket(events.nc, events.names.jobs_bucket)
    if progress is not None:
        progress("compare", len(current), len(current))

    # Keys already holding a view newer than the snapshot (a live projector is ahead of us)
    # are re-folded from their history instead of being set back to the snapshot.
    ahead = {k for k, cur in current.items() if _seq_of(cur.value) > last}
    stale = [
        k for k, c in current.items() if c.value is not None and k not in views and k not in ahead
    ]
    todo = [k for k in views if k not in ahead]
    changed = [k for k in todo if (c := current.get(k)) is None or c.value != encode_view(views[k])]
    report.unchanged = len(todo) - len(changed)
    if check_only:
        report.differences = sorted(changed + stale)
        report.seconds = time.monotonic() - started
        return report

    writer = RebuildWriter(kv, events, report)
    atomic = bool(
        (await js.stream_info(names.kv_stream(events.names.jobs_bucket))).config.allow_atomic
    )

    async def write_one(key: str) -> None:
        await writer.write(key, views.get(key), current.get(key))

    async def delete_one(key: str) -> None:
        await writer.write(key, None, current.get(key))

    async def refresh_one(key: str) -> None:
        view, cur = await writer.refold(key)
        await writer.write(key, view, cur)

    done = 0
    for chunk in _batches(changed, batch_size):
        if not (atomic and await writer.write_batch(chunk, views, current)):
            await _pool(chunk, write_one, writers)
        done += len(chunk)
        if progress is not None:
            progress("write", done, len(changed))
    await _pool(stale, delete_one, writers)
    await _pool(ahead, refresh_one, writers)
    if progress is not None:
        progress("delete", report.deleted, len(stale))

    state = await js.key_value(events.names.projector_state_bucket)
    await state.put(names.PROJECTOR_CHECKPOINT_KEY, str(last).encode())
    report.seconds = time.monotonic() - started
    log.info(
        "projection rebuilt",
        extra={
            "events": report.events,
            "jobs": report.jobs,
            "written": report.written,
            "unchanged": report.unchanged,
            "deleted": report.deleted,
            "refolded": report.refolded,
            "last_seq": last,
            "seconds": round(report.seconds, 2),
        },
    )
    return report
