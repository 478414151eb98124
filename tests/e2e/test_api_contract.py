"""The API's request contract on an API with no workers: request-error mapping, problem members,
Idempotency-Key fingerprints. Jobs accepted here stay pending (nobody takes them), which makes
"not ready yet" answers deterministic. The app runs on its own nats-server, so the session
stack's workers never see these jobs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from shared.nats_conn import connect
from shared.nats_server import NatsServer
from shared.provision import provision
from shared.settings import Settings


@dataclass
class IdleApi:
    client: AsyncTestClient  # type: ignore[type-arg]
    settings: Settings

    def put_source(self, key: str, data: bytes = b"RIFF....WAVE") -> str:
        """A stored object under `key` (the API only checks that a source exists)."""
        path = Path(self.settings.data_dir) / "storage" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return key


@pytest.fixture(scope="module")
async def idle_api(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[IdleApi]:
    from services.api.app import create_app

    base = tmp_path_factory.mktemp("idle-api")
    server = NatsServer(base / "nats").start()
    settings = Settings(
        nats_url=server.url,
        data_dir=base,
        storage_url=(base / "storage").resolve().as_uri(),
        signing_secret="idle-api-secret-0123456789abcdef0123",
        signing_secret_is_ephemeral=False,
        log_format="console",
        log_level="ERROR",
    )
    try:
        nc = await connect(settings, "tests")
        await provision(nc.jetstream(), settings)
        await nc.close()
        async with AsyncTestClient(app=create_app(settings), timeout=30) as client:
            yield IdleApi(client=client, settings=settings)
    finally:
        server.stop()


def problem_of(resp: Any) -> dict[str, Any]:
    assert resp.headers["content-type"].startswith("application/problem+json"), resp.text
    body: dict[str, Any] = resp.json()
    assert body["status"] == resp.status_code, body  # RFC 9457: `status` is the HTTP status
    return body


# ---- bug 5: the 409 of a preview that isn't ready names the job's status `jobStatus` -----------


async def test_preview_not_ready_says_job_status_not_status(idle_api: IdleApi) -> None:
    key = idle_api.put_source("sources/01IDLEPREVIEWSOURCE0000000/tone.wav")
    resp = await idle_api.client.post(
        "/api/audio/edit/preview", json={"sourceKey": key, "recipe": {"gainDb": -2}}
    )
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["jobId"]
    resp = await idle_api.client.get(f"/api/audio/edit/preview/{job_id}/audio")
    assert resp.status_code == 409
    problem = problem_of(resp)
    assert problem["code"] == "preview_not_ready"
    assert problem["status"] == 409
    assert problem["jobStatus"] == "pending"
