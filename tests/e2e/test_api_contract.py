"""The API's request contract on an API with no workers: request-error mapping, problem members,
Idempotency-Key fingerprints. Jobs accepted here stay pending (nobody takes them), which makes
"not ready yet" answers deterministic. The app runs on its own nats-server, so the session
stack's workers never see these jobs.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from litestar.testing import AsyncTestClient

from audioprep.shared.names import Names
from audioprep.shared.nats_conn import connect
from audioprep.shared.nats_server import NatsServer
from audioprep.shared.provision import provision
from audioprep.shared.settings import Settings

NAMES = Names("idle")  # its own names on the session's nats-server: no workers there

T = TypeVar("T")
DEDUPE_WINDOW_S = 1.0


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
async def idle_api(
    nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[IdleApi]:
    from audioprep.services.api.app import create_app

    base = tmp_path_factory.mktemp("idle-api")
    settings = Settings(
        nats_url=nats_server.url,
        names=NAMES,
        data_dir=base,
        storage_url=(base / "storage").resolve().as_uri(),
        signing_secret="idle-api-secret-0123456789abcdef0123",
        signing_secret_is_ephemeral=False,
        log_format="console",
        log_level="ERROR",
    )
    nc = await connect(settings, "tests")
    js = nc.jetstream()
    await provision(js, settings)
    # A short dedupe window, so "after the stream's dedupe window" is testable in seconds.
    config = (await js.stream_info(NAMES.stream)).config
    config.duplicate_window = DEDUPE_WINDOW_S
    await js.update_stream(config)
    await nc.close()
    async with AsyncTestClient(app=create_app(settings), timeout=30) as client:
        yield IdleApi(client=client, settings=settings)


async def concurrently(
    idle_api: IdleApi, *calls: Callable[[httpx.AsyncClient], Awaitable[T]]
) -> list[T]:
    """Run the calls at once on the app's own loop (the test client's portal runs one at a time)."""

    async def run() -> list[T]:
        transport = httpx.ASGITransport(app=idle_api.client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return list(await asyncio.gather(*(call(client) for call in calls)))

    return await asyncio.wrap_future(idle_api.client.blocking_portal.start_task_soon(run))


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

INGEST, PREVIEW, SAVE = "/api/audio/ingest", "/api/audio/edit/preview", "/api/audio/edit/save"
JSON_ROUTES = [INGEST, PREVIEW, SAVE]
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


# ---- bug 6: an Idempotency-Key stands for one request (route + body) ---------------------------


def key(name: str) -> dict[str, str]:
    """A key no other test (or earlier run against the same server) has used."""
    return {"Idempotency-Key": f"{name[:100]}-{uuid.uuid4().hex}"}


async def post(idle_api: IdleApi, path: str, body: Any, headers: dict[str, str]) -> httpx.Response:
    return await idle_api.client.post(path, json=body, headers=headers)


async def test_same_key_and_body_is_the_same_job(idle_api: IdleApi) -> None:
    src = idle_api.put_source("sources/01IDEMSAMEBODY000000000000/a.wav")
    headers = key("same-body")
    first = await post(
        idle_api, PREVIEW, {"sourceKey": src, "recipe": {"gainDb": -3, "speed": 1}}, headers
    )
    assert first.status_code == 202, first.text
    # The same request spelled differently: key order, spacing, 1 vs 1.0, defaults written out.
    again = await idle_api.client.post(
        PREVIEW,
        content=(
            b'{ "recipe": {"speed": 1.0, "gainDb": -3.0, "fadeInMs": 0}, "format": "opus", '
            b'"sourceKey": "%s" }' % src.encode()
        ),
        headers={**headers, "content-type": "application/json"},
    )
    assert again.status_code == 202, again.text
    assert again.json()["jobId"] == first.json()["jobId"]


@pytest.mark.parametrize(
    ("first_path", "first_body", "second_path", "second_body"),
    [
        # another body on the same route
        (PREVIEW, {"recipe": {"gainDb": -3}}, PREVIEW, {"recipe": {"gainDb": -4}}),
        (PREVIEW, {"recipe": {}}, PREVIEW, {"recipe": {}, "format": "aac"}),
        (SAVE, {"format": "mp3"}, SAVE, {"format": "mp3", "filename": "other"}),
        (
            INGEST,
            {"source": "url", "url": "https://a.example/x.mp3"},
            INGEST,
            {"source": "url", "url": "https://a.example/y.mp3"},
        ),
        # the same key on another route (a preview POST used to get the save job)
        (SAVE, {"format": "wav"}, PREVIEW, {"recipe": {}}),
        (PREVIEW, {"recipe": {}}, SAVE, {"format": "wav"}),
        (INGEST, {"source": "url", "url": "https://a.example/x.mp3"}, PREVIEW, {"recipe": {}}),
        (PREVIEW, {"recipe": {}}, INGEST, {"source": "url", "url": "https://a.example/x.mp3"}),
    ],
)
async def test_reused_key_with_another_request_is_refused(
    idle_api: IdleApi,
    first_path: str,
    first_body: dict[str, Any],
    second_path: str,
    second_body: dict[str, Any],
) -> None:
    src = idle_api.put_source("sources/01IDEMREUSED00000000000000/a.wav")
    headers = key(f"reuse-{first_path}-{first_body}-{second_path}-{second_body}")

    def body(path: str, doc: dict[str, Any]) -> dict[str, Any]:
        return doc if path == INGEST else {"sourceKey": src, **doc}

    first = await post(idle_api, first_path, body(first_path, first_body), headers)
    assert first.status_code == 202, first.text
    second = await post(idle_api, second_path, body(second_path, second_body), headers)
    assert second.status_code == 422, second.text
    assert problem_of(second)["code"] == "idempotency_key_reused"
    # The first request still replays to its job.
    third = await post(idle_api, first_path, body(first_path, first_body), headers)
    assert third.status_code == 202 and third.json()["jobId"] == first.json()["jobId"]


async def test_reused_key_on_upload_compares_the_file(idle_api: IdleApi) -> None:
    headers = key("upload")

    async def upload(name: str, data: bytes) -> httpx.Response:
        files = {"file": (name, data, "audio/wav")}
        return await idle_api.client.post(INGEST, files=files, headers=headers)

    first = await upload("a.wav", b"RIFF-first-file")
    assert first.status_code == 202, first.text
    same = await upload("a.wav", b"RIFF-first-file")
    assert same.status_code == 202 and same.json()["jobId"] == first.json()["jobId"]
    for name, data in [("a.wav", b"RIFF-other-file"), ("b.wav", b"RIFF-first-file")]:
        other = await upload(name, data)
        assert other.status_code == 422, other.text
        assert problem_of(other)["code"] == "idempotency_key_reused"
    url = await post(idle_api, INGEST, {"source": "url", "url": "https://a.example/a"}, headers)
    assert url.status_code == 422 and problem_of(url)["code"] == "idempotency_key_reused"
    # A replay is hashed, not stored: the job's one upload is the only file under its id.
    job_dir = Path(idle_api.settings.data_dir) / "storage" / "uploads" / first.json()["jobId"]
    assert [p.name for p in job_dir.iterdir()] == ["a.wav"]
    assert (job_dir / "a.wav").read_bytes() == b"RIFF-first-file"


async def test_concurrent_requests_with_one_key_and_two_bodies(idle_api: IdleApi) -> None:
    """Racing each other inside the dedupe window: one job, the other request refused."""
    src = idle_api.put_source("sources/01IDEMRACE0000000000000000/a.wav")
    for attempt in range(5):
        headers = key(f"race-{attempt}")

        def send(
            gain: int, headers: dict[str, str] = headers
        ) -> Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]:
            body = {"sourceKey": src, "recipe": {"gainDb": gain}, "format": "wav"}
            return lambda client: client.post(SAVE, json=body, headers=headers)

        answers = await concurrently(idle_api, *(send(-g) for g in range(1, 5)))
        statuses = sorted(a.status_code for a in answers)
        assert statuses == [202, 422, 422, 422], [a.text for a in answers]
        assert {a.json()["code"] for a in answers if a.status_code == 422} == {
            "idempotency_key_reused"
        }


async def test_same_request_after_the_dedupe_window_is_the_same_job(idle_api: IdleApi) -> None:
    src = idle_api.put_source("sources/01IDEMLATER000000000000000/a.wav")
    headers = key("later")
    body = {"sourceKey": src, "recipe": {"fadeInMs": 10}, "format": "flac"}
    first = await post(idle_api, SAVE, body, headers)
    assert first.status_code == 202, first.text
    await asyncio.sleep(DEDUPE_WINDOW_S + 0.5)
    again = await post(idle_api, SAVE, body, headers)
    assert again.status_code == 202 and again.json()["jobId"] == first.json()["jobId"]
    other = await post(idle_api, SAVE, {**body, "format": "mp3"}, headers)
    assert other.status_code == 422 and problem_of(other)["code"] == "idempotency_key_reused"


async def test_key_of_a_preview_that_joined_another_job(idle_api: IdleApi) -> None:
    """A preview that joined an identical render in flight remembers the job and its body."""
    src = idle_api.put_source("sources/01IDEMJOINED00000000000000/a.wav")
    body = {"sourceKey": src, "recipe": {"fadeOutMs": 123}}
    owner = await post(idle_api, PREVIEW, body, key("joined-owner"))
    assert owner.status_code == 202, owner.text
    headers = key("joined-joiner")
    joiner = await post(idle_api, PREVIEW, body, headers)
    assert joiner.json()["jobId"] == owner.json()["jobId"]  # joined (nobody renders here)
    again = await post(idle_api, PREVIEW, body, headers)
    assert again.status_code == 202 and again.json()["jobId"] == owner.json()["jobId"]
    for path, other in [
        (PREVIEW, {**body, "recipe": {"fadeOutMs": 124}}),
        (SAVE, {**body, "format": "wav"}),
        (INGEST, {"source": "url", "url": "https://a.example/a"}),
    ]:
        resp = await post(idle_api, path, other, headers)
        assert resp.status_code == 422, (path, resp.text)
        assert problem_of(resp)["code"] == "idempotency_key_reused"


# ---- bug 8: a trim past the end is refused when the API knows the duration ---------------------


async def test_trim_past_the_end_without_an_ingest_view_is_accepted(idle_api: IdleApi) -> None:
    """No ingest job behind the key (its view is what knows the duration): accepted as before.
    (With a view it is a 422: tests/e2e/test_api_edit.py, on a real ingest.)"""
    src = idle_api.put_source("sources/01IDEMNOVIEW00000000000000/a.wav")
    body = {"sourceKey": src, "recipe": {"trim": {"startMs": 3_600_000}}}
    resp = await post(idle_api, PREVIEW, body, {})
    assert resp.status_code == 202, resp.text
