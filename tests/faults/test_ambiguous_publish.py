"""Issue 20 scenario 4: ambiguous publishes. Uploads with Idempotency-Keys go to a 3-node
cluster while the JOBS stream leader freezes mid-wave past the API's publish timeout (the API
can't know whether those publishes landed) and is then SIGKILLed; another wave arrives during
the election. Every client retries its own key until it gets a 202, as the API tells it to
(503 + Retry-After). Each key ends as exactly one job, also when replayed after the stream's
duplicate window; no answer is a 500."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from audioprep.domain.events import JobRequested
from audioprep.services.api.jobs import request_fingerprint
from audioprep.services.api.routes.ingest import ROUTE as INGEST_ROUTE
from audioprep.shared import keys as keys_
from audioprep.shared.event_store import EventStore
from audioprep.shared.ids import idempotent_job_id
from audioprep.shared.nats_cluster import NatsCluster, wait_for_jetstream
from audioprep.shared.nats_conn import connect
from audioprep.shared.nats_server import NatsServer
from audioprep.shared.storage import Storage, open_storage
from tests.faults.harness import (
    NAMES,
    ApiProcess,
    KeyedClient,
    Workers,
    audit,
    by_job,
    fault_settings,
    provision_when_ready,
    read_stream,
    retrying,
    wait_terminal,
)
from tests.media import write_tone

pytestmark = pytest.mark.slow

KEYS_PER_WAVE = 8
LANDED = ["landed-0", "landed-1"]
FROZEN_S = 5.5  # past the API's 5 s publish timeout


async def _land(events: EventStore, storage: Storage, key: str, tone: bytes) -> None:
    """What the API does for an upload with this key, up to a publish that lands."""
    job_id = idempotent_job_id("default", key)
    filename = f"{key}.wav"
    upload = keys_.upload_key("default", job_id, filename)
    await storage.put_bytes(upload, tone)
    content = f"upload\n{filename}\n{hashlib.sha256(tone).hexdigest()}".encode()
    request = JobRequested(
        job_id=job_id,
        kind="ingest",
        source="upload",
        upload_key=upload,
        filename=filename,
        request_fingerprint=request_fingerprint(INGEST_ROUTE, content),
    )
    await retrying(lambda: events.request_job(request))


def _pid(node: NatsServer) -> int:
    assert node.proc is not None
    return node.proc.pid


async def _leader(js: Any) -> str:
    cluster = (await js.stream_info(NAMES.stream)).cluster
    assert cluster is not None and cluster.leader
    return str(cluster.leader)


def _publishes_in_doubt(log: Path) -> int:
    """Publishes the API answered 503 because they timed out (landed or not, it can't know)."""
    lines = log.read_text(errors="replace").splitlines()
    return sum(1 for line in lines if "backend unavailable" in line and "imeout" in line)


async def test_leader_killed_during_posts_gives_one_job_per_key(tmp_path: Path) -> None:
    cluster = NatsCluster(tmp_path / "cluster").start()
    workers: Workers | None = None
    api: ApiProcess | None = None
    try:
        await wait_for_jetstream(cluster.url)
        settings = fault_settings(cluster.url, tmp_path / "data", stream_replicas=3)
        await provision_when_ready(settings)
        tone = write_tone(tmp_path / "tone.wav", seconds=0.5).read_bytes()
        workers = Workers(settings, tmp_path)
        workers.start()
        nc = await connect(settings, "fault-test")
        try:
            js = nc.jetstream()
            api = ApiProcess(settings, tmp_path).start()
            await api.ready()
            async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
                kc = KeyedClient(client, tone)
                keys = [f"amb-{i}" for i in range(3 * KEYS_PER_WAVE)]
                waves = [keys[i : i + KEYS_PER_WAVE] for i in range(0, len(keys), KEYS_PER_WAVE)]
                await asyncio.gather(*(kc.post(k) for k in waves[0]))
                leader = await retrying(lambda: _leader(js))
                # The stream leader freezes (a GC pause, a stalled disk) while a wave arrives,
                # past the API's 5 s publish timeout: the API can't know whether those
                # publishes landed. Then it is SIGKILLed; another wave comes during the election.
                os.kill(_pid(cluster.node(leader)), signal.SIGSTOP)
                in_flight = asyncio.gather(*(kc.post(k) for k in waves[1]))
                await asyncio.sleep(FROZEN_S)
                cluster.node(leader).kill()
                await asyncio.gather(in_flight, *(kc.post(k) for k in waves[2]))
                refused_during_faults = kc.statuses[503]
                in_doubt = _publishes_in_doubt(api.log)
                # A publish that landed although its answer was lost (the frozen leader above
                # never commits one, so this is made by hand): the API stored the upload and
                # published the request, the client got a 503 and retries.
                events = EventStore(nc, js, NAMES)
                storage = open_storage(settings.storage)
                for key in LANDED:
                    await _land(events, storage, key, tone)
                    await kc.post(key)
                keys += LANDED
                # Every key again (a client that never saw its 202), inside the duplicate
                # window and, after shrinking it to 1 s, outside it: the same job each time.
                await asyncio.gather(*(kc.post(k) for k in keys))
                config = (await retrying(lambda: js.stream_info(NAMES.stream))).config
                config.duplicate_window = 1.0
                await retrying(lambda: js.update_stream(config))
                await asyncio.sleep(1.5)
                await asyncio.gather(*(kc.post(k) for k in keys))

                expected = {k: idempotent_job_id("default", k) for k in keys}
                unfinished = await wait_terminal(events, expected.values(), timeout=90)
                history = by_job(await read_stream(js))
                requested = [
                    s.event.job_id
                    for events_of_job in history.values()
                    for s in events_of_job
                    if isinstance(s.event, JobRequested)
                ]
                server_errors = sum(n for s, n in kc.statuses.items() if s >= 500 and s != 503)
                counts = audit(expected.values(), history, server_errors=server_errors)
                print(
                    "\n"
                    + counts.line(
                        "ambiguous-publish",
                        keys=len(keys),
                        posts=sum(kc.statuses.values()),
                        answered_503=kc.statuses[503],
                        during_faults=refused_during_faults,
                        publishes_in_doubt=in_doubt,
                        landed_unanswered=len(LANDED),
                        retry_after_missing=kc.retry_after_missing,
                        jobs_per_key=max(len(set(ids)) for ids in kc.answers.values()),
                        requested_events=len(requested),
                        killed=leader,
                    )
                )
                assert not unfinished, workers.logs()
                counts.assert_clean()
                assert counts.completed == len(keys)
                assert refused_during_faults > 0 and in_doubt > 0  # the faults made publishes fail
                assert kc.retry_after_missing == 0
                assert set(kc.statuses) <= {202, 503}, kc.statuses
                for key, ids in kc.answers.items():
                    assert set(ids) == {expected[key]} and len(ids) == 3, (key, ids)
                assert sorted(requested) == sorted(expected.values())  # one request per key
        finally:
            await nc.close()
    finally:
        if api is not None:
            api.stop()
        if workers is not None:
            workers.stop_all()
        cluster.stop()
