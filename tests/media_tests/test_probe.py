"""probe(): facts about every common input, and stable codes for bad ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from audioprep.domain.errors import (
    CORRUPT_MEDIA,
    EMPTY_FILE,
    NO_AUDIO_STREAM,
    UNSUPPORTED_MEDIA,
    Permanent,
)
from audioprep.services.worker.pipeline.probe import probe
from tests import media

INPUTS = [
    ("a.wav", {}, "pcm_s16le", "wav"),
    ("a.wav", {"codec": "pcm_s24le"}, "pcm_s24le", "wav"),
    ("a.wav", {"codec": "pcm_f32le"}, "pcm_f32le", "wav"),
    ("a.flac", {}, "flac", "flac"),
    ("a.mp3", {}, "mp3", "mp3"),
    ("a.ogg", {}, "vorbis", "ogg"),
    ("a.opus", {"rate": 48000}, "opus", "ogg"),
    ("a.m4a", {}, "aac", "mp4"),
    ("a.aac", {}, "aac", "aac"),
    ("a.mp4", {"video": True}, "aac", "mp4"),
    ("a.mkv", {"video": True}, "aac", "matroska"),
    ("a.wav", {"channels": 6}, "pcm_s16le", "wav"),
    ("a.wav", {"channels": 1, "rate": 8000}, "pcm_s16le", "wav"),
    ("a.flac", {"rate": 96000}, "flac", "flac"),
]


@pytest.mark.parametrize(("name", "kw", "codec", "container"), INPUTS)
def test_probe_common_inputs(
    tmp_path: Path, name: str, kw: dict[str, object], codec: str, container: str
) -> None:
    path = media.write_tone(tmp_path / name, seconds=3.0, title="Take 1", **kw)  # type: ignore[arg-type]
    info = probe(str(path))
    assert abs(info.duration_ms - 3000) <= 20 + (25 if codec == "aac" else 0)
    assert info.sample_rate == kw.get("rate", 44100)
    assert info.channels == kw.get("channels", 2)
    assert info.codec == codec
    assert info.container == container
    if name.endswith(".aac"):
        assert info.title is None  # ADTS has no tags
    else:
        assert info.title == "Take 1"


def test_probe_wav_duration_exact(tmp_path: Path) -> None:
    path = media.write_tone(tmp_path / "a.wav", seconds=3.0)
    info = probe(str(path))
    assert abs(info.duration_ms - 3000) <= 20
    assert (info.sample_rate, info.channels, info.bit_rate) == (44100, 2, 1411200)


def test_probe_mp3_without_info_header_counts_frames(tmp_path: Path) -> None:
    """A raw ADTS/MP3 stream has no sample count; the probe decodes instead of guessing."""
    path = media.write_tone(tmp_path / "a.aac", seconds=4.0)
    assert abs(probe(str(path)).duration_ms - media.measure_duration_s(path) * 1000) <= 1


def expect_code(path: Path, code: str) -> None:
    with pytest.raises(Permanent) as info:
        probe(str(path))
    assert info.value.code == code


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "e.mp3").write_bytes(b"")
    expect_code(tmp_path / "e.mp3", EMPTY_FILE)


def test_video_without_audio(tmp_path: Path) -> None:
    expect_code(media.write_video_only(tmp_path / "v.mp4"), NO_AUDIO_STREAM)


def test_text_renamed_mp3(tmp_path: Path) -> None:
    (tmp_path / "t.mp3").write_text("this is not audio\n" * 100)
    expect_code(tmp_path / "t.mp3", UNSUPPORTED_MEDIA)


def test_random_bytes(tmp_path: Path) -> None:
    (tmp_path / "r.bin").write_bytes(bytes(range(256)) * 40)
    expect_code(tmp_path / "r.bin", UNSUPPORTED_MEDIA)


@pytest.mark.parametrize(("name", "keep"), [("a.wav", 60), ("a.flac", 200), ("a.mp3", 300)])
def test_truncated_to_nothing(tmp_path: Path, name: str, keep: int) -> None:
    src = media.write_tone(tmp_path / name, seconds=2.0)
    expect_code(media.truncate(src, tmp_path / f"cut-{name}", keep_bytes=keep), CORRUPT_MEDIA)


def test_truncated_wav_reports_what_is_there(tmp_path: Path) -> None:
    src = media.write_tone(tmp_path / "a.wav", seconds=3.0)
    half = media.truncate(src, tmp_path / "half.wav", keep_bytes=44 + 44100 * 4)
    assert abs(probe(str(half)).duration_ms - 1000) <= 20
