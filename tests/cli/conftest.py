"""A real HTTP stack for the CLI: uvicorn on a free port, projector and a worker, metrics ports."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from nats.aio.client import Client

from audioprep.shared import names
from audioprep.shared.nats_server import free_port
from audioprep.shared.settings import Settings
from tests.waiting import wait_until

AUDIOPREP = str(Path(sys.executable).parent / "audioprep")
TERMINAL = {"completed", "failed", "cancelled"}


@dataclass
class CliStack:
    settings: Settings
    api_url: str
    worker_metrics_port: int
    projector_metrics_port: int
    nc: Client

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIOPREP_")}
        env.update(
            AUDIOPREP_NATS_URL=self.settings.nats_url,
            AUDIOPREP_API_URL=self.api_url,
            AUDIOPREP_DATA_DIR=str(self.settings.data_dir),
            COLUMNS="200",
        )
        env.update(extra)
        return env


@dataclass
class Result:
    code: int
    out: str
    err: str


async def run_cli(stack: CliStack, *args: str, timeout: float = 60.0, **env: str) -> Result:
    """Run `audioprep ARGS` as a subprocess without blocking the loop (the API runs in it)."""
    proc = await asyncio.create_subprocess_exec(
        AUDIOPREP,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=stack.env(**env),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=timeout)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(f"audioprep {' '.join(args)} timed out:\n{out!r}\n{err!r}") from None
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


async def wait_view(stack: CliStack, job_id: str, timeout: float = 60.0) -> dict[str, object]:
    """GET the job view over HTTP until it is terminal, again after each of its events and
    view updates (tests.waiting)."""
    n = stack.settings.names
    subjects = [n.job_subjects(job_id), names.kv_subject(n.jobs_bucket, job_id)]
    async with httpx.AsyncClient(base_url=stack.api_url) as client:

        async def check() -> dict[str, object] | None:
            resp = await client.get(f"/api/audio/jobs/{job_id}")
            ok = resp.status_code == 200 and resp.json()["status"] in TERMINAL
            return dict(resp.json()) if ok else None

        return await wait_until(stack.nc, subjects, check, timeout=timeout, what=f"job {job_id}")


@contextlib.asynccontextmanager
async def http_stack(settings: Settings, nc: Client) -> AsyncIterator[CliStack]:
    from audioprep.services.api.app import create_app
    from audioprep.services.projector.main import run_projector
    from audioprep.services.worker.main import run_worker

    api_port, worker_port, projector_port = free_port(), free_port(), free_port()
    settings = settings.with_(api_port=api_port)
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(run_projector(settings.with_(metrics_port=projector_port), stop)),
        asyncio.create_task(run_worker(settings.with_(metrics_port=worker_port), stop)),
    ]
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=api_port,
        log_config=None,
        access_log=False,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 30
    while not server.started:
        if serving.done() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        await asyncio.sleep(0.02)
    try:
        yield CliStack(
            settings=settings,
            api_url=f"http://127.0.0.1:{api_port}",
            worker_metrics_port=worker_port,
            projector_metrics_port=projector_port,
            nc=nc,
        )
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, timeout=30)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=60)


@pytest.fixture(scope="session")
async def cli_stack(base_settings: Settings, nc: Client) -> AsyncIterator[CliStack]:
    async with http_stack(base_settings, nc) as stack:
        yield stack
