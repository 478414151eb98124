"""Kill the JOBS stream leader of a 3-node cluster under load: the API keeps accepting after
the election and no acknowledged job is lost (stream replicas 3)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient

from audioprep.services.api.app import create_app
from audioprep.shared.event_store import EventStore
from audioprep.shared.names import Names
from audioprep.shared.nats_cluster import NatsCluster, wait_for_jetstream
from audioprep.shared.nats_conn import connect
from tests.faults.harness import (
    Submitter,
    Workers,
    by_job,
    fault_settings,
    provision_when_ready,
    read_stream,
    tally,
    wait_terminal,
)
from tests.media import write_tone

NAMES = Names()  # the default prefix: what `audioprep up` uses

pytestmark = pytest.mark.slow


async def test_kill_stream_leader_under_load(tmp_path: Path) -> None:
    cluster = NatsCluster(tmp_path / "cluster").start()
    workers: Workers | None = None
    try:
        await wait_for_jetstream(cluster.url)
        settings = fault_settings(cluster.url, tmp_path / "data", stream_replicas=3, ack_wait_s=3.0)
        await provision_when_ready(settings)
        tone = write_tone(tmp_path / "tone.wav", seconds=1.0)
        workers = Workers(settings, tmp_path)
        workers.start()
        nc = await connect(settings, "fault-test")
        try:
            js = nc.jetstream()
            info = await js.stream_info(NAMES.stream)
            assert info.config.num_replicas == 3
            async with AsyncTestClient(app=create_app(settings), timeout=30) as client:
                sub = Submitter(client, tone)
                await sub.burst(10)
                leader = (await js.stream_info(NAMES.stream)).cluster
                assert leader is not None and leader.leader
                # Kill the leader while requests are in flight.
                in_flight = asyncio.create_task(sub.burst(8))
                cluster.node(leader.leader).kill()
                await in_flight
                before = len(sub.accepted)
                deadline = time.monotonic() + 30
                while len(sub.accepted) < before + 10 and time.monotonic() < deadline:
                    accepted = len(sub.accepted)
                    await sub.burst(5)
                    if len(sub.accepted) == accepted:
                        await asyncio.sleep(0.2)  # a client backing off during the election
                assert len(sub.accepted) >= before + 10  # accepting again after the election
                new_leader = (await js.stream_info(NAMES.stream)).cluster
                assert new_leader is not None and new_leader.leader != leader.leader

                events = EventStore(nc, js, NAMES)
                unfinished = await wait_terminal(events, sub.accepted, timeout=90)
                counts = tally(sub.accepted, by_job(await read_stream(js)))
                print(
                    counts.line(
                        "cluster-leader-kill",
                        rejected=dict(Counter(sub.rejected)),
                        killed=leader.leader,
                        new_leader=new_leader.leader,
                    )
                )
                assert not unfinished, f"lost: {sorted(unfinished)}\n{workers.logs()}"
                assert counts.lost == counts.duplicates == 0
                assert counts.completed == len(sub.accepted), counts
        finally:
            await nc.close()
    finally:
        if workers is not None:
            workers.stop_all()
        cluster.stop()
