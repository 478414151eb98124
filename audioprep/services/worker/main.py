"""Worker process entrypoint: wire handlers to the consumer loop and run until SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from audioprep.services.worker.dead_letters import DeadLetterFailer, DeadLetterReconciler
from audioprep.services.worker.handlers.ingest import cleanup_ingest, run_ingest
from audioprep.services.worker.handlers.render import cleanup_render, run_render
from audioprep.services.worker.job_runner import Cleanup, Handler
from audioprep.services.worker.service import WorkerService
from audioprep.shared import metrics
from audioprep.shared.bootstrap import Deps, service_deps
from audioprep.shared.event_store import EventStore
from audioprep.shared.settings import Settings

log = logging.getLogger("audioprep.worker")

HANDLERS: dict[str, Handler] = {"ingest": run_ingest, "preview": run_render, "save": run_render}
CLEANUPS: dict[str, Cleanup] = {
    "ingest": cleanup_ingest,
    "preview": cleanup_render,
    "save": cleanup_render,
}


def build_worker(deps: Deps) -> WorkerService:
    return WorkerService(
        nc=deps.nc,
        js=deps.js,
        settings=deps.settings,
        storage=deps.storage,
        handlers=HANDLERS,
        cleanups=CLEANUPS,
        drain_grace_s=deps.settings.drain_grace_s,
    )


async def run_worker(
    settings: Settings, stop: asyncio.Event | None = None, hurry: asyncio.Event | None = None
) -> None:
    stop = stop or asyncio.Event()
    async with service_deps(settings, "worker") as deps:
        sampler = metrics.worker_sampler(deps.js, settings.names)
        async with metrics.serving(settings.api_host, settings.metrics_port, sampler):
            # Every worker process also turns MAX_DELIVERIES advisories into JobFailed, and
            # finds the dead letters whose advisory was missed.
            events = EventStore(deps.nc, deps.js, settings.names)
            failer = DeadLetterFailer(events=events, js=deps.js, settings=settings)
            reconciler = DeadLetterReconciler(events=events, js=deps.js, settings=settings)
            await asyncio.gather(
                build_worker(deps).run(stop, hurry), failer.run(stop), reconciler.run(stop)
            )


def stop_then_hurry(stop: asyncio.Event, hurry: asyncio.Event) -> None:
    """SIGTERM/SIGINT: the first drains (in-flight jobs get AUDIOPREP_DRAIN_GRACE_S), a second
    one hands the running jobs back at once."""
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            if not hurry.is_set():
                log.info("stop signal again: handing back running jobs now")
            hurry.set()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal)


async def main(settings: Settings) -> None:
    stop, hurry = asyncio.Event(), asyncio.Event()
    stop_then_hurry(stop, hurry)
    await run_worker(settings, stop, hurry)
