"""Signed download links: the signature is the credential; any tampering or expiry is a 403."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from audioprep.shared import signing
from tests.conftest import Stack
from tests.jobs_helpers import wait_for_job
from tests.media import write_tone
from tests.security.conftest import TENANT_A, A, B


def _query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def _download_path(params: dict[str, str]) -> str:
    return f"{signing.DOWNLOAD_PATH}?{urlencode(params)}"


@pytest.fixture(scope="module")
async def saved(secure_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A completed save job of tenant A: its download link and prepared key."""
    wav = write_tone(Path(tmp_path_factory.mktemp("signed")) / "t.wav", seconds=0.5)
    client = secure_stack.client
    with wav.open("rb") as f:
        resp = await client.post(
            "/api/audio/ingest", files={"file": ("t.wav", f, "audio/wav")}, headers=A
        )
    ingest = await wait_for_job(client, resp.json()["jobId"], headers=A)
    assert ingest["status"] == "completed", ingest
    body = {"sourceKey": ingest["result"]["sourceKey"], "recipe": {}, "format": "wav"}
    resp = await client.post("/api/audio/edit/save", json=body, headers=A)
    assert resp.status_code == 202, resp.text
    view = await wait_for_job(client, resp.json()["jobId"], headers=A)
    assert view["status"] == "completed", view
    assert view["result"]["preparedKey"].startswith(f"tenants/{TENANT_A}/prepared/")
    return {"url": view["downloadUrl"], "key": view["result"]["preparedKey"]}


async def test_genuine_link_works_without_api_key(
    secure_stack: Stack, saved: dict[str, str]
) -> None:
    params = _query(saved["url"])
    assert params["key"] == saved["key"]
    resp = await secure_stack.client.get(_download_path(params))
    assert resp.status_code == 200, resp.text
    assert resp.content[:4] == b"RIFF"
    resp = await secure_stack.client.get(_download_path(params), headers={"Range": "bytes=0-3"})
    assert resp.status_code == 206 and resp.content == b"RIFF"


async def test_tampered_links_are_refused(secure_stack: Stack, saved: dict[str, str]) -> None:
    good = _query(saved["url"])
    sig = good["sig"]
    flipped = ("A" if sig[0] != "A" else "B") + sig[1:]
    other_tenant_key = saved["key"].replace(f"tenants/{TENANT_A}/", "tenants/tenantB/", 1)
    default_tenant_key = saved["key"].split("/", 2)[2]
    variants = {
        "signature changed": {**good, "sig": flipped},
        "signature truncated": {**good, "sig": sig[:-2]},
        "signature empty": {**good, "sig": ""},
        "signature huge": {**good, "sig": sig * 10},
        "expiry extended": {**good, "expires": str(int(good["expires"]) + 300)},
        "expiry not a number": {**good, "expires": "99999999999x"},
        "key of another tenant": {**good, "key": other_tenant_key},
        "key moved to the default tenant": {**good, "key": default_tenant_key},
        "key with traversal": {**good, "key": saved["key"] + "/../../../etc/passwd"},
        "key missing": {k: v for k, v in good.items() if k != "key"},
    }
    for name, params in variants.items():
        resp = await secure_stack.client.get(_download_path(params))
        assert resp.status_code == 403, (name, resp.status_code, resp.text)
        assert resp.json()["code"] == "invalid_signature", (name, resp.text)
    # A link signed with another secret is worthless here.
    forged = signing.sign("not-the-secret-0123456789abcdef012", saved["key"])
    resp = await secure_stack.client.get(f"{signing.DOWNLOAD_PATH}?{forged.query()}")
    assert resp.status_code == 403
    print(f"\nsigned-link tamper variants refused: {len(variants) + 1}")


async def test_expired_link_is_refused(secure_stack: Stack, saved: dict[str, str]) -> None:
    secret = secure_stack.settings.signing_secret
    old = signing.sign(secret, saved["key"], ttl_s=60, now=time.time() - 3 * 3600)
    resp = await secure_stack.client.get(f"{signing.DOWNLOAD_PATH}?{old.query()}")
    assert resp.status_code == 403
    assert resp.json()["code"] == "link_expired"
    # The same key signed now works: expiry is the only thing wrong above.
    fresh = signing.sign(secret, saved["key"])
    resp = await secure_stack.client.get(f"{signing.DOWNLOAD_PATH}?{fresh.query()}")
    assert resp.status_code == 200


async def test_other_tenant_cannot_get_a_link(secure_stack: Stack, saved: dict[str, str]) -> None:
    """B can't poll A's job (where links come from), so B never gets one."""
    job_id = saved["key"].split("/")[3]
    resp = await secure_stack.client.get(f"/api/audio/jobs/{job_id}", headers=B)
    assert resp.status_code == 404
