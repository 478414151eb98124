"""Job events over SSE (resume, live), signed downloads, and the OpenAPI document."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from audioprep.domain.events import JobCompleted, JobProgressed, JobResult, JobStarted
from audioprep.services.api.openapi import OPERATIONS
from audioprep.services.api.routes.job_events import follow_job
from audioprep.services.api.url_check import YOUTUBE_HOSTS
from audioprep.shared import signing
from audioprep.shared.event_store import EventStore, StoredEvent
from audioprep.shared.ids import new_job_id
from audioprep.shared.names import Names
from tests.conftest import Stack
from tests.e2e.test_api_support import (
    history,
    in_app_loop,
    ingest_source,
    parse_sse,
    path_of,
    upload,
)
from tests.jobs_helpers import wait_for_job
from tests.media import write_tone

NAMES = Names()  # the default prefix: what `audioprep up` uses


@pytest.fixture(scope="module")
async def finished_job(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> str:
    wav = write_tone(tmp_path_factory.mktemp("sse") / "sse.wav", seconds=2.0)
    job_id = await upload(stack, wav)
    assert (await wait_for_job(stack.client, job_id))["status"] == "completed"
    return job_id


@pytest.fixture(scope="module")
async def saved_view(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    wav = write_tone(tmp_path_factory.mktemp("dl") / "dl.wav", seconds=2.0)
    source_key = await ingest_source(stack, wav)
    resp = await stack.client.post(
        "/api/audio/edit/save", json={"sourceKey": source_key, "format": "wav"}
    )
    view = await wait_for_job(stack.client, resp.json()["jobId"])
    assert view["status"] == "completed", view
    return {"key": view["result"]["preparedKey"], "url": view["downloadUrl"]}


async def test_sse_replays_every_event_then_ends(stack: Stack, finished_job: str) -> None:
    resp = await stack.client.get(f"/api/audio/jobs/{finished_job}/events")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    messages = parse_sse(resp.text)
    stored = await history(stack, finished_job)
    assert [int(m["id"]) for m in messages] == [s.seq for s in stored]
    assert [m["event"] for m in messages] == [type(s.event).__name__ for s in stored]
    assert messages[0]["event"] == "JobRequested"
    assert messages[-1]["event"] == "JobCompleted"
    last = json.loads(messages[-1]["data"])
    assert last["type"] == "JobCompleted" and last["jobId"] == finished_job


async def test_sse_resumes_after_last_event_id(stack: Stack, finished_job: str) -> None:
    stored = await history(stack, finished_job)
    after = stored[1].seq
    resp = await stack.client.get(
        f"/api/audio/jobs/{finished_job}/events", headers={"Last-Event-ID": str(after)}
    )
    ids = [int(m["id"]) for m in parse_sse(resp.text)]
    assert ids == [s.seq for s in stored if s.seq > after]
    # The query parameter does the same (EventSource can't set headers on a first connect).
    resp = await stack.client.get(f"/api/audio/jobs/{finished_job}/events?lastEventId={after}")
    assert [int(m["id"]) for m in parse_sse(resp.text)] == ids
    # Resuming after the terminal event: nothing left, the stream just ends.
    resp = await stack.client.get(
        f"/api/audio/jobs/{finished_job}/events", headers={"Last-Event-ID": str(stored[-1].seq)}
    )
    assert resp.status_code == 200 and parse_sse(resp.text) == []


async def test_sse_follows_a_live_job_to_its_end(stack: Stack, tmp_path: Path) -> None:
    wav = write_tone(tmp_path / "live.wav", seconds=2.0)
    job_id = await upload(stack, wav)

    async def follow(client: httpx.AsyncClient) -> httpx.Response:
        return await client.get(f"/api/audio/jobs/{job_id}/events")

    resp = await in_app_loop(stack, follow)  # opened while the job is pending
    messages = parse_sse(resp.text)
    assert messages[0]["event"] == "JobRequested"
    assert messages[-1]["event"] == "JobCompleted"
    assert [int(m["id"]) for m in messages] == [s.seq for s in await history(stack, job_id)]


async def _stray_job(stack: Stack) -> tuple[EventStore, str]:
    """A job with a JobStarted but no JobRequested: no worker takes it, the projector skips it."""
    store = EventStore(stack.nc, stack.nc.jetstream(), NAMES)
    job_id = new_job_id()
    await store.append(JobStarted(job_id=job_id, kind="ingest", worker="test"))
    return store, job_id


async def _finish(store: EventStore, job_id: str) -> None:
    for progress in (10, 60):
        await store.append(JobProgressed(job_id=job_id, kind="ingest", progress=progress))
    await store.append(JobCompleted(job_id=job_id, kind="ingest", result=JobResult()))


async def test_follow_without_wake_ups_still_reaches_the_end(stack: Stack) -> None:
    """A missed wake-up can't hang a stream: the periodic re-check reads what is new."""
    store, job_id = await _stray_job(stack)
    never = asyncio.Event()
    got: list[StoredEvent | None] = []
    async with asyncio.timeout(20):
        async for item in follow_job(store, job_id, 0, never, recheck_s=0.05, keepalive_s=0.0):
            if item is None and not got.count(None):
                await _finish(store, job_id)  # happens while the follower is idle
            got.append(item)
    stored = await store.history(job_id)
    assert [s.seq for s in got if s is not None] == [s.seq for s in stored]
    assert isinstance(got[-1], StoredEvent) and got[-1].event.name == "completed"
    assert got[1] is None  # idle after the history: a keep-alive comes before anything else


