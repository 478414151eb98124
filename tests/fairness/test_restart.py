"""Every service killed at once (SIGKILL the worker processes, with the leading dispatcher
among them, and restart nats-server), then started again: the new dispatcher rebuilds who
waits and who runs from the stream. Nothing is lost, nothing is released or finished twice,
the running cap still holds across the crash, and nothing is left "running"."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from audioprep.domain.events import JobReleased, JobRequested, JobStarted
from audioprep.shared import keys
from audioprep.shared.event_store import EventStore, StoredEvent
from audioprep.shared.ids import new_job_id
from audioprep.shared.nats_server import REPO_ROOT, NatsServer, free_port
from audioprep.shared.settings import Settings
from audioprep.shared.storage import open_storage
from tests.fairness.conftest import settled_status, wait_until
from tests.faults.harness import (
    by_job,
    connected,
    fault_settings,
    read_stream,
    tally,
    wait_terminal,
)
from tests.media import write_tone
from tests.services import service_env

pytestmark = pytest.mark.slow
TERMINAL = ("JobCompleted", "JobFailed", "JobCancelled")


def start_worker(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = service_env(settings)
    env["AUDIOPREP_API_KEYS"] = "key-a=ta max_running=1,key-b=tb"
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "audioprep.services.cli.main", "worker"],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def kill(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


async def test_everything_restarts_and_the_dispatch_state_comes_back(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats", port=free_port(), log_file=tmp_path / "nats.log")
    server.start()
    settings = fault_settings(server.url, tmp_path / "data", ack_wait_s=3.0)
    storage = open_storage(settings.storage)
    slow = write_tone(tmp_path / "slow.wav", seconds=120.0, channels=1, rate=22050)
    quick = write_tone(tmp_path / "quick.wav", seconds=0.5)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        async with connected(settings) as nc:
            store = EventStore(nc, nc.jetstream(), settings.names)
            ids: list[str] = []
            for tenant, path, count in (("ta", slow, 4), ("tb", quick, 3)):
                for _ in range(count):
                    job_id = new_job_id()
                    key = keys.upload_key(tenant, job_id, path.name)
                    await storage.put_file(key, path)
                    await store.request_job(
                        JobRequested(
                            job_id=job_id,
                            kind="ingest",
                            tenant=tenant,
                            source="upload",
                            upload_key=key,
                            filename=path.name,
                        )
                    )
                    ids.append(job_id)
            procs = [start_worker(settings, tmp_path / f"w{i}.log") for i in range(2)]

            async def ta_running() -> bool:
                events = await read_stream(nc.jetstream())
                started = {s.event.job_id for s in events if isinstance(s.event, JobStarted)}
                ended = {s.event.job_id for s in events if type(s.event).__name__ in TERMINAL}
                return any(j in started and j not in ended for j in ids[:4])

            await wait_until(ta_running, 60, "one of ta's jobs running")
            kill(procs)  # the leading dispatcher dies with its lease, mid-job
            server.stop()
            server.start()

            async def back() -> bool:  # our own connection reconnected, JetStream answers
                try:
                    await nc.jetstream().stream_info(settings.names.stream)
                except Exception:
                    return False
                return nc.is_connected

            await wait_until(back, 30, "nats-server back")
            procs = [start_worker(settings, tmp_path / f"w{i + 2}.log") for i in range(2)]
            unfinished = await wait_terminal(store, ids, timeout=90)
            assert not unfinished, (tmp_path / "w2.log").read_text()[-3000:]
            status = await settled_status(nc, settings)
            history = by_job(await read_stream(nc.jetstream()))
    finally:
        kill([p for p in procs if p.poll() is None])
        server.stop()
    counts = tally(ids, history)
    restarted = sum(sum(isinstance(s.event, JobStarted) for s in history[j]) > 1 for j in ids)
    print(counts.line("restart-everything", killed_leader=1, nats_restarts=1, restarted=restarted))
    assert counts.completed == len(ids) and counts.lost == counts.duplicates == 0
    for job_id in ids:
        events = [s.event for s in history[job_id]]
        assert sum(isinstance(e, JobReleased) for e in events) == 1, events  # released once
        attempts = [e.attempt for e in events if isinstance(e, JobStarted)]
        assert len(attempts) == len(set(attempts)), events  # no attempt started twice
    # ta's cap (1) held across the crash: the rebuilt dispatcher counted the killed job as
    # still in flight until it ended
    assert max_concurrent(history, ids[:4]) == 1
    assert status is not None and status.caught_up and not status.tenants


def max_concurrent(history: dict[str, list[StoredEvent]], ids: list[str]) -> int:
    marks = []
    for job_id in ids:
        events = history[job_id]
        first = next(s.seq for s in events if isinstance(s.event, JobStarted))
        end = next(s.seq for s in events if type(s.event).__name__ in TERMINAL)
        marks += [(first, 1), (end, -1)]
    running = most = 0
    for _, step in sorted(marks):
        running += step
        most = max(most, running)
    return most
