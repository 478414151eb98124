"""API keys and tenants: 401 without a key on every /api route, isolation between tenants."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from litestar import Litestar
from nats.aio.client import Client

from audioprep.services.api.app import create_app
from audioprep.shared import signing
from audioprep.shared.ids import new_job_id
from audioprep.shared.settings import Settings
from audioprep.shared.storage import Storage
from tests.conftest import Stack
from tests.jobs_helpers import wait_for_job
from tests.media import write_tone
from tests.security.conftest import KEY_A, TENANT_A, A, B, bearer

# Routes that are deliberately public: the signed link is the credential for downloads.
PUBLIC_API_PATHS = {signing.DOWNLOAD_PATH}


def api_routes(app: Litestar) -> list[tuple[str, str]]:
    """(method, path with a job id filled in) for every /api route of the app."""
    out = []
    for route in app.routes:
        if not route.path.startswith("/api/") or route.path in PUBLIC_API_PATHS:
            continue
        path = re.sub(r"\{[^}]+\}", new_job_id(), route.path)
        for method in sorted(route.methods - {"OPTIONS", "HEAD"}):
            out.append((method, path))
    return out


async def _upload(stack: Stack, path: Path, headers: dict[str, str]) -> str:
    with path.open("rb") as f:
        resp = await stack.client.post(
            "/api/audio/ingest", files={"file": (path.name, f, "audio/wav")}, headers=headers
        )
    assert resp.status_code == 202, resp.text
    return str(resp.json()["jobId"])


async def test_every_api_route_requires_a_key(secure_stack: Stack) -> None:
    routes = api_routes(secure_stack.client.app)
    assert len(routes) >= 4, routes
    bad_headers: list[dict[str, Any]] = [
        {},
        {"Authorization": "Bearer wrong-key"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer "},
        {"Authorization": "bearer " + "x" * 5000},
        {"Authorization": b"Bearer \xff\xfe"},
        {"Authorization": f"Bearer {KEY_A[:-1]}"},
        {"Authorization": f"Bearer {KEY_A}x"},
    ]
    for method, path in routes:
        for headers in bad_headers:
            resp = await secure_stack.client.request(method, path, headers=headers)
            assert resp.status_code == 401, (method, path, headers, resp.status_code, resp.text)
            assert resp.headers["content-type"].startswith("application/problem+json")
            assert resp.json()["code"] == "unauthorized"
            assert resp.headers["www-authenticate"].startswith("Bearer")
    print(f"\nroutes checked for 401: {len(routes)}")


async def test_tenants_see_only_their_own_jobs(
    secure_stack: Stack, secure_storage: Storage, media_dir: Path
) -> None:
    wav = write_tone(media_dir / "tone.wav", seconds=1.0)
    job_a = await _upload(secure_stack, wav, A)
    view = await wait_for_job(secure_stack.client, job_a, headers=A)
    assert view["status"] == "completed", view
    # Storage keys of a non-default tenant live under its own prefix.
    source_key = view["result"]["sourceKey"]
    assert source_key.startswith(f"tenants/{TENANT_A}/sources/{job_a}/")
    assert view["result"]["peaksKey"] == f"tenants/{TENANT_A}/peaks/{job_a}.json"
    assert await secure_storage.head(source_key) is not None

    client = secure_stack.client
    for method, path in api_routes(client.app):
        real = re.sub(r"/jobs/[^/]+", f"/jobs/{job_a}", path)
        if real == path and "{" not in path:
            continue  # not a per-job route
        resp = await client.request(method, real, headers=B)
        assert resp.status_code == 404, (method, real, resp.status_code, resp.text)
        assert resp.json()["code"] in ("job_not_found", "not_found"), resp.text
    # Tenant A still sees everything; B's cancel changed nothing.
    resp = await client.get(f"/api/audio/jobs/{job_a}", headers=A)
    assert resp.status_code == 200
    assert resp.json()["status"] == "completed"
    resp = await client.get(f"/api/audio/jobs/{job_a}/peaks", headers=A)
    assert resp.status_code == 200


async def test_idempotency_keys_are_per_tenant(secure_stack: Stack, media_dir: Path) -> None:
    wav = write_tone(media_dir / "tone.wav", seconds=0.5)
    same = {"Idempotency-Key": f"order-{new_job_id()}"}
    job_a = await _upload(secure_stack, wav, {**A, **same})
    job_b = await _upload(secure_stack, wav, {**B, **same})
    assert job_a != job_b
    assert await _upload(secure_stack, wav, {**A, **same}) == job_a
    resp = await secure_stack.client.get(f"/api/audio/jobs/{job_b}", headers=A)
    assert resp.status_code == 404


async def test_default_tenant_key_maps_to_unprefixed_storage(secure_settings: Settings) -> None:
    from audioprep.shared import keys

    assert keys.source_key("default", "J1", "a.wav") == "sources/J1/a.wav"
    assert keys.source_key(TENANT_A, "J1", "a.wav") == f"tenants/{TENANT_A}/sources/J1/a.wav"
    assert keys.tenant_of_key(f"tenants/{TENANT_A}/sources/J1/a.wav") == TENANT_A
    assert bearer("k") == {"Authorization": "Bearer k"}


async def test_open_mode_warns_at_start(
    secure_settings: Settings, secure_nc: Client, caplog: Any
) -> None:
    from litestar.testing import AsyncTestClient

    open_settings = secure_settings.with_(api_keys={}, dev_mode=True)
    caplog.set_level("INFO", logger="audioprep.api")
    async with AsyncTestClient(app=create_app(open_settings)) as client:
        resp = await client.get("/api/audio/jobs/" + new_job_id())
        assert resp.status_code == 404  # open: no key needed, the job just doesn't exist
    said = [r for r in caplog.records if "no API keys configured" in r.getMessage()]
    # said at start; a warning only outside dev mode (the README's flows log no warning)
    assert said and all(r.levelname == "INFO" for r in said)


async def test_open_mode_in_production_is_a_warning(
    secure_settings: Settings, secure_nc: Client, caplog: Any
) -> None:
    from litestar.testing import AsyncTestClient

    open_prod = secure_settings.with_(api_keys={}, dev_mode=False)
    caplog.set_level("INFO", logger="audioprep.api")
    async with AsyncTestClient(app=create_app(open_prod)) as client:
        await client.get("/healthz")
    said = [r for r in caplog.records if "no API keys configured" in r.getMessage()]
    assert said and all(r.levelname == "WARNING" for r in said)
