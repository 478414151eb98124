"""Saved presets: create, list, use, override, update, delete; jobs keep their resolved recipe;
tenants can't see or use each other's presets."""

from __future__ import annotations

from typing import Any

import pytest
from mutagen.id3 import ID3

from audioprep.domain.events import JobRequested
from tests.conftest import Stack
from tests.e2e.test_api_support import history
from tests.jobs_helpers import wait_for_job
from tests.media import write_tone
from tests.publish.conftest import A, B, ingest

PRESET = {
    "name": "weekly-show",
    "recipe": {"normalize": {"preset": "apple-podcasts"}, "fadeInMs": 100},
    "metadata": {"album": "Weekly Show", "artist": "Host", "genre": "Podcast"},
    "format": "mp3",
    "options": {"bitrate": 96},
}


@pytest.fixture(scope="module")
async def source(pub_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> str:
    wav = write_tone(tmp_path_factory.mktemp("presets") / "tone.wav", seconds=3.0)
    return await ingest(pub_stack, wav, A)


async def _requested(stack: Stack, job_id: str) -> JobRequested:
    first = (await history(stack, job_id))[0].event
    assert isinstance(first, JobRequested)
    return first


async def test_preset_lifecycle_and_use(pub_stack: Stack, source: str) -> None:
    c = pub_stack.client
    await c.delete("/api/presets/weekly-show", headers=A)
    resp = await c.post("/api/presets", json=PRESET, headers=A)
    assert resp.status_code == 201, resp.text
    created = resp.json()
    assert created["version"] == 1 and created["format"] == "mp3"
    assert resp.headers["location"] == "/api/presets/weekly-show"
    again = await c.post("/api/presets", json=PRESET, headers=A)
    assert again.status_code == 409 and again.json()["code"] == "preset_exists"

    listed = (await c.get("/api/presets", headers=A)).json()["presets"]
    assert [p["name"] for p in listed] == ["weekly-show"]
    assert (await c.get("/api/presets/weekly-show", headers=A)).json()["metadata"]["album"] == (
        "Weekly Show"
    )

    # use it: the request overrides the title (metadata merged) and the fade (recipe merged)
    body = {
        "sourceKey": source,
        "preset": "weekly-show",
        "recipe": {"fadeInMs": 500},
        "metadata": {"title": "Episode 1", "artist": "Guest Host"},
    }
    resp = await c.post("/api/audio/edit/save", json=body, headers=A)
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["jobId"]
    view = await wait_for_job(c, job_id, headers=A)
    assert view["status"] == "completed", view
    assert view["result"]["format"] == "mp3"
    assert view["result"]["loudnessReport"]["target"]["preset"] == "apple-podcasts"
    requested = await _requested(pub_stack, job_id)
    assert requested.recipe is not None
    assert requested.recipe["fadeInMs"] == 500
    assert requested.recipe["normalize"]["preset"] == "apple-podcasts"
    assert requested.metadata == {
        "title": "Episode 1",
        "artist": "Guest Host",
        "album": "Weekly Show",
        "genre": "Podcast",
    }
    assert requested.options is not None and requested.options["bitrate"] == 96
    assert requested.preset == "weekly-show"
    assert requested.preset_revision == created["revision"]
    path = pub_stack.settings.data_dir / "storage" / view["result"]["preparedKey"]
    tags = ID3(path)
    assert str(tags["TALB"]) == "Weekly Show" and str(tags["TPE1"]) == "Guest Host"

    # update: a new version; the finished job's request is unchanged
    update = {**PRESET, "recipe": {"gainDb": -6}, "format": "opus"}
    del update["name"]
    resp = await c.put("/api/presets/weekly-show", json=update, headers=A)
    assert resp.status_code == 200, resp.text
    assert resp.json()["version"] == 2 and resp.json()["revision"] > created["revision"]
    assert (await _requested(pub_stack, job_id)).recipe == requested.recipe
    assert (await c.get(f"/api/audio/jobs/{job_id}", headers=A)).json() == view | {
        "downloadUrl": (await c.get(f"/api/audio/jobs/{job_id}", headers=A)).json()["downloadUrl"]
    }

    # a preview from the preset takes its recipe but keeps the preview's own format
    resp = await c.post(
        "/api/audio/edit/preview", json={"sourceKey": source, "preset": "weekly-show"}, headers=A
    )
    assert resp.status_code == 202, resp.text
    preview = await _requested(pub_stack, resp.json()["jobId"])
    assert preview.recipe is not None and preview.recipe["gainDb"] == -6
    assert preview.format == "opus"

    # delete
    assert (await c.delete("/api/presets/weekly-show", headers=A)).status_code == 204
    assert (await c.get("/api/presets/weekly-show", headers=A)).status_code == 404
    gone = await c.post(
        "/api/audio/edit/save", json={"sourceKey": source, "preset": "weekly-show"}, headers=A
    )
    assert gone.status_code == 404 and gone.json()["code"] == "preset_not_found"
    assert gone.json()["field"] == "preset"
    # PUT on a missing preset creates it
    resp = await c.put("/api/presets/weekly-show", json={"format": "flac"}, headers=A)
    assert resp.status_code == 201 and resp.json()["version"] == 1


async def test_another_tenant_cannot_see_or_use_a_preset(pub_stack: Stack, source: str) -> None:
    c = pub_stack.client
    await c.delete("/api/presets/private", headers=A)
    assert (await c.post("/api/presets", json={"name": "private"}, headers=A)).status_code == 201
    assert (await c.get("/api/presets/private", headers=B)).status_code == 404
    assert "private" not in [
        p["name"] for p in (await c.get("/api/presets", headers=B)).json()["presets"]
    ]
    assert (await c.delete("/api/presets/private", headers=B)).status_code == 404
    resp = await c.post(
        "/api/audio/edit/preview", json={"sourceKey": source, "preset": "private"}, headers=B
    )
    assert resp.status_code == 404 and resp.json()["code"] == "preset_not_found"
    # B may have its own preset of the same name
    await c.delete("/api/presets/private", headers=B)
    assert (await c.post("/api/presets", json={"name": "private"}, headers=B)).status_code == 201
    assert (await c.get("/api/presets/private", headers=A)).status_code == 200


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        ({"name": "bad name"}, "validation_error", "name"),
        ({"name": "a.b"}, "validation_error", "name"),
        ({"name": "x", "recipe": {"speed": 9}}, "invalid_recipe", "recipe.speed"),
        (
            {"name": "x", "recipe": {"trim": {"startMs": 5, "endMs": 1}}},
            "invalid_recipe",
            "recipe.trim.endMs",
        ),
        ({"name": "x", "format": "wma"}, "validation_error", "format"),
        ({"name": "x", "metadata": {"track": -1}}, "validation_error", "metadata.track"),
        ({"name": "x", "extra": 1}, "validation_error", None),
    ],
)
async def test_bad_presets_are_refused(
    pub_stack: Stack, body: dict[str, Any], code: str, field: str | None
) -> None:
    resp = await pub_stack.client.post("/api/presets", json=body, headers=A)
    assert resp.status_code == 422, resp.text
    assert resp.json()["code"] == code
    if field is not None:
        assert resp.json()["field"] == field


