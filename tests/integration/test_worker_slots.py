"""A worker asks NATS for work only for a slot it has reserved, one pull request at a time:
two idle workers of one slot each, a preview and an ingest requested at once — each worker
starts one of them at once. (Before: one fetch loop per kind, each passing the free-slot
check, so the first worker received both, ran one and held the other in progress while the
second worker idled.) And the slot still goes to the preview when both wait."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from audioprep.domain.events import JobRequested, JobResult, JobStarted
from audioprep.services.worker.context import JobContext
from audioprep.services.worker.service import WorkerService
from audioprep.shared.event_store import EventStore
from audioprep.shared.ids import new_job_id
from audioprep.shared.names import Names
from audioprep.shared.storage import open_storage
from tests.faults.harness import connected, fault_settings, private_server, wait_terminal

NAMES = Names()  # the default prefix: what `audioprep up` uses
KINDS = ("preview", "ingest")


def _request(kind: str) -> JobRequested:
    if kind == "ingest":
        return JobRequested(job_id=new_job_id(), kind="ingest", source="url", url="http://x.test/a")
    return JobRequested(job_id=new_job_id(), kind="preview", source_key="sources/x", recipe={})


async def test_two_one_slot_workers_each_start_one_of_two_kinds_at_once(tmp_path: Path) -> None:
    with private_server(tmp_path / "nats") as server:
        settings = fault_settings(
            server.url, tmp_path / "data", worker_concurrency=1, dispatch="fifo", ack_wait_s=30.0
        )
        async with connected(settings) as nc:
            js = nc.jetstream()
            events = EventStore(nc, js, NAMES)
            release = asyncio.Event()
            running: dict[str, str] = {}  # job id → the worker running it
            both = asyncio.Event()

            def handler(worker: str) -> Callable[[JobContext], Awaitable[JobResult]]:
                async def run(ctx: JobContext) -> JobResult:
                    running[ctx.job_id] = worker
                    if len(running) == 2:
                        both.set()
                    await release.wait()
                    return JobResult(title=worker)

                return run

            def service(worker: str) -> WorkerService:
                return WorkerService(
                    nc=nc,
                    js=js,
                    settings=settings,
                    storage=open_storage(settings.storage),
                    handlers={kind: handler(worker) for kind in KINDS},
                    kinds=KINDS,
                    dispatcher=False,
                )

            stop = asyncio.Event()
            first = asyncio.create_task(service("first").run(stop))
            await asyncio.sleep(0.5)  # the first one asks for work before the second
            second = asyncio.create_task(service("second").run(stop))
            await asyncio.sleep(0.5)
            requests = [_request(kind) for kind in KINDS]
            try:
                await asyncio.gather(*(events.request_job(r) for r in requests))
                # Both start while neither has finished: nothing waits in a busy worker. (A
                # worker holding the second job would start it only after `release`.)
                await asyncio.wait_for(both.wait(), timeout=10)
                assert sorted(running.values()) == ["first", "second"], running
                release.set()
                ids = [r.job_id for r in requests]
                assert await wait_terminal(events, ids, timeout=20) == set()
            finally:
                release.set()
                stop.set()
                await asyncio.wait_for(asyncio.gather(first, second), timeout=15)
            for request in requests:  # each delivered once: none handed back and forth
                history = [s.event for s in await events.history(request.job_id)]
                starts = [e.attempt for e in history if isinstance(e, JobStarted)]
                assert starts == [1], (request.kind, starts)


async def test_a_free_slot_goes_to_the_preview_before_the_ingest(tmp_path: Path) -> None:
    with private_server(tmp_path / "nats") as server:
        settings = fault_settings(
            server.url, tmp_path / "data", worker_concurrency=1, dispatch="fifo", ack_wait_s=30.0
        )
        async with connected(settings) as nc:
            js = nc.jetstream()
            events = EventStore(nc, js, NAMES)
            order: list[str] = []

            async def run(ctx: JobContext) -> JobResult:
                order.append(ctx.request.kind)
                return JobResult(title="ok")

            # Work of both kinds waits before the worker starts; the ingest came first.
            requests = [_request("ingest"), _request("ingest"), _request("preview")]
            for request in requests:
                await events.request_job(request)
            stop = asyncio.Event()
            worker = WorkerService(
                nc=nc,
                js=js,
                settings=settings,
                storage=open_storage(settings.storage),
                handlers=dict.fromkeys(KINDS, run),
                kinds=KINDS,
                dispatcher=False,
            )
            task = asyncio.create_task(worker.run(stop))
            try:
                ids = [r.job_id for r in requests]
                assert await wait_terminal(events, ids, timeout=20) == set()
            finally:
                stop.set()
                await asyncio.wait_for(task, timeout=15)
            assert order == ["preview", "ingest", "ingest"]
