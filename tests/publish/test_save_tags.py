"""A save with metadata, a cover and chapters, for every format, read back with mutagen and
ffprobe; the Podcasting 2.0 chapters file next to it."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import mutagen
import pytest
from mutagen.flac import FLAC, Picture
from mutagen.id3 import ID3
from mutagen.mp4 import MP4
from mutagen.oggopus import OggOpus
from mutagen.wave import WAVE
from PIL import Image

from tests.conftest import Stack
from tests.jobs_helpers import wait_for_job
from tests.media import write_tone
from tests.publish.conftest import A, ffprobe, ingest, png_bytes, upload_image

METADATA = {
    "title": "Episode 12: Tags — und Umlaute",
    "artist": "Ada Host",
    "album": "The Show",
    "albumArtist": "Show Network",
    "track": 12,
    "date": "2026-11-25",
    "genre": "Podcast",
    "comment": "Show notes,\nsecond line",
    "language": "eng",
    "publisher": "Pod Publishing",
    "copyright": "© 2026 Show Network",
}
# Source-time chapters; the recipe trims the first second off: Intro lands on 0.
CHAPTERS = [
    {"startMs": 4000, "title": "Outro"},
    {"startMs": 0, "title": "Intro"},
    {"startMs": 2000, "title": "Main topic", "url": "https://example.com/notes"},
]
EXPECTED_STARTS = [0, 1000, 3000]
EXPECTED_TITLES = ["Intro", "Main topic", "Outro"]


@pytest.fixture(scope="module")
async def source(pub_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> str:
    wav = write_tone(tmp_path_factory.mktemp("pub") / "tone.wav", seconds=6.0, freq=440.0)
    return await ingest(pub_stack, wav, A)


@pytest.fixture(scope="module")
async def cover(pub_stack: Stack) -> dict[str, Any]:
    resp = await upload_image(pub_stack, png_bytes((640, 480)), A)
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def _stored(stack: Stack, key: str) -> Path:
    path = stack.settings.data_dir / "storage" / key
    assert path.exists(), key
    return path


async def _save(stack: Stack, body: dict[str, Any]) -> dict[str, Any]:
    resp = await stack.client.post("/api/audio/edit/save", json=body, headers=A)
    assert resp.status_code == 202, resp.text
    view = await wait_for_job(stack.client, resp.json()["jobId"], headers=A)
    assert view["status"] == "completed", view
    return view


def _ffprobe_tags(info: dict[str, Any]) -> dict[str, str]:
    """Container tags, then the audio stream's (Ogg keeps its comments on the stream)."""
    tags = {k.lower(): v for k, v in info["format"].get("tags", {}).items()}
    for stream in info["streams"]:
        if stream["codec_type"] == "audio":
            for k, v in stream.get("tags", {}).items():
                tags.setdefault(k.lower(), v)
    return tags


def _check_picture(data: bytes, cover: dict[str, Any]) -> None:
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG"
        assert im.size == (cover["width"], cover["height"])


def _check_vorbis(tags: Any) -> None:
    assert tags["TITLE"] == [METADATA["title"]]
    assert tags["ARTIST"] == [METADATA["artist"]]
    assert tags["ALBUM"] == [METADATA["album"]]
    assert tags["ALBUMARTIST"] == [METADATA["albumArtist"]]
    assert tags["TRACKNUMBER"] == ["12"]
    assert tags["DATE"] == ["2026-11-25"]
    assert tags["COMMENT"] == [METADATA["comment"]]
    assert tags["LANGUAGE"] == ["eng"]
    assert tags["PUBLISHER"] == [METADATA["publisher"]]
    assert tags["COPYRIGHT"] == [METADATA["copyright"]]
    assert tags["CHAPTER001"] == ["00:00:00.000"]
    assert tags["CHAPTER002"] == ["00:00:01.000"]
    assert tags["CHAPTER002NAME"] == ["Main topic"]
    assert tags["CHAPTER002URL"] == ["https://example.com/notes"]
    assert tags["CHAPTER003"] == ["00:00:03.000"]


def _check_id3(tags: ID3, cover: dict[str, Any]) -> None:
    assert tags.version[:2] == (2, 4)
    assert str(tags["TIT2"]) == METADATA["title"]
    assert str(tags["TPE1"]) == METADATA["artist"]
    assert str(tags["TALB"]) == METADATA["album"]
    assert str(tags["TPE2"]) == METADATA["albumArtist"]
    assert str(tags["TRCK"]) == "12"
    assert str(tags["TDRC"]) == "2026-11-25"
    assert str(tags["TCON"]) == "Podcast"
    assert str(tags["TLAN"]) == "eng"
    assert str(tags["TPUB"]) == METADATA["publisher"]
    assert str(tags["TCOP"]) == METADATA["copyright"]
    assert tags.getall("COMM")[0].text == [METADATA["comment"]]
    (apic,) = tags.getall("APIC")
    assert apic.mime == "image/png" and apic.type == 3
    _check_picture(apic.data, cover)
    (toc,) = tags.getall("CTOC")
    chaps = {c.element_id: c for c in tags.getall("CHAP")}
    assert [chaps[i].start_time for i in toc.child_element_ids] == EXPECTED_STARTS
    assert [str(chaps[i].sub_frames["TIT2"]) for i in toc.child_element_ids] == EXPECTED_TITLES
    assert chaps[toc.child_element_ids[-1]].end_time == 5000
    assert chaps[toc.child_element_ids[1]].sub_frames.getall("WXXX")[0].url.endswith("/notes")


