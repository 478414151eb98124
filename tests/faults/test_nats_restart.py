"""Restart nats-server (SIGKILL, then SIGTERM) while jobs are submitted and processed.

API (in-process Litestar app), projector (in-process task) and a worker process stay up the
whole time; nobody is restarted by hand. Every POST answered 202 must end as a terminal job,
the projector must resume from where it was, and its view must equal the stream's fold.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError

from audioprep.services.api.app import create_app
from audioprep.services.projector.main import run_projector
from audioprep.services.projector.rebuild import rebuild
from audioprep.shared.event_store import EventStore
from audioprep.shared.names import Names
from audioprep.shared.nats_server import NatsServer, free_port
from tests.faults.harness import (
    Submitter,
    Workers,
    by_job,
    connected,
    fault_settings,
    read_stream,
    tally,
    wait_terminal,
)
from tests.jobs_helpers import wait_for_job
from tests.media import write_tone

NAMES = Names()  # the default prefix: what `audioprep up` uses

pytestmark = pytest.mark.slow


async def view_in_kv(nc: Client, job_id: str, timeout: float = 30.0) -> None:
    kv = await nc.jetstream().key_value(NAMES.jobs_bucket)
    deadline = time.monotonic() + timeout
    while True:
        try:
            await kv.get(job_id)
            return
        except KeyNotFoundError:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.05)


async def test_nats_restart_loses_no_acknowledged_job(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats", port=free_port(), log_file=tmp_path / "nats.log")
    server.start()
    settings = fault_settings(server.url, tmp_path / "data", ack_wait_s=3.0)
    tone = write_tone(tmp_path / "tone.wav", seconds=1.0)
    workers = Workers(settings, tmp_path)
    stop = asyncio.Event()
    try:
        async with connected(settings) as nc:
            events = EventStore(nc, nc.jetstream(), NAMES)
            workers.start()
            projector = asyncio.create_task(run_projector(settings, stop))
            async with AsyncTestClient(app=create_app(settings), timeout=30) as client:
                sub = Submitter(client, tone)
                await sub.burst(8)
                await view_in_kv(nc, sub.accepted[0])  # the projector is up and projecting

                # 1. SIGKILL the server with requests in flight; bring it back on the same
                #    port and store.
                in_flight = asyncio.create_task(sub.burst(6))
                server.kill()
                server.start()
                await in_flight
                await sub.burst(8)

                # 2. A graceful stop/start while jobs are running.
                server.stop()
                in_flight = asyncio.create_task(sub.burst(6))
                server.start()
                await in_flight
                after_restarts = len(sub.accepted)
                await sub.burst(8)
                assert len(sub.accepted) > after_restarts  # the API carried on by itself

                unfinished = await wait_terminal(events, sub.accepted, timeout=90)
                history = by_job(await read_stream(nc.jetstream()))
                counts = tally(sub.accepted, history)
                print(counts.line("nats-restart", rejected=len(sub.rejected), restarts=2))
                assert not unfinished, f"lost: {sorted(unfinished)}\n{workers.logs()}"
                assert counts.lost == counts.duplicates == 0
                assert counts.completed == len(sub.accepted), counts

                # The projector resumed by itself: every view is terminal, and the whole
                # bucket equals the stream's fold.
                for job_id in sub.accepted:
                    view = await wait_for_job(client, job_id, timeout=30)
                    assert view["status"] == "completed", view
                deadline = time.monotonic() + 30
                while True:
                    report = await rebuild(nc.jetstream(), events, check_only=True)
                    if not report.differences or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.2)
                assert report.differences == []
            stop.set()
            await asyncio.wait_for(projector, timeout=30)
    finally:
        stop.set()
        workers.stop_all()
        server.stop()
