"""Ctrl-C and SIGTERM stop `audioprep up` (and the CLI) cleanly: nats-server last, running jobs
finished or handed back, exit 0, no traceback; a background start (SIGINT inherited as
ignored) still stops on SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient

from audioprep.domain.events import JobCompleted, JobFailed, JobProgressed, JobRetrying, JobStarted
from audioprep.shared.event_store import EventStore
from audioprep.shared.names import Names
from audioprep.shared.nats_conn import connect
from audioprep.shared.nats_server import NatsServer, free_port
from audioprep.shared.provision import provision
from audioprep.shared.settings import Settings
from tests.cli.conftest import AUDIOPREP, CliStack
from tests.media import write_tone

NAMES = Names()  # the default prefix: what `audioprep up` uses

pytestmark = pytest.mark.slow

DRAIN_GRACE_S = 2.0
# Past the grace: the worker's current fetch (2 s), the API's and the projector's shutdown.
STOP_OVERHEAD_S = 12.0
IGNORE_SIGINT = ["sh", "-c", 'trap "" INT; exec "$0" "$@"']  # what `cmd &` in a script does
BAD_WORDS = ("Traceback", "KeyboardInterrupt", "Application shutdown failed", "worker_crash")


@dataclass
class Up:
    proc: subprocess.Popen[bytes]
    api: str
    data_dir: Path
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while "ready — press Ctrl-C to stop" not in self.output():
            assert self.proc.poll() is None, f"up exited early:\n{self.output()}"
            assert time.monotonic() < deadline, f"up not ready:\n{self.output()}"
            time.sleep(0.05)

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"up still running after {timeout} s:\n{self.output()}") from None


@contextlib.contextmanager
def run_up(tmp_path: Path, *, prefix: list[str] | None = None) -> Iterator[Up]:
    """`audioprep up` on free ports with its own data dir, in its own session (process group),
    as a terminal would run it; whatever is left at the end is stopped."""
    api_port, nats_port = free_port(), free_port()
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIOPREP_")}
    env.update(
        AUDIOPREP_DRAIN_GRACE_S=str(DRAIN_GRACE_S),
        AUDIOPREP_WORKER_CONCURRENCY="1",
        AUDIOPREP_LOG_FORMAT="console",
    )
    cmd = [AUDIOPREP, "up", "--workers", "1", "--port", str(api_port)]
    cmd += ["--nats-port", str(nats_port), "--data-dir", str(data_dir)]
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*(prefix or []), *cmd],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    up = Up(proc, f"http://127.0.0.1:{api_port}", data_dir, log)
    try:
        yield up
    finally:
        if proc.poll() is None:  # a failed test: stop it the documented way, then hard
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


async def _poll(
    client: httpx.AsyncClient, job_id: str, done: Callable[[dict[str, Any]], bool], timeout: float
) -> dict[str, Any]:
    """The job's view once `done(view)` (deadline, no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while True:
        view = (await client.get(f"/api/audio/jobs/{job_id}")).json()
        if done(view):
            return dict(view)
        assert view["status"] not in ("failed", "cancelled"), view
        assert time.monotonic() < deadline, f"job {job_id} not there in {timeout} s: {view}"
        await asyncio.sleep(0.1)


