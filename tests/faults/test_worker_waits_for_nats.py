"""A worker started while nats-server is not up yet (a restart, a slow cluster start) waits
for it instead of exiting, then works."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from audioprep.shared.event_store import EventStore
from audioprep.shared.names import Names
from audioprep.shared.nats_server import NatsServer, free_port
from tests.faults.harness import (
    Workers,
    connected,
    fault_settings,
    make_sources,
    save_request,
    wait_terminal,
)

NAMES = Names()  # the default prefix: what `audioprep up` uses

pytestmark = pytest.mark.slow


async def test_a_worker_started_before_nats_waits_for_it(tmp_path: Path) -> None:
    port = free_port()
    server = NatsServer(tmp_path / "nats", port=port, log_file=tmp_path / "nats.log")
    settings = fault_settings(server.url, tmp_path / "data")
    workers = Workers(settings, tmp_path)
    worker = workers.start()  # nothing listens on the port yet
    try:
        deadline = time.monotonic() + 60
        while "waiting for nats" not in workers.logs():
            assert worker.poll() is None, workers.logs()  # it must not give up and exit
            assert time.monotonic() < deadline, workers.logs()
            await asyncio.sleep(0.05)
        server.start()
        async with connected(settings) as nc:
            events = EventStore(nc, nc.jetstream(), NAMES)
            media = tmp_path / "media"
            media.mkdir()
            sources = await make_sources(settings, media)
            request = save_request(sources)
            await events.request_job(request)
            unfinished = await wait_terminal(events, [request.job_id], timeout=60)
            assert not unfinished, workers.logs()
            assert worker.poll() is None, workers.logs()  # it waited, it did not exit
    finally:
        workers.stop_all()
        server.stop()
