"""Intro and outro around the episode, end to end: lengths, loudness-matched parts, no click at
the joins, the whole output normalised, chapters after the intro, previews play them too, and
sources of another tenant (or none) refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from audioprep.domain.events import JobRequested
from audioprep.shared.event_store import EventStore
from audioprep.shared.ids import new_job_id
from tests import media, speech
from tests.conftest import Stack
from tests.jobs_helpers import wait_for_job
from tests.publish.conftest import TENANT_A, A, B, ffprobe, ingest

INTRO_S, OUTRO_S = 4.0, 5.0
INTRO_FADE, OUTRO_FADE = 1500, 2500


def _jingle(seconds: float, *, peak_dbfs: float, rate: int = 44100) -> np.ndarray:
    """A C major chord with a tremolo, a 50 ms attack and no release."""
    t = np.arange(round(seconds * rate)) / rate
    chord = sum(np.sin(2 * np.pi * f * t + k) for k, f in enumerate((262.0, 330.0, 392.0, 523.0)))
    pcm = chord * (0.8 + 0.2 * np.sin(2 * np.pi * 3 * t)) * np.minimum(1.0, t / 0.05)
    stereo = np.stack([pcm, np.roll(pcm, 17)]).astype(np.float32)
    return speech.scale_to_peak(stereo, peak_dbfs)


@pytest.fixture(scope="module")
async def sources(pub_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Speech (48 kHz stereo) as the episode; tonal jingles at 44.1 kHz that stop at full
    swing (a butt join would click) as intro (quiet: −20 dB peak) and outro (hot: −0.5 dB),
    so matching has work to do both ways."""
    speech.require_espeak()
    root = tmp_path_factory.mktemp("intro-outro")
    episode = speech.make_material("studio", root / "episode")
    intro_pcm = _jingle(INTRO_S, peak_dbfs=-20.0)
    outro_pcm = _jingle(OUTRO_S, peak_dbfs=-0.5)
    intro = media.write_samples(root / "intro.wav", intro_pcm, rate=44100)
    outro = media.write_samples(root / "outro.flac", outro_pcm, rate=44100)
    return {
        "episode": await ingest(pub_stack, episode.path, A),
        "episode_s": media.measure_duration_s(episode.path),
        "intro": await ingest(pub_stack, intro, A),
        "outro": await ingest(pub_stack, outro, A),
        "intro_b": await ingest(pub_stack, intro, B),
    }


def _recipe(sources: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "intro": {"sourceKey": sources["intro"], "crossfadeMs": INTRO_FADE},
        "outro": {"sourceKey": sources["outro"], "crossfadeMs": OUTRO_FADE},
        **extra,
    }