async def test_ctrl_c_drains_a_running_save_and_exits_zero(tmp_path: Path) -> None:
    # 10 minutes of audio normalised to mp3: a render that takes seconds, so Ctrl-C meets it.
    wav = write_tone(tmp_path / "long.wav", seconds=600.0, channels=1, rate=22050)
    with run_up(tmp_path) as up:
        await asyncio.to_thread(up.wait_ready)
        async with httpx.AsyncClient(base_url=up.api, timeout=30) as client:
            with wav.open("rb") as f:
                resp = await client.post("/api/audio/ingest", files={"file": ("long.wav", f)})
            assert resp.status_code == 202, resp.text
            ingest = await _poll(
                client, resp.json()["jobId"], lambda v: v["status"] == "completed", 60
            )
            body = {
                "sourceKey": ingest["result"]["sourceKey"],
                "recipe": {"normalize": {"targetLufs": -16, "truePeakDb": -1.5}},
                "format": "mp3",
            }
            resp = await client.post("/api/audio/edit/save", json=body)
            assert resp.status_code == 202, resp.text
            save_id = resp.json()["jobId"]
            # Rendering: the media child has reported progress.
            await _poll(
                client, save_id, lambda v: v["status"] == "running" and v["progress"] > 1, 60
            )
        os.killpg(up.proc.pid, signal.SIGINT)  # the terminal's Ctrl-C: the whole group
        started = time.monotonic()
        code = await asyncio.to_thread(up.wait_exit, DRAIN_GRACE_S + STOP_OVERHEAD_S + 30)
        took = time.monotonic() - started
        output = up.output()
    assert code == 0, output
    for word in BAD_WORDS:
        assert word not in output, output
    assert took < DRAIN_GRACE_S + STOP_OVERHEAD_S, f"stopping took {took:.1f} s:\n{output}"
    assert output.rstrip().endswith("stopped"), output

    # The stream, read from the store `up` left behind: the save was finished or handed back
    # (started, progressed, nothing else): no retry for a crash, no failure.
    server = NatsServer(up.data_dir / "nats").start()
    try:
        settings = Settings(nats_url=server.url, data_dir=up.data_dir)
        nc = await connect(settings, "test")
        try:
            history = [
                s.event for s in await EventStore(nc, nc.jetstream(), NAMES).history(save_id)
            ]
        finally:
            await nc.close()
    finally:
        server.stop()
    assert not [e for e in history if isinstance(e, JobRetrying | JobFailed)], history
    assert any(isinstance(e, JobStarted) for e in history)
    assert any(isinstance(e, JobProgressed) for e in history)
    if not isinstance(history[-1], JobCompleted):
        assert "handed back unfinished jobs" in output, output


async def test_background_up_with_sigint_ignored_still_stops_on_sigint(tmp_path: Path) -> None:
    with run_up(tmp_path, prefix=IGNORE_SIGINT) as up:
        await asyncio.to_thread(up.wait_ready)
        up.proc.send_signal(signal.SIGINT)  # `kill -INT <pid>`
        code = await asyncio.to_thread(up.wait_exit, STOP_OVERHEAD_S + 30)
        output = up.output()
    assert code == 0, output
    assert "Traceback" not in output
    assert output.rstrip().endswith("stopped"), output


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
async def test_events_tail_stops_on_sigint_even_if_started_ignoring_it(
    cli_stack: CliStack, sig: signal.Signals, code: int
) -> None:
    proc = await asyncio.create_subprocess_exec(
        *IGNORE_SIGINT,
        AUDIOPREP,
        "events",
        "tail",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_stack.env(),
    )
    assert proc.stderr is not None
    header = await asyncio.wait_for(proc.stderr.readline(), timeout=30)
    assert header.startswith(b"# following stream JOBS"), header
    proc.send_signal(sig)
    try:
        assert await asyncio.wait_for(proc.wait(), timeout=15) == code
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert b"Traceback" not in await proc.stderr.read()


async def test_api_shutdown_with_nats_already_gone_is_clean(tmp_path: Path) -> None:
    """The API's lifespan ends without an error when nats-server stopped first."""
    from audioprep.services.api.app import create_app

    server = NatsServer(tmp_path / "nats").start()
    settings = Settings(
        nats_url=server.url,
        data_dir=tmp_path / "data",
        signing_secret="x" * 32,
        signing_secret_is_ephemeral=False,
    )
    try:
        nc = await connect(settings, "test")
        await provision(nc.jetstream(), settings)
        await nc.close()
        async with AsyncTestClient(app=create_app(settings)) as client:
            assert (await client.get("/healthz")).status_code == 200
            server.stop()  # NATS goes first; leaving the block runs the lifespan's shutdown
    finally:
        server.stop()


def test_up_refuses_a_port_in_use_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run(
            [AUDIOPREP, "up", "--port", str(port), "--data-dir", str(tmp_path / "data")],
            capture_output=True,
            timeout=60,
            check=False,
        )
    assert r.returncode == 1
    assert r.stderr.decode() == (
        f"audioprep up: API port {port} already in use; stop whatever uses it or pick other ports\n"
    )
    assert not (tmp_path / "data" / "nats").exists()  # nothing was started
