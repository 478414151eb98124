"""Preview (render cache, coalescing), save, playing a preview with Range, signed downloads."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Stack
from tests.e2e.test_api_support import (
    event_types,
    history,
    in_app_loop,
    ingest_source,
    local_path,
    path_of,
    wait_consumer_past,
)
from tests.jobs_helpers import wait_for_job
from tests.media import measure_duration_s, stream_info, write_tone


@pytest.fixture(scope="module")
async def source_key(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> str:
    wav = write_tone(tmp_path_factory.mktemp("edit") / "tone.wav", seconds=4.0, freq=440.0)
    return await ingest_source(stack, wav)


@pytest.fixture(scope="module")
async def long_source_key(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Long enough that a normalized render takes a while (coalescing window)."""
    wav = write_tone(tmp_path_factory.mktemp("edit-long") / "long.wav", seconds=120.0)
    return await ingest_source(stack, wav)


async def _preview(stack: Stack, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    resp = await stack.client.post("/api/audio/edit/preview", json=body, headers=headers)
    assert resp.status_code == 202, resp.text
    return dict(resp.json())


async def test_preview_miss_renders_then_hit_answers_from_cache(
    stack: Stack, source_key: str
) -> None:
    body = {"sourceKey": source_key, "recipe": {"trim": {"startMs": 500, "endMs": 3000}}}
    first = await _preview(stack, body)
    assert first["status"] == "pending"
    view = await wait_for_job(stack.client, first["jobId"])
    assert view["status"] == "completed", view
    result = view["result"]
    assert result["previewKey"].startswith("previews/") and result["previewKey"].endswith(".opus")
    assert not result.get("fromCache")
    rendered = local_path(stack, result["previewKey"])
    assert abs(measure_duration_s(rendered) - 2.5) < 0.05
    assert stream_info(rendered)[0] == "opus"
    assert path_of(view["downloadUrl"]).startswith("/api/storage/download?")

    # Same recipe spelled differently (defaults written out): same cache key → hit.
    body2 = {
        "sourceKey": source_key,
        "recipe": {"trim": {"endMs": 3000, "startMs": 500}, "gainDb": 0, "speed": 1.0},
        "format": "opus",
    }
    second = await _preview(stack, body2)
    assert second["status"] == "completed"
    hit = (await stack.client.get(f"/api/audio/jobs/{second['jobId']}")).json()
    assert hit["status"] == "completed"
    assert hit["result"]["fromCache"] is True
    assert hit["result"]["previewKey"] == result["previewKey"]
    # same result shape as the render (issue 15 bug 7): facts and loudness report included
    for field in ("durationMs", "sampleRate", "channels", "codec", "format", "loudnessReport"):
        assert hit["result"][field] == result[field], field
    assert "downloadUrl" in hit
    # Zero worker work: once the preview consumer has acked past this job's request, the
    # job still has exactly its two events.
    events = await history(stack, second["jobId"])
    # (fair dispatch: once the dispatcher has folded the JobCompleted, nothing releases it)
    past = events[-1].seq if stack.settings.dispatch == "fair" else events[0].seq
    await wait_consumer_past(stack, "preview", past)
    assert await event_types(stack, second["jobId"]) == ["JobRequested", "JobCompleted"]


async def test_identical_previews_in_flight_are_coalesced(
    stack: Stack, long_source_key: str
) -> None:
    body = {
        "sourceKey": long_source_key,
        "recipe": {"normalize": {"targetLufs": -18}, "fadeInMs": 250},
        "format": "aac",
    }

    async def three_at_once(client: httpx.AsyncClient) -> list[httpx.Response]:
        url = "/api/audio/edit/preview"
        return list(await asyncio.gather(*(client.post(url, json=body) for _ in range(3))))

    responses = await in_app_loop(stack, three_at_once)
    assert all(r.status_code == 202 for r in responses), [r.text for r in responses]
    answers = [r.json() for r in responses]
    ids = {a["jobId"] for a in answers}
    assert len(ids) == 1, answers
    job_id = ids.pop()
    view = await wait_for_job(stack.client, job_id)
    assert view["status"] == "completed", view
    assert view["result"]["previewKey"].endswith(".m4a")
    assert (await event_types(stack, job_id)).count("JobStarted") == 1
    later = await _preview(stack, body)  # after completion: a cache hit, a new job
    assert later["jobId"] != job_id and later["status"] == "completed"


async def test_preview_idempotency_key_returns_the_same_job(stack: Stack, source_key: str) -> None:
    body = {"sourceKey": source_key, "recipe": {"gainDb": -6}}
    a = await _preview(stack, body, **{"Idempotency-Key": "preview-idem-1"})
    b = await _preview(stack, body, **{"Idempotency-Key": "preview-idem-1"})
    assert a["jobId"] == b["jobId"]
    assert (await wait_for_job(stack.client, a["jobId"]))["status"] == "completed"
    # Another key, same preview: a cache hit, i.e. a new (already completed) job ...
    c = await _preview(stack, body, **{"Idempotency-Key": "preview-idem-2"})
    assert c["jobId"] != a["jobId"] and c["status"] == "completed"
    # ... which a retry with that key answers again, unchanged.
    d = await _preview(stack, body, **{"Idempotency-Key": "preview-idem-2"})
    assert d == c
    assert await event_types(stack, c["jobId"]) == ["JobRequested", "JobCompleted"]


async def test_save_flac_with_filename_and_download(stack: Stack, source_key: str) -> None:
    body = {
        "sourceKey": source_key,
        "recipe": {"trim": {"startMs": 1000}, "channels": "mono", "sampleRate": 22050},
        "format": "flac",
        "filename": "My Mix (final).flac",
    }
    headers = {"Idempotency-Key": "save-1"}
    resp = await stack.client.post("/api/audio/edit/save", json=body, headers=headers)
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["jobId"]
    again = await stack.client.post("/api/audio/edit/save", json=body, headers=headers)
    assert again.json()["jobId"] == job_id
    view = await wait_for_job(stack.client, job_id)
    assert view["status"] == "completed", view
    key = view["result"]["preparedKey"]
    assert key == f"prepared/{job_id}/My_Mix_final.flac"
    dl = await stack.client.get(path_of(view["downloadUrl"]))
    assert dl.status_code == 200
    assert dl.headers["content-type"] == "audio/flac"
    assert "My_Mix_final.flac" in dl.headers["content-disposition"]
    out = Path(local_path(stack, key))
    assert dl.content == out.read_bytes()
    assert abs(measure_duration_s(out) - 3.0) < 0.02
    assert stream_info(out)[1:] == (22050, 1)


async def test_preview_audio_serves_ranges(stack: Stack, source_key: str) -> None:
    first = await _preview(stack, {"sourceKey": source_key, "recipe": {"fadeOutMs": 500}})
    view = await wait_for_job(stack.client, first["jobId"])
    assert view["status"] == "completed", view
    url = f"/api/audio/edit/preview/{first['jobId']}/audio"
    whole = await stack.client.get(url)
    assert whole.status_code == 200
    assert whole.headers["content-type"] == "audio/ogg"
    assert whole.headers["accept-ranges"] == "bytes"
    size = len(whole.content)
    assert whole.content == local_path(stack, view["result"]["previewKey"]).read_bytes()

    part = await stack.client.get(url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 100-199/{size}"
    assert part.content == whole.content[100:200]

    tail = await stack.client.get(url, headers={"Range": "bytes=-64"})
    assert tail.status_code == 206 and tail.content == whole.content[-64:]
    open_end = await stack.client.get(url, headers={"Range": f"bytes={size - 10}-"})
    assert open_end.status_code == 206 and open_end.content == whole.content[-10:]

    past = await stack.client.get(url, headers={"Range": f"bytes={size + 5}-"})
    assert past.status_code == 416
    assert past.headers["content-range"] == f"bytes */{size}"
    assert past.json()["code"] == "range_not_satisfiable"

    junk = await stack.client.get(url, headers={"Range": "pages=1-2"})
    assert junk.status_code == 200 and len(junk.content) == size


async def test_preview_audio_of_other_jobs(stack: Stack, source_key: str) -> None:
    ingest_job = source_key.split("/")[1]
    resp = await stack.client.get(f"/api/audio/edit/preview/{ingest_job}/audio")
    assert resp.status_code == 404 and resp.json()["code"] == "not_a_preview"
    resp = await stack.client.get("/api/audio/edit/preview/01ZZZZZZZZZZZZZZZZZZZZZZZZ/audio")
    assert resp.status_code == 404 and resp.json()["code"] == "job_not_found"


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        ({"recipe": {}}, 422, "validation_error", "sourceKey"),
        ({"recipe": {"gainDb": 99}}, 422, "invalid_recipe", "recipe.gainDb"),
        (
            {"recipe": {"trim": {"startMs": 2000, "endMs": 1000}}},
            422,
            "invalid_recipe",
            "recipe.trim.endMs",
        ),
        ({"recipe": {"sampleRate": 12345}}, 422, "invalid_recipe", "recipe.sampleRate"),
        ({"recipe": {"speed": 3}}, 422, "invalid_recipe", "recipe.speed"),
        ({"recipe": {"echo": True}}, 422, "invalid_recipe", "recipe"),
        ({"recipe": {}, "format": "mp3"}, 422, "validation_error", "format"),
        ({"recipe": {}, "sourceKey": "../etc/passwd"}, 422, "invalid_source_key", "sourceKey"),
        ({"recipe": {}, "sourceKey": "sources/nope/x.wav"}, 404, "source_not_found", "sourceKey"),
        (
            {"recipe": {}, "sourceKey": "tenants/other/sources/j/x.wav"},
            404,
            "source_not_found",
            "sourceKey",
        ),
    ],
)
async def test_preview_bad_input_is_a_problem(
    stack: Stack, source_key: str, body: dict[str, Any], status: int, code: str, field: str
) -> None:
    payload = {"sourceKey": source_key, **body} if "sourceKey" not in body else body
    if body == {"recipe": {}}:
        payload = body
    resp = await stack.client.post("/api/audio/edit/preview", json=payload)
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    problem = resp.json()
    assert problem["code"] == code, problem
    assert problem.get("field") == field, problem


