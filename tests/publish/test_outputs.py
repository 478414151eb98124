"""Several outputs per save: one job renders the recipe once into every format; each file has
its key, size, loudness report and download link, the tags and chapters, the right length and
the same loudness as the others."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mutagen
import pytest
from mutagen.id3 import ID3
from mutagen.wave import WAVE

from audioprep.domain.events import JobRequested
from audioprep.shared.metadata import Output, output_stems
from tests import media, speech
from tests.conftest import Stack
from tests.e2e.test_api_support import history
from tests.jobs_helpers import wait_for_job
from tests.publish.conftest import A, ffprobe, ingest

FORMATS = ["mp3", "opus", "wav", "flac", "aac"]
SOURCE_S = 8.0
TRIM = {"startMs": 500, "endMs": 7500}  # 7 s kept
CHAPTERS = [{"startMs": 500, "title": "Start"}, {"startMs": 4500, "title": "Later"}]


@pytest.fixture(scope="module")
async def source(pub_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Music-like material with transients at 44.1 kHz (opus has to resample to 48 kHz)."""
    pcm = speech.music(seconds=SOURCE_S, rate=44100, peak_dbfs=-0.5)
    wav = media.write_samples(tmp_path_factory.mktemp("outputs") / "show.wav", pcm, rate=44100)
    return await ingest(pub_stack, wav, A)


def _stored(stack: Stack, key: str) -> Path:
    path = stack.settings.data_dir / "storage" / key
    assert path.exists(), key
    return path


async def _save(stack: Stack, body: dict[str, Any]) -> dict[str, Any]:
    resp = await stack.client.post("/api/audio/edit/save", json=body, headers=A)
    assert resp.status_code == 202, resp.text
    view = await wait_for_job(stack.client, resp.json()["jobId"], headers=A, timeout=120)
    assert view["status"] == "completed", view
    return view


async def test_one_job_writes_every_output(pub_stack: Stack, source: str) -> None:
    body = {
        "sourceKey": source,
        "recipe": {"trim": TRIM, "normalize": {"preset": "apple-podcasts"}},
        "outputs": [
            {"format": "mp3", "options": {"bitrate": 128}, "filename": "episode 7"},
            {"format": "opus"},
            {"format": "wav", "options": {"bitDepth": 24}},
            {"format": "flac"},
            {"format": "aac", "filename": "episode-7-web"},
        ],
        "filename": "show-7",
        "metadata": {"title": "Seven", "album": "The Show", "track": 7},
        "chapters": CHAPTERS,
    }
    view = await _save(pub_stack, body)
    result = view["result"]
    outputs = result["outputs"]
    assert [o["format"] for o in outputs] == FORMATS
    names = [o["preparedKey"].rsplit("/", 1)[-1] for o in outputs]
    assert names == [
        "episode_7.mp3",
        "show-7.opus",
        "show-7.wav",
        "show-7.flac",
        "episode-7-web.m4a",
    ]
    # the top level is the first output, as a single-format save reports it
    assert result["preparedKey"] == outputs[0]["preparedKey"]
    assert result["format"] == "mp3" and result["sizeBytes"] == outputs[0]["sizeBytes"]
    assert view["downloadUrl"]
    # chapters JSON once, named after the first output
    assert result["chaptersKey"].endswith("/episode_7.chapters.json")
    doc = json.loads(_stored(pub_stack, result["chaptersKey"]).read_bytes())
    assert [c["startTime"] for c in doc["chapters"]] == [0, 4]

    louds: dict[str, float] = {}
    for output in outputs:
        path = _stored(pub_stack, output["preparedKey"])
        assert output["sizeBytes"] == path.stat().st_size
        assert abs(media.measure_duration_s(path) - 7.0) <= 0.02, output["format"]
        assert abs(output["durationMs"] - 7000) <= 20
        louds[output["format"]] = media.integrated_lufs(path)
        report = output["loudnessReport"]
        assert report["target"]["preset"] == "apple-podcasts"
        assert abs(report["after"]["integratedLufs"] - louds[output["format"]]) <= 0.1
        assert report["after"]["truePeakDb"] <= -1.0
        # its own signed link, which downloads exactly that file
        assert output["downloadUrl"] != view["downloadUrl"] or output is outputs[0]
        got = await pub_stack.client.get(output["downloadUrl"])
        assert got.status_code == 200 and got.content == path.read_bytes()
        # tags and chapters in every file
        if output["format"] == "wav":
            tags = WAVE(path).tags
            assert isinstance(tags, ID3) and str(tags["TIT2"]) == "Seven"
            assert [c.start_time for c in tags.getall("CHAP")] == [0, 4000]
        else:
            info = ffprobe(path)
            starts = [round(float(c["start_time"]) * 1000) for c in info["chapters"]]
            assert starts == [0, 4000], output["format"]
            assert mutagen.File(path) is not None
    assert outputs[2]["codec"] == "pcm_s24le" and outputs[1]["sampleRate"] == 48000
    assert max(louds.values()) - min(louds.values()) <= 0.2, louds
    assert all(abs(v + 16.0) <= 0.5 for v in louds.values()), louds

    requested = (await history(pub_stack, view["jobId"]))[0].event
    assert isinstance(requested, JobRequested)
    assert requested.format == "mp3" and requested.outputs is not None
    assert [o["format"] for o in requested.outputs] == FORMATS


