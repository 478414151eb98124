"""SIGKILL worker processes in the middle of ingests and renders: nothing lost, nothing twice."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest
from nats.aio.msg import Msg

from audioprep.domain.events import JobStarted, decode_event, is_terminal
from audioprep.shared import keys
from audioprep.shared.event_store import EventStore
from audioprep.shared.names import Names
from tests.faults.harness import (
    Workers,
    by_job,
    connected,
    fault_settings,
    ingest_request,
    make_sources,
    private_server,
    read_stream,
    save_request,
    tally,
    wait_terminal,
)
from tests.media import measure_duration_s

NAMES = Names()  # the default prefix: what `audioprep up` uses

pytestmark = pytest.mark.slow

JOBS = 60
KILLS = 4


class Watch:
    """Which worker process (pid) is running which job right now, from the live events."""

    def __init__(self) -> None:
        self.running: dict[str, int] = {}
        self.ended: set[str] = set()

    async def on_event(self, msg: Msg) -> None:
        event = decode_event(msg.data)
        if isinstance(event, JobStarted) and event.job_id not in self.ended:
            self.running[event.job_id] = int(event.worker.rsplit(":", 1)[1])
        elif is_terminal(event):
            self.ended.add(event.job_id)
            self.running.pop(event.job_id, None)


async def test_sigkill_workers_mid_job(tmp_path: Path) -> None:
    with private_server(tmp_path / "nats") as server:
        settings = fault_settings(server.url, tmp_path / "data", ack_wait_s=3.0)
        async with connected(settings) as nc:
            events = EventStore(nc, nc.jetstream(), NAMES)
            media = tmp_path / "media"
            media.mkdir()
            sources = await make_sources(settings, media, seconds=1.5)
            half = JOBS // 2
            requests = [await ingest_request(sources) for _ in range(half)]
            requests += [
                save_request(sources, fmt) for fmt in ("wav", "flac", "opus") * (half // 3)
            ]
            random.Random(6).shuffle(requests)
            watch = Watch()
            await nc.subscribe("jobs.>", cb=watch.on_event)
            for request in requests:
                await events.request_job(request)
            ids = [r.job_id for r in requests]

            workers = Workers(settings, tmp_path)
            workers.start()
            workers.start()
            try:
                deadline = time.monotonic() + 60
                while workers.killed < KILLS and time.monotonic() < deadline:
                    # Kill the process that is running a job right now (mid-ingest/render).
                    victims = [
                        workers.by_pid(pid)
                        for pid in set(watch.running.values())
                        if workers.by_pid(pid) is not None
                    ]
                    alive = [v for v in victims if v is not None and v.poll() is None]
                    if alive and len(watch.ended) >= workers.killed * 6:
                        workers.kill(alive[0])
                        workers.start()
                    await asyncio.sleep(0.02)
                unfinished = await wait_terminal(events, ids, timeout=120)
            finally:
                workers.stop_all()
            history = by_job(await read_stream(nc.jetstream()))

            counts = tally(ids, history)
            redelivered = sum(
                1
                for job_id in ids
                if any(
                    isinstance(s.event, JobStarted) and s.event.attempt > 1 for s in history[job_id]
                )
            )
            print(counts.line("sigkill-worker", kills=workers.killed, redelivered=redelivered))
            assert not unfinished, f"stuck: {sorted(unfinished)}\n{workers.logs()}"
            assert workers.killed == KILLS
            assert redelivered >= 1  # the kills did land on jobs in flight
            assert counts.completed == JOBS, counts
            assert counts.failed == counts.cancelled == counts.lost == counts.duplicates == 0

            # One result per job, at its deterministic key, and it is real audio.
            storage = sources.storage
            for request in requests:
                if request.kind == "save":
                    outputs = await storage.list(f"prepared/{request.job_id}/")
                    assert len(outputs) == 1, outputs
                else:
                    outputs = await storage.list(f"sources/{request.job_id}/")
                    assert len(outputs) == 1, outputs
                    assert await storage.head(keys.peaks_key("default", request.job_id))
            sample = next(r for r in requests if r.kind == "save" and r.format == "flac")
            out = (await storage.list(f"prepared/{sample.job_id}/"))[0]
            path = storage.local_path(out)
            assert path is not None
            assert abs(measure_duration_s(path) - 1.5) < 0.05
