"""SIGTERM drains a worker: it stops fetching, finishes in-flight jobs (or hands them back
at once when the grace period runs out) and exits 0."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from nats.aio.msg import Msg

from audioprep.domain.events import (
    JobCompleted,
    JobProgressed,
    JobRequested,
    JobResult,
    JobRetrying,
    JobStarted,
    decode_event,
)
from audioprep.services.worker.context import JobContext
from audioprep.services.worker.service import WorkerService
from audioprep.shared import keys
from audioprep.shared.event_store import EventStore
from audioprep.shared.ids import new_job_id
from audioprep.shared.names import Names
from audioprep.shared.storage import open_storage
from tests.faults.harness import (
    Workers,
    by_job,
    connected,
    fault_settings,
    make_sources,
    private_server,
    read_stream,
    save_request,
    tally,
    wait_terminal,
)
from tests.media import write_tone

NAMES = Names()  # the default prefix: what `audioprep up` uses

pytestmark = pytest.mark.slow


async def test_sigterm_finishes_in_flight_and_exits_zero(tmp_path: Path) -> None:
    with private_server(tmp_path / "nats") as server:
        settings = fault_settings(server.url, tmp_path / "data", worker_concurrency=2)
        async with connected(settings) as nc:
            events = EventStore(nc, nc.jetstream(), NAMES)
            media = tmp_path / "media"
            media.mkdir()
            sources = await make_sources(settings, media, seconds=10.0)
            requests = [save_request(sources, "flac") for _ in range(6)]
            started: asyncio.Queue[JobStarted] = asyncio.Queue()

            async def on_started(msg: Msg) -> None:
                event = decode_event(msg.data)
                if isinstance(event, JobStarted):
                    await started.put(event)

            await nc.subscribe("jobs.save.*.started", cb=on_started)
            for request in requests:
                await events.request_job(request)
            ids = [r.job_id for r in requests]
            workers = Workers(settings, tmp_path)
            first = workers.start()
            try:
                in_flight = await asyncio.wait_for(started.get(), timeout=30)
                os.kill(first.pid, signal.SIGTERM)  # what `docker stop` / systemd send
                code = await asyncio.to_thread(first.wait, 40)
                assert code == 0, workers.logs()
                # The job it was running when told to stop was finished, not abandoned.
                assert await events.terminal_event(in_flight.job_id) is not None
                left = await wait_terminal(events, ids, timeout=0.5)
                assert left, "the stopping worker kept fetching new jobs"

                workers.start()  # the rest is picked up by the next worker
                unfinished = await wait_terminal(events, ids, timeout=90)
            finally:
                workers.stop_all()
            counts = tally(ids, by_job(await read_stream(nc.jetstream())))
            print(counts.line("sigterm-drain", left_for_next_worker=len(left)))
            assert not unfinished
            assert counts.completed == len(ids) and counts.duplicates == counts.lost == 0


async def test_drain_hands_back_what_does_not_finish_in_grace(tmp_path: Path) -> None:
    """Past the grace period the job is nak'ed: the next worker gets it long before ack_wait."""
    with private_server(tmp_path / "nats") as server:
        settings = fault_settings(server.url, tmp_path / "data", ack_wait_s=60.0)
        async with connected(settings) as nc:
            js = nc.jetstream()
            events = EventStore(nc, js, NAMES)
            storage = open_storage(settings.storage)
            began = asyncio.Event()

            async def stuck(ctx: JobContext) -> JobResult:
                began.set()
                await asyncio.Event().wait()  # never finishes on its own
                raise AssertionError("unreachable")

            async def quick(ctx: JobContext) -> JobResult:
                return JobResult(title="done by the second worker")

            def service(handler: object) -> WorkerService:
                return WorkerService(
                    nc=nc,
                    js=js,
                    settings=settings,
                    storage=storage,
                    handlers={"ingest": handler},  # type: ignore[dict-item]
                    kinds=("ingest",),
                    drain_grace_s=0.3,
                )

            job_id = new_job_id()
            await events.request_job(
                JobRequested(job_id=job_id, kind="ingest", source="url", url="http://x.test/a")
            )
            stop = asyncio.Event()
            slow = asyncio.create_task(service(stuck).run(stop))
            await asyncio.wait_for(began.wait(), timeout=15)
            stop.set()
            await asyncio.wait_for(slow, timeout=15)

            stop2 = asyncio.Event()
            fast = asyncio.create_task(service(quick).run(stop2))
            try:
                # ack_wait is 60 s: finishing within 20 s proves the message was handed back.
                assert await wait_terminal(events, [job_id], timeout=20) == set()
            finally:
                stop2.set()
                await asyncio.wait_for(fast, timeout=15)
            history = [s.event for s in await events.history(job_id)]
            attempts = [e.attempt for e in history if isinstance(e, JobStarted)]
            assert attempts == [1, 2]
            assert type(history[-1]).__name__ == "JobCompleted"


async def test_ctrl_c_on_a_worker_finishes_its_media_call_instead_of_crashing_it(
    tmp_path: Path,
) -> None:
    """A terminal's Ctrl-C reaches the worker's whole process group, media children included:
    the worker drains, and its media child keeps rendering instead of dying of
    KeyboardInterrupt (which was a `worker_crash` retry)."""
    with private_server(tmp_path / "nats") as server:
        settings = fault_settings(server.url, tmp_path / "data", worker_concurrency=1)
        async with connected(settings) as nc:
            events = EventStore(nc, nc.jetstream(), NAMES)
            media = tmp_path / "media"
            media.mkdir()
            # 20 minutes of mono audio to mp3: a render of seconds, so the signal meets it.
            long = write_tone(media / "long.wav", seconds=1200.0, channels=1, rate=22050)
            source_key = keys.source_key("default", new_job_id(), "long.wav")
            await open_storage(settings.storage).put_file(source_key, long)
            request = JobRequested(
                job_id=new_job_id(),
                kind="save",
                source_key=source_key,
                recipe={"gainDb": -3.0},
                format="mp3",
            )
            rendering: asyncio.Queue[JobProgressed] = asyncio.Queue()

            async def on_progress(msg: Msg) -> None:
                event = decode_event(msg.data)
                if isinstance(event, JobProgressed) and event.progress > 1:
                    await rendering.put(event)  # reported by the media child

            await nc.subscribe(f"jobs.save.{request.job_id}.progressed", cb=on_progress)
            await events.request_job(request)
            workers = Workers(settings, tmp_path)
            worker = workers.start()
            try:
                await asyncio.wait_for(rendering.get(), timeout=60)
                os.killpg(worker.pid, signal.SIGINT)  # Ctrl-C: the whole process group
                code = await asyncio.to_thread(worker.wait, 60)
            finally:
                workers.stop_all()
            assert code == 0, workers.logs()
            history = [s.event for s in await events.history(request.job_id)]
            assert not [e for e in history if isinstance(e, JobRetrying)], workers.logs()
            assert isinstance(history[-1], JobCompleted), workers.logs()  # within the grace
