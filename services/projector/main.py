"""Projector process entrypoint."""

from __future__ import annotations

import asyncio

from services.projector.runner import Projector
from shared.bootstrap import service_deps, stop_on_signals
from shared.settings import Settings


async def run_projector(settings: Settings, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    async with service_deps(settings, "projector") as deps:
        await Projector(deps.js).run(stop)


async def main(settings: Settings) -> None:
    stop = asyncio.Event()
    stop_on_signals(stop)
    await run_projector(settings, stop)