async def test_single_format_save_has_no_outputs_list(pub_stack: Stack, source: str) -> None:
    view = await _save(pub_stack, {"sourceKey": source, "format": "opus"})
    assert "outputs" not in view["result"] and "parts" not in view["result"]
    assert view["result"]["preparedKey"].endswith("/show.opus")


async def test_same_format_twice_gets_two_files(pub_stack: Stack, source: str) -> None:
    body = {
        "sourceKey": source,
        "recipe": {"trim": {"endMs": 3000}},
        "outputs": [
            {"format": "mp3", "options": {"bitrate": 64}},
            {"format": "mp3", "options": {"bitrate": 192}},
        ],
    }
    outputs = (await _save(pub_stack, body))["result"]["outputs"]
    assert [o["preparedKey"].rsplit("/", 1)[-1] for o in outputs] == ["show.mp3", "show-2.mp3"]
    assert outputs[0]["sizeBytes"] < outputs[1]["sizeBytes"]
    for output in outputs:
        path = _stored(pub_stack, output["preparedKey"])
        assert abs(media.measure_duration_s(path) - 3.0) <= 0.02


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"outputs": []}, "outputs"),
        ({"outputs": [{"format": "mp3"}] * 6}, "outputs"),
        ({"outputs": [{"format": "ogg"}]}, "outputs[0].format"),
        ({"outputs": [{"format": "mp3"}, {}]}, "outputs[1].format"),
        ({"outputs": [{"format": "mp3", "bitrate": 96}]}, "outputs[0]"),
        ({"outputs": [{"format": "mp3", "options": {"bitrate": 5}}]}, "outputs[0].options.bitrate"),
        ({"outputs": [{"format": "mp3", "filename": ""}]}, "outputs[0].filename"),
        ({"outputs": {"format": "mp3"}}, "outputs"),
        ({"outputs": [{"format": "mp3"}], "format": "wav"}, "outputs"),
        ({}, "format"),
    ],
)
async def test_bad_outputs_are_a_422_naming_the_field(
    pub_stack: Stack, source: str, extra: dict[str, Any], field: str
) -> None:
    resp = await pub_stack.client.post(
        "/api/audio/edit/save", json={"sourceKey": source, **extra}, headers=A
    )
    assert resp.status_code == 422, resp.text
    problem = resp.json()
    assert problem["code"] == "validation_error"
    assert problem["field"] == field, problem


async def test_a_preset_can_hold_outputs(pub_stack: Stack, source: str) -> None:
    c = pub_stack.client
    await c.delete("/api/presets/two-files", headers=A)
    preset = {"name": "two-files", "outputs": [{"format": "mp3"}, {"format": "opus"}]}
    assert (await c.post("/api/presets", json=preset, headers=A)).status_code == 201
    both = {**preset, "name": "both", "format": "wav"}
    refused = await c.post("/api/presets", json=both, headers=A)
    assert refused.status_code == 422 and refused.json()["field"] == "outputs"
    body = {"sourceKey": source, "preset": "two-files", "recipe": {"trim": {"endMs": 2000}}}
    try:
        result = (await _save(pub_stack, body))["result"]
        assert [o["format"] for o in result["outputs"]] == ["mp3", "opus"]
        # a request's own format wins over the preset's outputs
        result = (await _save(pub_stack, {**body, "format": "flac"}))["result"]
        assert result["format"] == "flac" and "outputs" not in result
    finally:  # other tests list this tenant's presets
        await c.delete("/api/presets/two-files", headers=A)


def test_output_stems_keep_files_apart() -> None:
    outputs = [
        Output(format="mp3"),
        Output(format="mp3"),
        Output(format="opus"),
        Output(format="mp3", filename="Ep 1.final.mp3"),
        Output(format="mp3", filename="ep"),
    ]
    assert output_stems(outputs, "ep") == ["ep", "ep-2", "ep", "Ep_1.final", "ep-3"]