async def test_follow_is_woken_by_new_events(stack: Stack) -> None:
    """The core subscription wakes the follower: no re-check needed (it is set to an hour)."""
    store, job_id = await _stray_job(stack)
    seqs: list[int] = []
    finishing: asyncio.Task[None] | None = None
    async with (
        asyncio.timeout(20),
        store.wake_ups(job_id) as wake,
    ):
        async for item in follow_job(store, job_id, 0, wake, recheck_s=3600, keepalive_s=3600):
            assert item is not None
            seqs.append(item.seq)
            if finishing is None:  # the history is read: what follows must come by wake-ups
                finishing = asyncio.create_task(_finish(store, job_id))
        assert finishing is not None
        await finishing
    assert seqs == [s.seq for s in await store.history(job_id)]
    assert len(seqs) == 4


async def test_sse_bad_requests(stack: Stack, finished_job: str) -> None:
    resp = await stack.client.get(
        f"/api/audio/jobs/{finished_job}/events", headers={"Last-Event-ID": "abc"}
    )
    assert resp.status_code == 400 and resp.json()["code"] == "invalid_last_event_id"
    resp = await stack.client.get("/api/audio/jobs/01ZZZZZZZZZZZZZZZZZZZZZZZZ/events")
    assert resp.status_code == 404 and resp.json()["code"] == "job_not_found"


async def test_cancel_of_a_finished_job_is_a_noop(stack: Stack, finished_job: str) -> None:
    before = await history(stack, finished_job)
    resp = await stack.client.post(f"/api/audio/jobs/{finished_job}/cancel")
    assert resp.status_code == 200
    assert resp.json()["status"] == "completed"
    assert len(await history(stack, finished_job)) == len(before)


async def test_signed_download_works_and_supports_range(
    stack: Stack, saved_view: dict[str, str]
) -> None:
    url = path_of(saved_view["url"])
    resp = await stack.client.get(url)
    assert resp.status_code == 200 and resp.headers["content-type"] == "audio/wav"
    part = await stack.client.get(url, headers={"Range": "bytes=0-43"})
    assert part.status_code == 206 and part.content == resp.content[:44]
    assert part.content[:4] == b"RIFF"


