"""Projector process entrypoint."""

from __future__ import annotations

import asyncio

from audioprep.services.projector.runner import Projector
from audioprep.shared import metrics
from audioprep.shared.bootstrap import service_deps, stop_on_signals
from audioprep.shared.settings import Settings


async def run_projector(settings: Settings, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    async with service_deps(settings, "projector") as deps:
        projector = Projector(deps.js, settings.names, nc=deps.nc)
        sampler = metrics.projector_sampler(deps.js, settings.names, lambda: projector.applied_seq)
        async with metrics.serving(settings.api_host, settings.metrics_port, sampler):
            await projector.run(stop)


async def main(settings: Settings) -> None:
    stop = asyncio.Event()
    stop_on_signals(stop)
    await run_projector(settings, stop)
