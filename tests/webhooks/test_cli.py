"""`audioprep webhooks add|ls|show|deliveries|replay|rotate-secret|rm` against a live API
(uvicorn on a free port) with a real notifier process and a real receiver."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from nats.aio.client import Client

from audioprep.shared.nats_server import free_port
from audioprep.shared.settings import Settings
from tests.webhooks.conftest import NotifierProcess, Receiver, auth, end_job, tenant_of

AUDIOPREP = str(Path(sys.executable).parent / "audioprep")


@dataclass
class Live:
    settings: Settings
    url: str


@pytest.fixture
def live_api(wh: Settings) -> Iterator[Live]:
    from audioprep.services.api.app import create_app

    port = free_port()
    config = uvicorn.Config(
        create_app(wh), host="127.0.0.1", port=port, log_level="error", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield Live(wh, f"http://127.0.0.1:{port}")
    server.should_exit = True
    thread.join(15)


async def cli(live: Live, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIOPREP_")}
    key = auth(live.settings)["Authorization"].removeprefix("Bearer ")
    env.update(AUDIOPREP_API_URL=live.url, AUDIOPREP_API_KEY=key, COLUMNS="200")
    proc = await asyncio.create_subprocess_exec(
        AUDIOPREP, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _wait_output(live: Live, want: str, *args: str, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    out = ""
    while time.monotonic() < deadline:
        code, out, err = await cli(live, *args)
        assert code == 0, err
        if want in out:
            return out
        await asyncio.sleep(0.1)
    raise AssertionError(f"{want!r} never in the output of {args}: {out}")


async def test_webhooks_commands(
    live_api: Live, nc: Client, receiver: Receiver, notifier_proc: NotifierProcess
) -> None:
    code, out, err = await cli(
        live_api, "webhooks", "add", receiver.url, "--events", "job.completed,job.failed"
    )
    assert code == 0, err
    fields = dict(line.split(None, 1) for line in out.splitlines() if line and line[0] != "(")
    webhook_id, secret = fields["id"], fields["secret"]
    assert secret.startswith("whsec_") and "shown only now" in out
    receiver.secret = secret

    code, out, _ = await cli(live_api, "webhooks", "ls")
    assert code == 0 and webhook_id in out and receiver.url in out and "ok" in out
    code, out, _ = await cli(live_api, "webhooks", "show", webhook_id)
    assert code == 0 and "job.completed, job.failed" in out and secret not in out

    job_id = await end_job(nc, tenant_of(live_api.settings))
    [got] = await receiver.wait_for(1)
    assert got.verified
    out = await _wait_output(live_api, "delivered", "webhooks", "deliveries", webhook_id)
    assert job_id in out and got.webhook_id in out and "200" in out

    code, out, err = await cli(live_api, "webhooks", "replay", webhook_id, got.webhook_id)
    assert code == 0, err
    replay_id = out.strip()
    assert replay_id.startswith("msg_") and replay_id != got.webhook_id
    _, second = await receiver.wait_for(2)
    assert second.webhook_id == replay_id and second.verified
    out = await _wait_output(live_api, "#1", "webhooks", "deliveries", webhook_id, replay_id)
    assert f"replay of {got.webhook_id}" in out and "delivered" in out

    code, out, _ = await cli(live_api, "webhooks", "rotate-secret", webhook_id)
    assert code == 0 and "whsec_" in out and "keeps signing until" in out

    code, out, _ = await cli(live_api, "webhooks", "rm", webhook_id)
    assert code == 0 and f"deleted {webhook_id}" in out
    code, out, err = await cli(live_api, "webhooks", "show", webhook_id)
    assert code == 1 and "404 webhook_not_found" in err
    code, out, err = await cli(live_api, "webhooks", "add", "http://10.0.0.1/x")
    assert code == 1 and "422 forbidden_url" in err and "(field url)" in err
    code, out, _ = await cli(live_api, "webhooks", "ls")
    assert code == 0 and "no webhook endpoints" in out