def _check_ffprobe_chapters(info: dict[str, Any]) -> None:
    chapters = info["chapters"]
    starts = [round(float(c["start_time"]) * 1000) for c in chapters]
    assert starts == EXPECTED_STARTS, chapters
    assert [c["tags"]["title"] for c in chapters] == EXPECTED_TITLES
    assert abs(float(chapters[-1]["end_time"]) - 5.0) < 0.05


@pytest.mark.parametrize("fmt", ["mp3", "aac", "flac", "opus", "wav"])
async def test_save_writes_tags_cover_and_chapters(
    pub_stack: Stack, source: str, cover: dict[str, Any], fmt: str
) -> None:
    body = {
        "sourceKey": source,
        "recipe": {"trim": {"startMs": 1000}},
        "format": fmt,
        "filename": "episode 12",
        "metadata": {**METADATA, "coverKey": cover["imageKey"]},
        "chapters": CHAPTERS,
    }
    view = await _save(pub_stack, body)
    result = view["result"]
    path = _stored(pub_stack, result["preparedKey"])
    assert result["durationMs"] == 5000

    # Podcasting 2.0 JSON chapters next to the output
    assert result["chaptersKey"] == result["preparedKey"].rsplit(".", 1)[0] + ".chapters.json"
    doc = json.loads(_stored(pub_stack, result["chaptersKey"]).read_bytes())
    assert doc["version"] == "1.2.0"
    assert [c["startTime"] for c in doc["chapters"]] == [0, 1, 3]
    assert [c["title"] for c in doc["chapters"]] == EXPECTED_TITLES
    assert doc["chapters"][1]["url"] == "https://example.com/notes"
    assert "url" not in doc["chapters"][0]

    info = ffprobe(path)
    tags = _ffprobe_tags(info)
    assert tags["title"] == METADATA["title"]
    assert tags["artist"] == METADATA["artist"]
    assert tags["album"] == METADATA["album"]
    assert tags["genre"] == "Podcast"
    assert tags.get("date", tags.get("creation_time", "")).startswith("2026")
    assert float(info["format"]["duration"]) == pytest.approx(5.0, abs=0.08)
    attached = [s for s in info["streams"] if s.get("disposition", {}).get("attached_pic")]

    if fmt == "mp3":
        _check_id3(ID3(path), cover)
        _check_ffprobe_chapters(info)
        assert attached and attached[0]["codec_name"] == "png"
        assert tags["track"] == "12"
    elif fmt == "wav":
        wave = WAVE(path)
        assert isinstance(wave.tags, ID3)
        _check_id3(wave.tags, cover)
        assert path.read_bytes().count(b"INFO") >= 1
        assert tags["track"] == "12"  # from RIFF INFO (ITRK)
        assert tags["comment"] == METADATA["comment"]
    elif fmt == "flac":
        flac = FLAC(path)
        _check_vorbis(flac.tags)
        (pic,) = flac.pictures
        assert pic.type == 3 and pic.mime == "image/png"
        assert (pic.width, pic.height) == (cover["width"], cover["height"])
        _check_picture(pic.data, cover)
        _check_ffprobe_chapters(info)
        assert attached and attached[0]["codec_name"] == "png"
    elif fmt == "opus":
        opus = OggOpus(path)
        _check_vorbis(opus.tags)
        (block,) = opus.tags["METADATA_BLOCK_PICTURE"]
        pic = Picture(base64.b64decode(block))
        assert pic.type == 3
        _check_picture(pic.data, cover)
        _check_ffprobe_chapters(info)
    else:
        mp4 = MP4(path)
        assert mp4.tags is not None
        assert mp4.tags["\xa9nam"] == [METADATA["title"]]
        assert mp4.tags["\xa9ART"] == [METADATA["artist"]]
        assert mp4.tags["\xa9alb"] == [METADATA["album"]]
        assert mp4.tags["aART"] == [METADATA["albumArtist"]]
        assert mp4.tags["trkn"] == [(12, 0)]
        assert mp4.tags["\xa9day"] == ["2026-11-25"]
        assert mp4.tags["cprt"] == [METADATA["copyright"]]
        assert bytes(mp4.tags["----:com.apple.iTunes:LANGUAGE"][0]) == b"eng"
        (covr,) = mp4.tags["covr"]
        assert covr.imageformat == covr.FORMAT_PNG
        _check_picture(bytes(covr), cover)
        assert mp4.chapters is not None
        assert [round(c.start * 1000) for c in mp4.chapters] == EXPECTED_STARTS
        assert [c.title for c in mp4.chapters] == EXPECTED_TITLES
        _check_ffprobe_chapters(info)
        assert attached and attached[0]["codec_name"] == "png"
    # the audio is still what was rendered: it decodes to the end
    assert mutagen.File(path) is not None