@pytest.mark.parametrize(
    ("route", "trim"),
    [
        ("preview", {"startMs": 4000}),
        ("preview", {"startMs": 4000, "endMs": 5000}),
        ("save", {"startMs": 4001}),
        ("save", {"startMs": 60_000, "endMs": 61_000}),
    ],
)
async def test_trim_past_the_end_of_the_source_is_refused_at_once(
    stack: Stack, source_key: str, route: str, trim: dict[str, int]
) -> None:
    """The 4 s source's ingest measured 4000 ms: a trim starting there is a 422, not a job."""
    body: dict[str, Any] = {"sourceKey": source_key, "recipe": {"trim": trim}}
    if route == "save":
        body["format"] = "wav"
    resp = await stack.client.post(f"/api/audio/edit/{route}", json=body)
    assert resp.status_code == 422, resp.text
    problem = resp.json()
    assert problem["code"] == "invalid_recipe" and problem["field"] == "recipe.trim.startMs"
    assert problem["sourceDurationMs"] == 4000
    assert "past the end" in problem["detail"]


async def test_trim_ending_past_the_end_of_the_source_is_fine(
    stack: Stack, source_key: str
) -> None:
    body = {"sourceKey": source_key, "recipe": {"trim": {"startMs": 3500, "endMs": 9000}}}
    resp = await stack.client.post("/api/audio/edit/save", json={**body, "format": "wav"})
    assert resp.status_code == 202, resp.text
    view = await wait_for_job(stack.client, resp.json()["jobId"])
    assert view["status"] == "completed", view
    out = local_path(stack, view["result"]["preparedKey"])
    assert abs(measure_duration_s(out) - 0.5) < 0.02


async def test_save_bad_input_is_a_problem(stack: Stack, source_key: str) -> None:
    resp = await stack.client.post(
        "/api/audio/edit/save", json={"sourceKey": source_key, "format": "ogg"}
    )
    assert resp.status_code == 422 and resp.json()["field"] == "format"
    resp = await stack.client.post(
        "/api/audio/edit/save",
        json={"sourceKey": source_key, "format": "mp3", "options": {"bitrate": 5}},
    )
    assert resp.status_code == 422 and resp.json()["field"] == "options.bitrate"
    resp = await stack.client.post(
        "/api/audio/edit/save",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert resp.status_code == 400 and resp.json()["code"] == "malformed_json"
