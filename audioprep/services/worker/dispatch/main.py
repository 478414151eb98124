"""`audioprep dispatcher`: a process that only takes part in dispatching (no media work), for
deployments that want the dispatcher apart from the workers. Workers run one anyway."""

from __future__ import annotations

import asyncio

from audioprep.services.worker.dispatch.dispatcher import Dispatcher
from audioprep.shared.bootstrap import service_deps, stop_on_signals
from audioprep.shared.settings import Settings


async def run_dispatcher(settings: Settings, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    async with service_deps(settings, "dispatcher") as deps:
        await Dispatcher(nc=deps.nc, js=deps.js, settings=settings).run(stop)


async def main(settings: Settings) -> None:
    stop = asyncio.Event()
    stop_on_signals(stop)
    await run_dispatcher(settings, stop)
