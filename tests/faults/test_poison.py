"""A job that kills its worker every time ends as failed (max_deliveries) and blocks nobody."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from nats.aio.msg import Msg

from audioprep.domain.events import JobFailed, JobRequested, JobStarted, decode_event
from audioprep.services.cli.dlq import retry_job
from audioprep.shared.event_store import EventStore
from audioprep.shared.names import Names
from audioprep.shared.nats_server import REPO_ROOT
from tests.faults.harness import (
    Workers,
    by_job,
    connected,
    fault_settings,
    ingest_request,
    make_sources,
    private_server,
    read_stream,
    service_env,
    tally,
    wait_terminal,
)
from tests.media import write_noise

NAMES = Names()  # the default prefix: what `audioprep up` uses

pytestmark = pytest.mark.slow

OTHERS = 12
MAX_DELIVER = 5


async def test_poison_job_fails_with_max_deliveries(tmp_path: Path) -> None:
    with private_server(tmp_path / "nats") as server:
        # One job per worker: a kill then takes only the poison job (and at most the one
        # message a pull loop holds), so an ordinary job is not killed five times alongside
        # it on a slow machine (with two slots it was, now and then, and failed too).
        settings = fault_settings(
            server.url,
            tmp_path / "data",
            ack_wait_s=2.0,
            max_deliver=MAX_DELIVER,
            worker_concurrency=1,
        )
        async with connected(settings) as nc:
            js = nc.jetstream()
            events = EventStore(nc, js, NAMES)
            media = tmp_path / "media"
            media.mkdir()
            sources = await make_sources(settings, media, seconds=1.0)
            # Long enough that the worker is still on it when we kill it.
            long_file = write_noise(media / "poison.wav", seconds=60.0)
            poison = await ingest_request(sources, path=long_file)
            others = [await ingest_request(sources) for _ in range(OTHERS)]

            workers = Workers(settings, tmp_path)
            poison_starts: asyncio.Queue[int] = asyncio.Queue()

            async def on_started(msg: Msg) -> None:
                event = decode_event(msg.data)
                assert isinstance(event, JobStarted)
                await poison_starts.put(int(event.worker.rsplit(":", 1)[1]))

            # The "crash": whichever worker process starts the poison job dies at once.
            await nc.subscribe(
                NAMES.event_subject("ingest", poison.job_id, "started"), cb=on_started
            )
            await events.request_job(poison)
            for request in others[: OTHERS // 2]:
                await events.request_job(request)
            workers.start()
            workers.start()

            async def killer() -> None:
                while True:
                    pid = await poison_starts.get()
                    victim = workers.by_pid(pid)
                    if victim is not None and victim.poll() is None:
                        workers.kill(victim)
                        workers.start()

            kill_task = asyncio.create_task(killer())
            try:
                for request in others[OTHERS // 2 :]:  # more work arrives meanwhile
                    await events.request_job(request)
                ids = [poison.job_id] + [r.job_id for r in others]
                unfinished = await wait_terminal(events, ids, timeout=90)
                kill_task.cancel()

                history = by_job(await read_stream(js))
                counts = tally(ids, history)
                print(counts.line("poison", kills=workers.killed))
                assert not unfinished, f"stuck: {sorted(unfinished)}\n{workers.logs()}"
                ends = [s.event for s in history[poison.job_id] if isinstance(s.event, JobFailed)]
                assert len(ends) == 1 and ends[0].error.code == "max_deliveries", ends
                assert ends[0].attempt == MAX_DELIVER
                starts = [s for s in history[poison.job_id] if isinstance(s.event, JobStarted)]
                assert len(starts) == MAX_DELIVER
                assert workers.killed == MAX_DELIVER
                assert counts.completed == OTHERS and counts.failed == 1, counts
                assert counts.lost == counts.duplicates == 0

                # The operator sees it in the DLQ ...
                listing = await asyncio.to_thread(
                    subprocess.run,
                    [sys.executable, "-m", "audioprep.services.cli.main", "dlq", "list"],
                    cwd=REPO_ROOT,
                    env=service_env(settings),
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                assert listing.returncode == 0, listing.stderr
                assert poison.job_id in listing.stdout and "failed" in listing.stdout
                print(listing.stdout)

                # ... and retries it as a new job once the cause is gone (we stop killing).
                new_id, created = await retry_job(events, poison.job_id)
                assert created
                again, created_again = await retry_job(events, poison.job_id)
                assert (again, created_again) == (new_id, False)  # no double retry
                assert await wait_terminal(events, [new_id], timeout=60) == set()
                retried = by_job(await read_stream(js))[new_id]
                first = retried[0].event
                assert isinstance(first, JobRequested)
                assert first.retry_of == poison.job_id and first.attempt_base == MAX_DELIVER
                assert type(retried[-1].event).__name__ == "JobCompleted"
                started = [s.event for s in retried if isinstance(s.event, JobStarted)]
                assert started[0].attempt == MAX_DELIVER + 1
            finally:
                kill_task.cancel()
                workers.stop_all()
