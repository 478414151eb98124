"""A worker whose durable consumer vanished (a server that lost its state) puts it back and
carries on; requests already finished are acked without running again."""

from __future__ import annotations

import asyncio
from pathlib import Path

from audioprep.domain.events import JobRequested, JobResult, JobStarted
from audioprep.services.worker.context import JobContext
from audioprep.services.worker.service import WorkerService
from audioprep.shared import names
from audioprep.shared.event_store import EventStore
from audioprep.shared.ids import new_job_id
from audioprep.shared.names import Names
from audioprep.shared.storage import open_storage
from tests.faults.harness import connected, fault_settings, private_server, wait_terminal

NAMES = Names()  # the default prefix: what `audioprep up` uses


async def test_worker_recreates_a_deleted_consumer(tmp_path: Path) -> None:
    with private_server(tmp_path / "nats") as server:
        settings = fault_settings(server.url, tmp_path / "data")
        async with connected(settings) as nc:
            js = nc.jetstream()
            events = EventStore(nc, js, NAMES)
            runs: list[str] = []

            async def handler(ctx: JobContext) -> JobResult:
                runs.append(ctx.job_id)
                return JobResult(title="ok")

            service = WorkerService(
                nc=nc,
                js=js,
                settings=settings,
                storage=open_storage(settings.storage),
                handlers={"ingest": handler},
                kinds=("ingest",),
            )
            stop = asyncio.Event()
            task = asyncio.create_task(service.run(stop))
            try:
                first = JobRequested(job_id=new_job_id(), kind="ingest", source="upload")
                await events.request_job(first)
                assert await wait_terminal(events, [first.job_id], timeout=20) == set()

                await js.delete_consumer(NAMES.stream, names.worker_consumer("ingest"))
                second = JobRequested(job_id=new_job_id(), kind="ingest", source="upload")
                await events.request_job(second)
                assert await wait_terminal(events, [second.job_id], timeout=30) == set()
            finally:
                stop.set()
                await asyncio.wait_for(task, timeout=15)
            info = await js.consumer_info(NAMES.stream, names.worker_consumer("ingest"))
            assert info.config.max_deliver == settings.max_deliver
            # The recreated consumer offered the first request again: acked, not re-run.
            assert runs == [first.job_id, second.job_id]
            starts = [
                s for s in await events.history(first.job_id) if isinstance(s.event, JobStarted)
            ]
            assert len(starts) == 1
