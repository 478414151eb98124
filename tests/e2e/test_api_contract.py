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


# ---- bug 4: one request-error mapping for every route -----------------------------------------

JSON_ROUTES = ["/api/audio/ingest", "/api/audio/edit/preview", "/api/audio/edit/save"]
JSON = "application/json"

# (name, body, content type or None, status, code, field or None)
REQUEST_ERRORS: list[tuple[str, bytes, str | None, int, str, str | None]] = [
    ("cut off after one key char", b'{"a', JSON, 400, "malformed_json", None),
    ("cut off after an unknown field", b'{"bogus": 1, ', JSON, 400, "malformed_json", None),
    ("cut off in a string value", b'{"sourceKey": "sources/', JSON, 400, "malformed_json", None),
    ("not JSON", b"{nope", JSON, 400, "malformed_json", None),
    ("NaN", b'{"gainDb": NaN}', JSON, 400, "malformed_json", None),
    ("not UTF-8", b'{"url": "\xff\xfe"}', JSON, 400, "malformed_json", None),
    ("empty body", b"", JSON, 400, "empty_body", None),
    ("empty body, no content type", b"", None, 400, "empty_body", None),
    ("only whitespace", b"  \r\n ", JSON, 400, "empty_body", None),
    ("JSON null", b"null", JSON, 422, "validation_error", None),
    ("JSON array", b"[1, 2]", JSON, 422, "validation_error", None),
    ("JSON string", b'"hello"', JSON, 422, "validation_error", None),
    ("JSON as text/plain", b"{}", "text/plain", 415, "unsupported_media_type", None),
    ("too large", b'{"a": "' + b"x" * (65 * 1024) + b'"}', JSON, 413, "too_large", None),
]


@pytest.mark.parametrize("path", JSON_ROUTES)
@pytest.mark.parametrize(
    ("name", "body", "ctype", "status", "code", "field"),
    REQUEST_ERRORS,
    ids=[case[0] for case in REQUEST_ERRORS],
)
async def test_request_errors_map_the_same_on_every_route(
    idle_api: IdleApi,
    path: str,
    name: str,
    body: bytes,
    ctype: str | None,
    status: int,
    code: str,
    field: str | None,
) -> None:
    headers = {"content-type": ctype} if ctype else {}
    resp = await idle_api.client.post(path, content=body, headers=headers)
    assert resp.status_code == status, (name, resp.text)
    problem = problem_of(resp)
    assert problem["code"] == code, (name, problem)
    assert problem.get("field") == field, (name, problem)
    detail = problem["detail"]
    assert detail != "'data'" and "unknown field" not in detail, (name, problem)
    if code == "empty_body":
        assert "empty" in detail
    if code == "malformed_json":
        assert detail.startswith("the body is not valid JSON"), problem


@pytest.mark.parametrize(
    ("path", "body", "code", "field"),
    [
        ("/api/audio/ingest", {"source": "url"}, "validation_error", "url"),
        (
            "/api/audio/ingest",
            {"source": "url", "url": "https://a.example", "x": 1},
            "validation_error",
            None,
        ),
        ("/api/audio/ingest", {"source": "url", "url": 5}, "validation_error", "url"),
        ("/api/audio/edit/preview", {"recipe": {}}, "validation_error", "sourceKey"),
        (
            "/api/audio/edit/preview",
            {"sourceKey": "k", "recipe": {"gainDb": "3"}},
            "invalid_recipe",
            "recipe.gainDb",
        ),
        (
            "/api/audio/edit/preview",
            {"sourceKey": "k", "recipe": {"trim": {}}, "format": "mp3"},
            "validation_error",
            "format",
        ),
        ("/api/audio/edit/save", {"sourceKey": "k"}, "validation_error", "format"),
        (
            "/api/audio/edit/save",
            {"sourceKey": "k", "format": "wav", "options": {"bitDepth": 8}},
            "validation_error",
            "options.bitDepth",
        ),
        (
            "/api/audio/edit/save",
            {"sourceKey": "k", "format": "wav", "recipe": {"trim": {"startMs": -1}}},
            "invalid_recipe",
            "recipe.trim.startMs",
        ),
    ],
)
async def test_wrong_json_names_the_field(
    idle_api: IdleApi, path: str, body: dict[str, Any], code: str, field: str | None
) -> None:
    """Well-formed JSON of the wrong shape: 422, strictly typed (a string is not a number)."""
    resp = await idle_api.client.post(path, json=body)
    assert resp.status_code == 422, resp.text
    problem = problem_of(resp)
    assert (problem["code"], problem.get("field")) == (code, field), problem


def test_the_request_error_table_is_documented() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "http-api.md").read_text()
    section = doc.split("### Request errors", 1)[1].split("\n## ", 1)[0]
    for code in {case[4] for case in REQUEST_ERRORS} | {"validation_error", "invalid_recipe"}:
        assert f"`{code}`" in section, code
