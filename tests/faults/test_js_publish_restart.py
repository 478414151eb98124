"""The hot path's JetStream publish across a nats-server restart: its one ack subscription
comes back with the connection, so requests after the restart are acknowledged again (and one
sent while the server is down is held in nats-py's buffer or answered with a timeout, never
left waiting)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import nats.errors

from audioprep.domain.events import JobRequested
from audioprep.shared.event_store import EventStore
from audioprep.shared.ids import new_job_id
from audioprep.shared.names import Names
from audioprep.shared.nats_server import NatsServer
from tests.faults.harness import connected, fault_settings

NAMES = Names()


async def test_requests_are_acknowledged_after_a_restart(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats", log_file=tmp_path / "nats.log").start()
    try:
        async with connected(fault_settings(server.url, tmp_path / "data")) as nc:
            store = EventStore(nc, nc.jetstream(), NAMES, timeout=1.0)
            first = new_job_id()
            assert await store.request_job(JobRequested(job_id=first, kind="save")) > 0

            port = server.port
            server.stop()
            # down: the publish waits in nats-py's buffer, then times out or lands on reconnect
            down = asyncio.ensure_future(
                store.request_job(JobRequested(job_id=new_job_id(), kind="save"))
            )
            server = NatsServer(tmp_path / "nats", port=port, log_file=tmp_path / "nats.log")
            server.start()
            with contextlib.suppress(nats.errors.Error):
                await down
            assert store._acks._waiting == {}

            seq = 0
            for _ in range(50):  # reconnect, then JetStream recovers its streams
                try:
                    seq = await store.request_job(JobRequested(job_id=new_job_id(), kind="save"))
                    break
                except nats.errors.Error:
                    await asyncio.sleep(0.2)
            assert seq > 1
            history = await store.history(first)
            assert [e.event.job_id for e in history] == [first]
    finally:
        server.stop()
