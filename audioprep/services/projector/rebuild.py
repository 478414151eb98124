"""Rebuild KV bucket `jobs` from stream JOBS: fold every event, then write the diff, in
bounded memory.

The result equals what the live projector produces, key for key (the same pure `fold` over
the same events), only KV revisions differ. Steps:

1. Snapshot the stream's last sequence S and fold events [first, S] (ordered consumer with a
   message callback: the fastest way nats-py reads a stream, docs/benchmarks.md). The views
   being folded are held in an LRU cache of `cache` jobs; a view pushed out of it goes to a
   scratch table (SQLite, a temporary file) and is read back from there when a later event
   of its job comes (rare: a job's events are close together in the stream). Every job is
   looked up there once, when its first event comes: the table also says "never seen", which
   the target bucket can't (its entry may be damaged, stale or a live projector's).
2. Read the bucket's current entries (shared/kv_read.py: an ordered consumer up to the last
   message the leader has) into a second scratch table, and write only keys whose bytes
   differ (a join of the two tables), in atomic batches of 500 (one fsync per batch instead
   of one per key: ~10× faster with `sync_interval: always`; provisioning sets `allow_atomic`
   on stream KV_jobs). Delete keys the stream does not produce.
3. Every write is a compare-and-set on the revision just read. A batch that hits a key a live
   projector moved meanwhile is rejected whole and written key by key; such a key, or one
   already newer than S, is re-folded from that job's full history, so rebuilding while a
   projector runs is safe.
4. Reset the projector checkpoint to S; a projector started afterwards resumes at S + 1.

Memory: the cache (~0.85 KB a view), SQLite's page cache (16 MiB) and a batch: 70 MiB peak
RSS at 300k jobs (bench/RESULTS.md). The scratch file, under TMPDIR and removed at the end,
takes ~0.35 KB a job for the views and as much for the bucket's entries.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import tempfile
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from audioprep.domain.events import Event, decode_event
from audioprep.domain.fold import fold, fold_history
from audioprep.domain.views import JobView, decode_view, encode_view
from audioprep.shared import kv_read, names
from audioprep.shared.event_store import EventStore
from audioprep.shared.kv_read import KvEntry
from audioprep.shared.names import Names

log = logging.getLogger("audioprep.rebuild")
T = TypeVar("T")

WRITERS = 128  # key-by-key writes in flight (the fallback when atomic batches are off)
BATCH_SIZE = 500  # views per atomic batch (the server allows up to 1000)
BATCH_TIMEOUT_S = 30.0
READ_TIMEOUT_S = 30.0  # no message for this long while reading means the server went away
CAS_RETRIES = 10
CACHE = 10_000  # views folded in memory at once (bench/RESULTS.md, 2026-12-01)
DIFFERENCES_KEPT = 1000  # keys `--check` names (all of them are counted)

# progress(stage, done, total): stage is "read", "compare", "write" or "delete".
Progress = Callable[[str, int, int], None]


@dataclass
class RebuildReport:
    """What a rebuild did; `seconds` covers the whole run. `read_back`: views pushed out of
    the cache and read back from the scratch table; `different` (`--check`): keys that differ,
    the first DIFFERENCES_KEPT of them (sorted) in `differences`."""

    events: int = 0
    jobs: int = 0
    written: int = 0
    unchanged: int = 0
    deleted: int = 0
    refolded: int = 0
    read_back: int = 0
    spilled: int = 0
    different: int = 0
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


async def read_stream(
    js: JetStreamContext,
    n: Names,
    on_event: Callable[[Event, int], None],
    *,
    start_seq: int,
    end_seq: int,
    progress: Progress | None = None,
) -> int:
    """`on_event(event, seq)` for every decodable event in [start_seq, end_seq]; returns
    how many events were read."""
    if end_seq < start_seq:
        return 0
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
            on_event(event, seq)
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
    return count


async def fold_stream(
    js: JetStreamContext,
    n: Names,
    *,
    start_seq: int,
    end_seq: int,
    progress: Progress | None = None,
) -> tuple[dict[str, JobView], int]:
    """Fold events [start_seq, end_seq] into views, all in memory; returns (views, events
    read). The reference the bounded rebuild is checked against (tests)."""
    views: dict[str, JobView] = {}

    def on_event(event: Event, seq: int) -> None:
        view = fold(views.get(event.job_id), event, seq)
        if view is not None:
            views[event.job_id] = view

    count = await read_stream(
        js, n, on_event, start_seq=start_seq, end_seq=end_seq, progress=progress
    )
    return views, count


class Scratch:
    """The rebuild's working set on disk: table `views` (key → folded view, as written to the
    bucket) and table `current` (key → the bucket's entry: value, NULL for a delete marker,
    revision, and the `seq` of the view it holds). A private temporary file: no journal, no
    fsync; SQLite's page cache bounds what it keeps in memory."""

    def __init__(self, directory: str | None = None) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="audioprep-rebuild-", dir=directory)
        self.db = sqlite3.connect(Path(self._dir.name) / "rebuild.sqlite3", isolation_level=None)
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "cache_size=-16384"):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.execute("CREATE TABLE views (key TEXT PRIMARY KEY, data BLOB NOT NULL)")
        self.db.execute(
            "CREATE TABLE current (key TEXT PRIMARY KEY, value BLOB, revision INTEGER NOT NULL,"
            " seq INTEGER NOT NULL)"
        )
        self.db.execute("BEGIN")  # one transaction: nothing here needs to survive a crash

    def close(self) -> None:
        self.db.close()
        self._dir.cleanup()

    def put_views(self, views: Iterable[tuple[str, bytes]]) -> None:
        self.db.executemany("INSERT OR REPLACE INTO views VALUES (?, ?)", views)

    def get_view(self, key: str) -> bytes | None:
        row = self.db.execute("SELECT data FROM views WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def put_current(self, entry: KvEntry) -> None:
        value = None if entry.deleted else entry.value
        self.db.execute(
            "INSERT INTO current VALUES (?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET"
            " value = excluded.value, revision = excluded.revision, seq = excluded.seq"
            " WHERE excluded.revision > current.revision",
            (entry.key, value, entry.revision, _seq_of(value)),
        )

    def count(self, sql: str, *args: object) -> int:
        return int(self.db.execute(sql, args).fetchone()[0])

    def rows(self, sql: str, *args: object, size: int = BATCH_SIZE) -> Iterator[list[Row]]:
        """The rows of a query, `size` at a time, as (key, view, current entry)."""
        cursor = self.db.execute(sql, args)
        while chunk := cursor.fetchmany(size):
            yield [Row(k, d, None if r is None else Current(v, r)) for k, d, v, r in chunk]


@dataclass(frozen=True, slots=True)
class Row:
    key: str
    data: bytes | None  # the folded view, None: none (a key to delete or refold)
    current: Current | None  # the bucket's entry, None: no entry


class FoldCache:
    """Views being folded: the `size` most recently used in memory, the rest in the scratch
    table (see the module docstring)."""

    def __init__(self, scratch: Scratch, size: int, report: RebuildReport) -> None:
        self.scratch = scratch
        self.size = max(1, size)
        self.evict = max(1, self.size // 20)  # views pushed out at once (one executemany)
        self.report = report
        self.views: OrderedDict[str, JobView] = OrderedDict()

    def apply(self, event: Event, seq: int) -> None:
        key = event.job_id
        view = self.views.get(key)
        if view is not None:
            self.views.move_to_end(key)
        elif self.report.spilled and (data := self.scratch.get_view(key)) is not None:
            view = decode_view(data)
            self.report.read_back += 1
        new = fold(view, event, seq)
        if new is None:
            return  # a stray event of a job never requested
        self.views[key] = new
        if len(self.views) > self.size:
            self._spill(self.evict)
            self.report.spilled += self.evict

    def _spill(self, n: int) -> None:
        """The `n` least recently used views to the scratch table."""
        pop = self.views.popitem
        self.scratch.put_views((k, encode_view(v)) for k, v in (pop(last=False) for _ in range(n)))

    def flush(self) -> None:
        """Every view to the scratch table: it holds all of them now."""
        self._spill(len(self.views))


async def read_bucket(nc: Client, bucket: str) -> dict[str, Current]:
    """Every key's latest entry, delete markers included, all in memory (tests; the rebuild
    streams the entries into its scratch table with `kv_read.each_latest`): the shared KV reader
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


async def _pool(items: Iterable[T], work: Callable[[T], Awaitable[None]], size: int) -> None:
    """Run `await work(item)` for every item with at most `size` in flight."""
    it = iter(items)

    async def runner() -> None:
        for item in it:
            await work(item)

    await asyncio.gather(*(runner() for _ in range(size)))


class RebuildWriter:
    """CAS writes of rebuilt views; a conflict re-folds that job from its full history."""

    def __init__(self, kv: KeyValue, events: EventStore, report: RebuildReport) -> None:
        self.kv = kv
        self.events = events
        self.report = report

    async def write(self, key: str, view: JobView | bytes | None, current: Current | None) -> None:
        """One key: create, update or delete it unless it already holds `view` (a view or its
        encoding)."""
        for _ in range(CAS_RETRIES):
            try:
                if view is None:
                    if current is not None and current.value is not None:
                        await self.kv.delete(key, last=current.revision)
                        self.report.deleted += 1
                    return
                data = view if isinstance(view, bytes) else encode_view(view)
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
        self,
        keys: list[str],
        views: Mapping[str, JobView | bytes],
        current: Mapping[str, Current],
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
            view = views[key]
            data = view if isinstance(view, bytes) else encode_view(view)
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
    cache: int = CACHE,
    scratch_dir: str | None = None,
) -> RebuildReport:
    """Recreate the whole `jobs` bucket from the stream (see the module docstring)."""
    scratch = Scratch(scratch_dir)
    try:
        return await _rebuild(js, events, scratch, progress, check_only, writers, batch_size, cache)
    finally:
        scratch.close()


# The joins of the folded views with the bucket's entries (? is the snapshot S). A key
# whose entry holds a view newer than S (a live projector is ahead of us) is re-folded from
# its history instead of being set back to the snapshot.
CHANGED = """SELECT v.key, v.data, c.value, c.revision FROM views v LEFT JOIN current c
    ON c.key = v.key WHERE (c.key IS NULL OR c.seq <= ?)
    AND (c.value IS NULL OR c.value != v.data) ORDER BY v.key"""
UNCHANGED = """SELECT count(*) FROM views v JOIN current c ON c.key = v.key
    WHERE c.seq <= ? AND c.value = v.data"""
STALE = """SELECT c.key, NULL, c.value, c.revision FROM current c WHERE c.value IS NOT NULL
    AND c.seq <= ? AND NOT EXISTS (SELECT 1 FROM views v WHERE v.key = c.key)
    ORDER BY c.key"""
AHEAD = "SELECT key, NULL, value, revision FROM current WHERE seq > ? ORDER BY key"


async def _rebuild(
    js: JetStreamContext,
    events: EventStore,
    scratch: Scratch,
    progress: Progress | None,
    check_only: bool,
    writers: int,
    batch_size: int,
    cache: int,
) -> RebuildReport:
    started = time.monotonic()
    report = RebuildReport()
    info = await js.stream_info(events.names.stream)
    first, last = info.state.first_seq or 1, info.state.last_seq or 0
    report.last_seq = last
    folding = FoldCache(scratch, cache, report)
    report.events = await read_stream(
        js, events.names, folding.apply, start_seq=first, end_seq=last, progress=progress
    )
    folding.flush()
    report.jobs = scratch.count("SELECT count(*) FROM views")
    report.read_seconds = time.monotonic() - started
    kv = await js.key_value(events.names.jobs_bucket)
    await kv_read.each_latest(
        events.nc,
        events.names.jobs_bucket,
        scratch.put_current,
        stall_timeout=READ_TIMEOUT_S,
    )
    entries = scratch.count("SELECT count(*) FROM current")
    if progress is not None:
        progress("compare", entries, entries)
    report.unchanged = scratch.count(UNCHANGED, last)

    if check_only:
        for sql in (CHANGED, STALE):
            report.different += scratch.count(f"SELECT count(*) FROM ({sql})", last)
        keys = f"SELECT key FROM ({CHANGED}) UNION SELECT key FROM ({STALE}) ORDER BY key"
        keys += f" LIMIT {DIFFERENCES_KEPT}"
        report.differences = [r[0] for r in scratch.db.execute(keys, (last, last))]
        report.seconds = time.monotonic() - started
        return report

    writer = RebuildWriter(kv, events, report)
    atomic = bool(
        (await js.stream_info(names.kv_stream(events.names.jobs_bucket))).config.allow_atomic
    )
    changed = scratch.count(f"SELECT count(*) FROM ({CHANGED})", last)

    async def write_one(row: Row) -> None:
        await writer.write(row.key, row.data, row.current)

    async def refresh_one(row: Row) -> None:
        view, cur = await writer.refold(row.key)
        await writer.write(row.key, view, cur)

    done = 0
    for chunk in scratch.rows(CHANGED, last, size=batch_size):
        views = {r.key: r.data for r in chunk if r.data is not None}
        current = {r.key: r.current for r in chunk if r.current is not None}
        if not (atomic and await writer.write_batch(list(views), views, current)):
            await _pool(chunk, write_one, writers)
        done += len(chunk)
        if progress is not None:
            progress("write", done, changed)
    stale = scratch.count(f"SELECT count(*) FROM ({STALE})", last)
    for chunk in scratch.rows(STALE, last, size=10 * batch_size):
        await _pool(chunk, write_one, writers)  # data None: a delete
    for chunk in scratch.rows(AHEAD, last, size=10 * batch_size):
        await _pool(chunk, refresh_one, writers)
    if progress is not None:
        progress("delete", report.deleted, stale)

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
            "read_back": report.read_back,
            "last_seq": last,
            "seconds": round(report.seconds, 2),
        },
    )
    return report