async def test_bad_preset_reference(pub_stack: Stack, source: str) -> None:
    for preset in ("no such", 3, "missing"):
        resp = await pub_stack.client.post(
            "/api/audio/edit/save",
            json={"sourceKey": source, "format": "mp3", "preset": preset},
            headers=A,
        )
        assert resp.status_code in (404, 422), resp.text
        assert resp.json()["field"] == "preset"


async def test_a_presets_intro_and_outro_are_checked_like_a_saves(
    pub_stack: Stack, source: str
) -> None:
    """An intro/outro must be a safe key of a source this tenant ingested, at once (not only
    when a save uses the preset); another tenant's source looks exactly like a missing one."""
    c = pub_stack.client
    cases = [
        ({"intro": {"sourceKey": "../etc/passwd"}}, 422, "invalid_source_key", "intro"),
        ({"outro": {"sourceKey": "sources/none/jingle.wav"}}, 404, "outro_not_found", "outro"),
    ]
    for recipe, status, code, which in cases:
        for resp in (
            await c.post("/api/presets", json={"name": "jingled", "recipe": recipe}, headers=A),
            await c.put("/api/presets/jingled", json={"recipe": recipe}, headers=A),
        ):
            assert resp.status_code == status, resp.text
            assert resp.json()["code"] == code
            assert resp.json()["field"] == f"recipe.{which}.sourceKey"
    theirs = await c.post(
        "/api/presets",
        json={"name": "jingled", "recipe": {"outro": {"sourceKey": source}}},
        headers=B,
    )
    assert theirs.status_code == 404 and theirs.json()["code"] == "outro_not_found", theirs.text
    mine = await c.post(
        "/api/presets",
        json={"name": "jingled", "recipe": {"outro": {"sourceKey": source}}},
        headers=A,
    )
    assert mine.status_code == 201, mine.text
    assert (await c.delete("/api/presets/jingled", headers=A)).status_code == 204