def _tampered(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query.update(changes)
    for name, value in list(query.items()):
        if value == "":
            del query[name]
    return f"{parts.path}?{urlencode(query)}"


async def test_signed_download_refuses_any_tampering(
    stack: Stack, saved_view: dict[str, str]
) -> None:
    url = saved_view["url"]
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    other_key = saved_view["key"].replace(".wav", ".flac")
    cases = {
        "other key": _tampered(url, key=other_key),
        "later expiry": _tampered(url, expires=str(int(query["expires"]) + 3600)),
        "flipped signature": _tampered(
            url, sig=query["sig"][:-1] + ("A" if query["sig"][-1] != "A" else "B")
        ),
        "no signature": _tampered(url, sig=""),
        "no expiry": _tampered(url, expires=""),
        "junk expiry": _tampered(url, expires="soon"),
        "path escape": _tampered(url, key="../../etc/passwd"),
        "other tenant": _tampered(url, key="tenants/evil/" + saved_view["key"]),
    }
    for name, bad in cases.items():
        resp = await stack.client.get(bad)
        assert resp.status_code == 403, (name, resp.text)
        assert resp.headers["content-type"].startswith("application/problem+json")
        assert resp.json()["code"] == "invalid_signature", name


async def test_signed_download_expires(stack: Stack, saved_view: dict[str, str]) -> None:
    secret = stack.settings.signing_secret
    expired = signing.download_url(
        "http://x", secret, saved_view["key"], ttl_s=60, now=time.time() - 3600
    )
    resp = await stack.client.get(path_of(expired))
    assert resp.status_code == 403 and resp.json()["code"] == "link_expired"
    fresh = signing.download_url("http://x", secret, saved_view["key"], ttl_s=60)
    assert (await stack.client.get(path_of(fresh))).status_code == 200


async def test_openapi_documents_every_route(stack: Stack) -> None:
    resp = await stack.client.get("/schema/openapi.json")
    assert resp.status_code == 200
    doc = resp.json()
    paths = doc["paths"]
    for path, method in [
        ("/api/audio/ingest", "post"),
        ("/api/audio/edit/preview", "post"),
        ("/api/audio/edit/save", "post"),
        ("/api/audio/jobs/{job_id}", "get"),
        ("/api/audio/jobs/{job_id}/cancel", "post"),
        ("/api/audio/jobs/{job_id}/events", "get"),
        ("/api/audio/edit/preview/{job_id}/audio", "get"),
        ("/api/storage/download", "get"),
    ]:
        assert method in paths[path], path
        responses = paths[path][method]["responses"]
        problems = [r for code, r in responses.items() if code.startswith("4")]
        assert problems, (path, responses)
        for problem in problems:
            assert "application/problem+json" in problem["content"], (path, problem)
    ingest_body = paths["/api/audio/ingest"]["post"]["requestBody"]["content"]
    assert set(ingest_body) == {"multipart/form-data", "application/json"}
    preview_body = paths["/api/audio/edit/preview"]["post"]["requestBody"]["content"]
    assert "application/json" in preview_body
    schemas = doc["components"]["schemas"]
    assert "Problem" in schemas and "code" in schemas["Problem"]["properties"]


async def test_openapi_tells_the_truth(stack: Stack) -> None:
    """Operation ids and tags for generated clients, real media types, every answer documented
    (the schemathesis run in tests/security/test_schema_fuzz.py checks them against the API)."""
    doc = (await stack.client.get("/schema/openapi.json")).json()
    operations = {
        (method, path): op for path, item in doc["paths"].items() for method, op in item.items()
    }
    assert {op["operationId"] for op in operations.values()} == {
        op_id for op_id, _ in OPERATIONS.values()
    }
    for key, (op_id, tag) in OPERATIONS.items():
        assert operations[key]["operationId"] == op_id and operations[key]["tags"] == [tag], key
    assert {t["name"] for t in doc["tags"]} == {tag for _, tag in OPERATIONS.values()}

    def content(path: str, method: str, status: str) -> set[str]:
        return set(operations[(method, path)]["responses"][status]["content"])

    assert content("/api/audio/jobs/{job_id}/events", "get", "200") == {"text/event-stream"}
    sse = operations[("get", "/api/audio/jobs/{job_id}/events")]["responses"]["200"]
    data = sse["content"]["text/event-stream"]["schema"]["properties"]["data"]
    assert data["contentMediaType"] == "application/json"
    assert {"audio/ogg", "audio/mp4", "application/json"} == content(
        "/api/audio/edit/preview/{job_id}/audio", "get", "200"
    )
    assert {"audio/mpeg", "audio/flac", "audio/wav"} <= content(
        "/api/storage/download", "get", "206"
    )
    cancel = operations[("post", "/api/audio/jobs/{job_id}/cancel")]["responses"]
    assert {"200", "202"} <= set(cancel)
    # Open mode (this stack has no API keys): no security requirement, no 401.
    assert all(op["security"] == [] and "401" not in op["responses"] for op in operations.values())
    # The YouTube rule: the second face of the JSON ingest body, on the hosts the API takes.
    faces = operations[("post", "/api/audio/ingest")]["requestBody"]["content"]["application/json"]
    youtube = next(
        f for f in faces["schema"]["oneOf"] if f["properties"]["source"]["const"] == "youtube"
    )
    pattern = re.compile(youtube["properties"]["url"]["pattern"])
    for host in YOUTUBE_HOSTS:
        assert pattern.match(f"https://{host}/watch?v=x"), host
    for url in [
        "https://example.com/watch?v=x",
        "https://youtube.com.evil.example/x",
        "ftp://youtu.be/x",
    ]:
        assert not pattern.match(url), url
    idempotency = [
        p for p in operations[("post", "/api/audio/edit/save")]["parameters"] if p["in"] == "header"
    ]
    assert [p["name"] for p in idempotency] == ["Idempotency-Key"]
    # Webhooks: the JSON body the handler decodes itself is documented, with its `url`.
    create = operations[("post", "/api/webhooks")]
    body_ref = create["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    body = doc["components"]["schemas"][body_ref.rsplit("/", 1)[1]]
    assert "url" in body["required"] and set(body["properties"]) >= {"url", "events", "kinds"}
    assert {"201", "422"} <= set(create["responses"])