async def test_metadata_without_chapters_keeps_source_title_when_none_given(
    pub_stack: Stack, source: str
) -> None:
    body = {"sourceKey": source, "format": "mp3", "metadata": {"artist": "Only Artist"}}
    view = await _save(pub_stack, body)
    assert "chaptersKey" not in view["result"]
    tags = ID3(_stored(pub_stack, view["result"]["preparedKey"]))
    assert str(tags["TPE1"]) == "Only Artist"
    assert not tags.getall("CHAP")


@pytest.mark.parametrize(
    ("metadata", "chapters", "field"),
    [
        ({"title": ""}, None, "metadata.title"),
        ({"track": 0}, None, "metadata.track"),
        ({"language": "english"}, None, "metadata.language"),
        ({"date": "2026-13-01"}, None, "metadata.date"),
        ({"album": "two\nlines"}, None, "metadata.album"),
        ({"albumArtist": "trailing newline\n"}, None, "metadata.albumArtist"),
        ({"title": "a\x00b"}, None, "metadata.title"),
        ({"rating": 5}, None, "metadata"),
        (None, [{"startMs": -1, "title": "x"}], "chapters[0].startMs"),
        (None, [{"startMs": 0}], "chapters[0].title"),
        (None, [{"startMs": 0, "title": "x", "url": "javascript:alert(1)"}], "chapters[0].url"),
        (None, [{"startMs": 5, "title": "a"}, {"startMs": 6, "title": "b\n"}], "chapters[1].title"),
        (None, [{"startMs": 0, "title": "x", "url": "https://a b"}], "chapters[0].url"),
    ],
)
async def test_bad_metadata_is_a_422_naming_the_field(
    pub_stack: Stack,
    source: str,
    metadata: dict[str, Any] | None,
    chapters: list[dict[str, Any]] | None,
    field: str,
) -> None:
    body: dict[str, Any] = {"sourceKey": source, "format": "mp3"}
    if metadata is not None:
        body["metadata"] = metadata
    if chapters is not None:
        body["chapters"] = chapters
    resp = await pub_stack.client.post("/api/audio/edit/save", json=body, headers=A)
    assert resp.status_code == 422, resp.text
    problem = resp.json()
    assert problem["code"] == "validation_error"
    assert problem["field"].startswith(field), problem


async def test_cover_of_another_tenant_or_missing_is_a_404(pub_stack: Stack, source: str) -> None:
    for key in (
        "tenants/pubB/images/" + "0" * 64 + ".png",
        "tenants/pubA/images/" + "0" * 64 + ".png",
        "sources/whatever.png",
    ):
        body = {"sourceKey": source, "format": "mp3", "metadata": {"coverKey": key}}
        resp = await pub_stack.client.post("/api/audio/edit/save", json=body, headers=A)
        assert resp.status_code == 404, resp.text
        assert resp.json()["code"] == "image_not_found"
        assert resp.json()["field"] == "metadata.coverKey"


async def test_chapters_follow_speed_and_drop_past_the_end(pub_stack: Stack, source: str) -> None:
    body = {
        "sourceKey": source,
        "recipe": {"speed": 2.0, "trim": {"endMs": 5000}},
        "format": "opus",
        "chapters": [
            {"startMs": 0, "title": "A"},
            {"startMs": 2000, "title": "B"},
            {"startMs": 4000, "title": "C"},
            {"startMs": 5500, "title": "gone"},
        ],
    }
    view = await _save(pub_stack, body)
    path = _stored(pub_stack, view["result"]["preparedKey"])
    chapters = ffprobe(path)["chapters"]
    assert [round(float(c["start_time"]) * 1000) for c in chapters] == [0, 1000, 2000]
    assert [c["tags"]["title"] for c in chapters] == ["A", "B", "C"]
    doc = json.loads(_stored(pub_stack, view["result"]["chaptersKey"]).read_bytes())
    assert [c["title"] for c in doc["chapters"]] == ["A", "B", "C"]
    assert doc["chapters"][-1]["endTime"] == pytest.approx(2.5, abs=0.03)