async def _job(stack: Stack, route: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = await stack.client.post(route, json=body, headers=A)
    assert resp.status_code == 202, resp.text
    view = await wait_for_job(stack.client, resp.json()["jobId"], headers=A, timeout=120)
    assert view["status"] == "completed", view
    return view


def _max_step(pcm: np.ndarray) -> float:
    return float(np.abs(np.diff(pcm, axis=1)).max()) if pcm.shape[1] > 1 else 0.0


async def test_intro_and_outro_are_matched_joined_and_normalised(
    pub_stack: Stack, sources: dict[str, Any]
) -> None:
    body = {
        "sourceKey": sources["episode"],
        "recipe": _recipe(sources, normalize={"preset": "apple-podcasts"}),
        "format": "wav",
        "chapters": [{"startMs": 0, "title": "Hello"}, {"startMs": 6000, "title": "Topic"}],
    }
    view = await _job(pub_stack, "/api/audio/edit/save", body)
    result = view["result"]
    path = pub_stack.settings.data_dir / "storage" / result["preparedKey"]
    expected_s = INTRO_S + sources["episode_s"] + OUTRO_S - (INTRO_FADE + OUTRO_FADE) / 1000
    assert abs(media.measure_duration_s(path) - expected_s) <= 0.02
    assert abs(result["durationMs"] / 1000 - expected_s) <= 0.02

    intro, episode, outro = result["parts"]
    assert [p["part"] for p in (intro, episode, outro)] == ["intro", "episode", "outro"]
    assert intro["sourceKey"] == sources["intro"] and outro["sourceKey"] == sources["outro"]
    assert episode["startMs"] == round(INTRO_S * 1000) - INTRO_FADE
    assert (episode["crossfadeMs"], outro["crossfadeMs"]) == (INTRO_FADE, OUTRO_FADE)
    assert intro["gainDb"] > 3 and outro["gainDb"] < -1  # quiet intro up, hot outro down
    louds = [p["integratedLufs"] for p in (intro, episode, outro)]
    assert max(louds) - min(louds) <= 1.0, louds  # before the final normalisation

    # the whole output is normalised as one programme
    assert abs(media.integrated_lufs(path) + 16.0) <= 0.5
    assert result["loudnessReport"]["after"]["truePeakDb"] <= -1.0

    # no click: the largest step around each join is within what the material itself has
    pcm, rate = media.decode_pcm(path)
    joins = [
        (episode["startMs"], episode["startMs"] + INTRO_FADE),
        (outro["startMs"], outro["startMs"] + OUTRO_FADE),
    ]
    near = np.zeros(pcm.shape[1], dtype=bool)
    for a, b in joins:
        near[max(0, int((a - 20) * rate / 1000)) : int((b + 20) * rate / 1000)] = True
    material = _max_step(pcm[:, ~near])
    steps = []
    for a, b in joins:
        window = pcm[:, int((a - 20) * rate / 1000) : int((b + 20) * rate / 1000)]
        steps.append(_max_step(window))
        assert steps[-1] <= material, (a, b, steps[-1], material)
    print(f"\nparts LUFS {louds}; max step at the joins {steps}, elsewhere {material:.4f}")

    # chapters (source times) start after the intro, less its crossfade
    chapters = pytest.importorskip("mutagen.wave").WAVE(path).tags.getall("CHAP")
    by_start = sorted((c.start_time, str(c.sub_frames["TIT2"])) for c in chapters)
    assert by_start == [
        (0, "Intro"),  # so no player shows the intro as part of the first chapter
        (episode["startMs"], "Hello"),
        (episode["startMs"] + 6000, "Topic"),
    ]
    assert max(c.end_time for c in chapters) == result["durationMs"]


async def test_a_preview_plays_intro_and_outro(pub_stack: Stack, sources: dict[str, Any]) -> None:
    body = {"sourceKey": sources["episode"], "recipe": _recipe(sources, trim={"endMs": 5000})}
    view = await _job(pub_stack, "/api/audio/edit/preview", body)
    path = pub_stack.settings.data_dir / "storage" / view["result"]["previewKey"]
    expected_s = INTRO_S + 5.0 + OUTRO_S - (INTRO_FADE + OUTRO_FADE) / 1000
    assert abs(media.measure_duration_s(path) - expected_s) <= 0.03
    assert [p["part"] for p in view["result"]["parts"]] == ["intro", "episode", "outro"]
    info = ffprobe(path)
    assert info["streams"][0]["codec_name"] == "opus"


async def test_several_outputs_with_intro_and_outro(
    pub_stack: Stack, sources: dict[str, Any]
) -> None:
    body = {
        "sourceKey": sources["episode"],
        "recipe": {
            "intro": {"sourceKey": sources["intro"]},
            "outro": {"sourceKey": sources["outro"]},
            "trim": {"startMs": 1000, "endMs": 5000},
            "normalize": {"preset": "apple-podcasts"},
        },
        "outputs": [{"format": "mp3"}, {"format": "aac"}],
        "chapters": [{"startMs": 1000, "title": "Hello"}, {"startMs": 3000, "title": "Topic"}],
    }
    result = (await _job(pub_stack, "/api/audio/edit/save", body))["result"]
    expected_s = INTRO_S + 4.0 + OUTRO_S - 2.0  # default crossfades: 1 s each
    start = INTRO_S * 1000 - 1000
    louds = []
    for output in result["outputs"]:
        path: Path = pub_stack.settings.data_dir / "storage" / output["preparedKey"]
        assert abs(media.measure_duration_s(path) - expected_s) <= 0.02
        louds.append(media.integrated_lufs(path))
        chapters = ffprobe(path)["chapters"]  # MP4 chapter tracks start at 0: the Intro
        assert [round(float(c["start_time"]) * 1000) for c in chapters] == [0, start, start + 2000]
        assert [c["tags"]["title"] for c in chapters] == ["Intro", "Hello", "Topic"]
    assert abs(louds[0] - louds[1]) <= 0.2
    assert [p["part"] for p in result["parts"]] == ["intro", "episode", "outro"]


@pytest.mark.parametrize("which", ["intro", "outro"])
async def test_missing_or_foreign_sources_are_refused(
    pub_stack: Stack, sources: dict[str, Any], which: str
) -> None:
    episode = sources["episode"]
    missing = episode.rsplit("/", 2)[0] + "/01M8RRM6FJCEWX9TZBKYVA2D9V/none.wav"
    for route, extra in (
        ("/api/audio/edit/save", {"format": "mp3"}),
        ("/api/audio/edit/preview", {}),
    ):
        for key, status, code in (
            (missing, 404, f"{which}_not_found"),
            (sources["intro_b"], 404, f"{which}_not_found"),  # tenant B's own upload
            ("../../etc/passwd", 422, "invalid_source_key"),
        ):
            body = {"sourceKey": episode, "recipe": {which: {"sourceKey": key}}, **extra}
            resp = await pub_stack.client.post(route, json=body, headers=A)
            assert resp.status_code == status, resp.text
            assert resp.json()["code"] == code
            assert resp.json()["field"] == f"recipe.{which}.sourceKey"
    bad = {"sourceKey": episode, "format": "mp3", "recipe": {which: {"crossfadeMs": 500}}}
    resp = await pub_stack.client.post("/api/audio/edit/save", json=bad, headers=A)
    assert resp.status_code == 422 and resp.json()["field"] == f"recipe.{which}.sourceKey"
    fade = {"sourceKey": sources["intro"], "crossfadeMs": 5}
    resp = await pub_stack.client.post(
        "/api/audio/edit/save",
        json={"sourceKey": episode, "format": "mp3", "recipe": {which: fade}},
        headers=A,
    )
    assert resp.status_code == 422 and resp.json()["field"] == f"recipe.{which}.crossfadeMs"


async def test_the_worker_refuses_another_tenants_intro(
    pub_stack: Stack, sources: dict[str, Any]
) -> None:
    """A request that never went through the API (the stream is the contract) with tenant
    B's jingle as tenant A's intro: the job fails with `intro_not_found`, nothing is read."""
    job_id = new_job_id()
    events = EventStore(pub_stack.nc, pub_stack.nc.jetstream(), pub_stack.settings.names)
    await events.request_job(
        JobRequested(
            job_id=job_id,
            kind="save",
            tenant=TENANT_A,
            source_key=sources["episode"],
            recipe={"intro": {"sourceKey": sources["intro_b"]}},
            format="mp3",
        )
    )
    view = await wait_for_job(pub_stack.client, job_id, headers=A, timeout=60)
    assert view["status"] == "failed", view
    assert view["error"]["code"] == "intro_not_found"
