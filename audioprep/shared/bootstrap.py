"""The one place that builds a service's dependencies: NATS connection and storage."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass

from nats.aio.client import Client
from nats.js import JetStreamContext

from audioprep.shared.nats_conn import connect_waiting
from audioprep.shared.settings import Settings
from audioprep.shared.storage import Storage, open_storage


@dataclass(frozen=True)
class Deps:
    settings: Settings
    nc: Client
    js: JetStreamContext
    storage: Storage


@contextlib.asynccontextmanager
async def service_deps(settings: Settings, name: str) -> AsyncIterator[Deps]:
    """Connect to NATS (waiting for it at start) and open storage; close them on exit."""
    nc = await connect_waiting(settings, name)
    try:
        yield Deps(
            settings=settings, nc=nc, js=nc.jetstream(), storage=open_storage(settings.storage)
        )
    finally:
        # Services drain their own work before this (jobs finished or handed back, checkpoint
        # saved), and JetStream publishes are awaited, so flush + close is enough; nc.drain()
        # waits out pending pull requests (seconds) for nothing.
        with contextlib.suppress(Exception):
            await nc.flush(timeout=2)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), timeout=5)


def stop_on_signals(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set `stop` so services drain instead of dying mid-job."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
