"""The live projector writes a batch's views as atomic batches (one fsync), each message CAS on
its key's revision; a batch that a concurrent writer races is refused whole and its jobs are
written one by one. Either way every view equals the fold of its job's events."""

from __future__ import annotations

from pathlib import Path

from audioprep.domain.events import (
    Event,
    JobCompleted,
    JobProgressed,
    JobRequested,
    JobResult,
    JobStarted,
)
from audioprep.domain.fold import fold_history
from audioprep.domain.views import decode_view, encode_view
from audioprep.services.projector.runner import ViewWriter
from audioprep.shared.event_store import EventStore
from audioprep.shared.ids import new_job_id
from audioprep.shared.names import Names
from tests.faults.harness import connected, fault_settings, private_server

NAMES = Names()


def _job(job_id: str, i: int) -> list[Event]:
    return [
        JobRequested(job_id=job_id, kind="ingest", source="upload", upload_key=f"u/{job_id}"),
        JobStarted(job_id=job_id, kind="ingest", attempt=1, worker="test:1"),
        JobProgressed(job_id=job_id, kind="ingest", progress=50, stage="analysing"),
        JobCompleted(job_id=job_id, kind="ingest", result=JobResult(duration_ms=i)),
    ]


async def test_atomic_batches_and_the_fallback_agree_with_the_fold(tmp_path: Path) -> None:
    with private_server(tmp_path / "nats") as server:
        settings = fault_settings(server.url, tmp_path / "data")
        async with connected(settings) as nc:
            js = nc.jetstream()
            events = EventStore(nc, js, NAMES)
            kv = await js.key_value(NAMES.jobs_bucket)
            jobs = [new_job_id() for _ in range(30)]
            stored: list[tuple[int, Event]] = []
            for i, job_id in enumerate(jobs):
                for event in _job(job_id, i)[:2]:
                    stored.append((await events.append(event), event))
            writer = ViewWriter(kv, js, bucket=NAMES.jobs_bucket, atomic_via=nc)

            # 1. new jobs: one atomic batch; the cached revisions are the bucket's
            await writer.apply_batch(stored)
            assert (writer.atomic_batches, writer.fallbacks) == (1, 0)
            for job_id, (view, revision) in writer.cache.items():
                entry = await kv.get(job_id)
                assert entry.revision == revision
                assert entry.value == encode_view(view)

            # 2. someone else moves one key: the next atomic batch is refused whole, every job
            # of it is written one by one (the raced one re-read first)
            raced = next(iter(jobs))
            await kv.put(raced, (await kv.get(raced)).value or b"")
            more: list[tuple[int, Event]] = []
            for i, job_id in enumerate(jobs):
                for event in _job(job_id, i)[2:]:
                    more.append((await events.append(event), event))
            await writer.apply_batch(more)
            assert (writer.atomic_batches, writer.fallbacks) == (1, 1)

            # 3. a third batch (new jobs) is atomic again; a batch of one job is written alone
            fresh = [new_job_id() for _ in range(10)]
            again = [(await events.append(e), e) for j in fresh for e in _job(j, 99)]
            await writer.apply_batch(again)
            assert writer.atomic_batches == 2
            single = new_job_id()
            await writer.apply_batch([(await events.append(e), e) for e in _job(single, 7)])
            assert writer.atomic_batches == 2

            for job_id in [*jobs, *fresh, single]:
                expected = fold_history(await events.history(job_id))
                entry = await kv.get(job_id)
                assert expected is not None and entry.value is not None
                assert decode_view(entry.value) == expected
                assert expected.status == "completed"


async def test_a_view_is_written_over_a_delete_marker_and_read_from_the_leader(
    tmp_path: Path,
) -> None:
    """A key holding a delete marker (a rebuild removed a stray view) takes a new job's view:
    the create-only write is refused, the leader's read gives the marker's revision, the CAS on
    it lands. A job with no view (only strays of it in a batch) is not written at all."""
    with private_server(tmp_path / "nats") as server:
        settings = fault_settings(server.url, tmp_path / "data")
        async with connected(settings) as nc:
            js = nc.jetstream()
            events = EventStore(nc, js, NAMES)
            kv = await js.key_value(NAMES.jobs_bucket)
            job_id, stray = new_job_id(), new_job_id()
            await kv.put(job_id, b"{}")
            await kv.delete(job_id)
            writer = ViewWriter(kv, js, bucket=NAMES.jobs_bucket)
            items = [(await events.append(e), e) for e in _job(job_id, 3)]
            await writer.apply_job(job_id, items)
            entry = await kv.get(job_id)
            assert entry.value is not None
            assert decode_view(entry.value) == fold_history(await events.history(job_id))
            assert writer.current_reads == 1

            started = JobStarted(job_id=stray, kind="ingest", attempt=1, worker="test:1")
            assert await writer.apply_job(stray, [(await events.append(started), started)]) is None
            assert writer.current_reads == 2  # "not found" by direct get is asked again
            assert stray not in await kv.keys()
