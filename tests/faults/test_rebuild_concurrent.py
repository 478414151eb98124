"""Rebuild while a projector runs and events keep arriving; a batch that races a live write is
rejected whole (atomic + compare-and-set) and nothing is set back."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError

from audioprep.domain.events import (
    ErrorInfo,
    Event,
    JobCompleted,
    JobFailed,
    JobProgressed,
    JobRequested,
    JobResult,
    JobStarted,
)
from audioprep.domain.fold import fold
from audioprep.domain.views import encode_view
from audioprep.services.projector.main import run_projector
from audioprep.services.projector.rebuild import (
    Current,
    RebuildReport,
    RebuildWriter,
    read_bucket,
    rebuild,
)
from audioprep.services.projector.runner import Projector
from audioprep.shared import names
from audioprep.shared.event_store import EventStore
from audioprep.shared.ids import new_job_id
from audioprep.shared.names import Names
from tests.faults.harness import connected, fault_settings, private_server

NAMES = Names()  # the default prefix: what `audioprep up` uses


def job_events(job_id: str, i: int) -> list[Event]:
    out: list[Event] = [
        JobRequested(job_id=job_id, kind="ingest", source="upload", upload_key=f"u/{job_id}"),
        JobStarted(job_id=job_id, kind="ingest", attempt=1, worker="synthetic:1"),
        JobProgressed(job_id=job_id, kind="ingest", progress=50, stage="analysing"),
    ]
    if i % 5 == 0:
        out.append(
            JobFailed(job_id=job_id, kind="ingest", error=ErrorInfo(code="x", message="boom"))
        )
    else:
        out.append(JobCompleted(job_id=job_id, kind="ingest", result=JobResult(duration_ms=i)))
    return out


async def publish_jobs(events: EventStore, n: int) -> None:
    async def one(i: int) -> None:
        for event in job_events(new_job_id(), i):
            await events.append(event)

    for start in range(0, n, 50):
        await asyncio.gather(*(one(i) for i in range(start, min(n, start + 50))))


async def caught_up(nc: Client, timeout: float = 30.0) -> None:
    js = nc.jetstream()
    state = await js.key_value(NAMES.projector_state_bucket)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last = (await js.stream_info(NAMES.stream)).state.last_seq or 0
        try:
            if int((await state.get(names.PROJECTOR_CHECKPOINT_KEY)).value or b"0") >= last:
                return
        except Exception:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("projector did not catch up")


async def test_rebuild_while_projector_runs(tmp_path: Path) -> None:
    with private_server(tmp_path / "nats") as server:
        settings = fault_settings(server.url, tmp_path / "data")
        async with connected(settings) as nc:
            js = nc.jetstream()
            events = EventStore(nc, js, NAMES)
            await publish_jobs(events, 200)
            stop = asyncio.Event()
            projector = asyncio.create_task(run_projector(settings, stop))
            try:
                more = asyncio.create_task(publish_jobs(events, 200))  # arrives meanwhile
                first = await rebuild(js, events)
                await more
                await caught_up(nc)
                second = await rebuild(js, events, check_only=True)
            finally:
                stop.set()
                await asyncio.wait_for(projector, timeout=30)
            print(
                f"[rebuild-concurrent] jobs={second.jobs} first_written={first.written} "
                f"refolded={first.refolded} differences={len(second.differences)}"
            )
            assert second.jobs == 400
            assert second.differences == []


async def test_batch_racing_a_live_write_is_rejected_whole(tmp_path: Path) -> None:
    with private_server(tmp_path / "nats") as server:
        settings = fault_settings(server.url, tmp_path / "data")
        async with connected(settings) as nc:
            js = nc.jetstream()
            events = EventStore(nc, js, NAMES)
            kv = await js.key_value(NAMES.jobs_bucket)
            views = {}
            for i in range(3):
                job_id = new_job_id()
                view = None
                for seq, event in enumerate(job_events(job_id, i + 1), start=1):
                    view = fold(view, event, seq)
                assert view is not None
                views[job_id] = view
            a, b, c = sorted(views)
            await kv.put(a, b'{"old": 1}')
            seen = await read_bucket(nc, NAMES.jobs_bucket)  # the rebuild reads ...
            await kv.put(a, b'{"live": 2}')  # ... a projector writes ...
            report = RebuildReport()
            writer = RebuildWriter(kv, events, report)
            assert await writer.write_batch([a, b, c], views, seen) is False  # ... rejected
            assert (await kv.get(a)).value == b'{"live": 2}'
            for key in (b, c):  # nothing of the batch was applied
                with pytest.raises(KeyNotFoundError):
                    await kv.get(key)
            now = await read_bucket(nc, NAMES.jobs_bucket)
            assert await writer.write_batch([b, c], views, now) is True
            assert report.written == 2
            assert (await kv.get(b)).value == encode_view(views[b])
            assert seen[a] == Current(b'{"old": 1}', seen[a].revision)


async def test_two_projectors_and_a_restart_agree_with_the_fold(tmp_path: Path) -> None:
    """Several projectors at once stay correct (CAS + seq guard); a restarted projector
    resumes from its checkpoint instead of folding everything again."""
    with private_server(tmp_path / "nats") as server:
        settings = fault_settings(server.url, tmp_path / "data")
        async with connected(settings) as nc:
            js = nc.jetstream()
            events = EventStore(nc, js, NAMES)
            stop = asyncio.Event()
            both = [asyncio.create_task(run_projector(settings, stop)) for _ in range(2)]
            try:
                await publish_jobs(events, 150)
                await caught_up(nc)
            finally:
                stop.set()
                await asyncio.wait_for(asyncio.gather(*both), timeout=30)
            checkpoint = await Projector(js, Names()).load_checkpoint()
            assert checkpoint == (await js.stream_info(NAMES.stream)).state.last_seq

            await publish_jobs(events, 50)  # while no projector runs
            stop = asyncio.Event()
            again = Projector(js, Names())
            task = asyncio.create_task(again.run(stop))
            try:
                await caught_up(nc)
            finally:
                stop.set()
                await asyncio.wait_for(task, timeout=30)
            report = await rebuild(js, events, check_only=True)
            print(f"[projectors] jobs={report.jobs} resumed_after={checkpoint}")
            assert report.jobs == 200 and report.differences == []
