"""render(): every format and recipe step, checked by decoding and measuring the output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from audioprep.domain.errors import CORRUPT_MEDIA, NO_AUDIO_STREAM, Permanent
from audioprep.domain.recipe import Normalize, OutputOptions, Recipe, RecipeError, Trim
from audioprep.services.worker.pipeline.render import render
from tests import media

FORMATS = [
    ("wav", "pcm_s16le", 44100),
    ("flac", "flac", 44100),
    ("mp3", "mp3float", 44100),
    ("opus", "opus", 48000),
    ("aac", "aac", 44100),
]


@pytest.fixture(scope="module")
def tone_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 s, 997 Hz, -20 dBFS stereo."""
    return media.write_tone(tmp_path_factory.mktemp("src") / "tone.wav", seconds=4.0, freq=997)


def out_path(tmp_path: Path, fmt: str) -> Path:
    return tmp_path / f"out.{'m4a' if fmt == 'aac' else fmt}"


@pytest.mark.parametrize(("fmt", "codec", "rate"), FORMATS)
def test_each_save_format(tmp_path: Path, tone_wav: Path, fmt: str, codec: str, rate: int) -> None:
    dst = out_path(tmp_path, fmt)
    recipe = Recipe(trim=Trim(start_ms=500, end_ms=3500), fade_in_ms=100, fade_out_ms=100)
    result = render(str(tone_wav), str(dst), recipe, fmt, title="My Song")
    assert media.stream_info(dst) == (codec, rate, 2)
    assert abs(media.measure_duration_s(dst) - 3.0) <= 0.02
    assert abs(result.duration_ms - 3000) <= 20
    assert (result.sample_rate, result.channels) == (rate, 2)
    assert result.bytes == dst.stat().st_size
    assert media.container_title(dst) == "My Song"


def test_mp3_mono_low_rate_has_exact_length(tmp_path: Path, tone_wav: Path) -> None:
    dst = tmp_path / "o.mp3"
    options = OutputOptions(bitrate=256, quality=7)  # 256 kbps is not legal at 22.05 kHz
    render(
        str(tone_wav), str(dst), Recipe(channels="mono", sample_rate=22050), "mp3", options=options
    )
    assert media.stream_info(dst) == ("mp3float", 22050, 1)
    assert abs(media.measure_duration_s(dst) - 4.0) <= 0.02
    pcm, rate = media.decode_pcm(dst)
    assert media.first_sound_s(pcm, rate) <= 0.005  # encoder delay removed by the LAME tag


INPUTS = [
    ("a.wav", {"codec": "pcm_s24le"}),
    ("a.wav", {"codec": "pcm_f32le"}),
    ("a.flac", {}),
    ("a.mp3", {}),
    ("a.ogg", {}),
    ("a.opus", {"rate": 48000}),
    ("a.m4a", {}),
    ("a.mkv", {"video": True}),
    ("a.wav", {"rate": 8000, "channels": 1}),
    ("a.flac", {"rate": 96000}),
    ("a.wav", {"channels": 6}),
]


@pytest.mark.parametrize(("name", "kw"), INPUTS)
def test_every_common_input_renders(tmp_path: Path, name: str, kw: dict[str, object]) -> None:
    src = media.write_tone(tmp_path / name, seconds=2.0, **kw)  # type: ignore[arg-type]
    dst = tmp_path / "o.opus"
    render(str(src), str(dst), Recipe(trim=Trim(start_ms=200)), "opus")
    channels = 1 if kw.get("channels") == 1 else 2
    assert media.stream_info(dst) == ("opus", 48000, channels)
    assert abs(media.measure_duration_s(dst) - 1.8) <= 0.03
    pcm, rate = media.decode_pcm(dst)
    assert media.rms_between(pcm, rate, 0.5, 1.5) > -30


def test_surround_downmix(tmp_path: Path) -> None:
    src = media.write_tone(tmp_path / "s.flac", seconds=2.0, channels=6)
    dst = tmp_path / "o.wav"
    render(str(src), str(dst), Recipe(), "wav")
    assert media.stream_info(dst) == ("pcm_s16le", 44100, 2)


def test_fades(tmp_path: Path, tone_wav: Path) -> None:
    dst = tmp_path / "o.wav"
    render(str(tone_wav), str(dst), Recipe(fade_in_ms=1000, fade_out_ms=1000), "wav")
    pcm, rate = media.decode_pcm(dst)
    middle = media.rms_between(pcm, rate, 1.5, 2.5)
    assert media.rms_between(pcm, rate, 0, 0.05) < middle - 20
    assert media.rms_between(pcm, rate, -0.05, 0) < middle - 20
    assert media.rms_between(pcm, rate, 0.45, 0.55) < middle - 3  # still rising mid-fade


def test_gain(tmp_path: Path, tone_wav: Path) -> None:
    dst = tmp_path / "o.wav"
    render(str(tone_wav), str(dst), Recipe(gain_db=-6.0), "wav")
    before, rate = media.decode_pcm(tone_wav)
    after, _ = media.decode_pcm(dst)
    diff = media.rms_between(after, rate, 1, 3) - media.rms_between(before, rate, 1, 3)
    assert abs(diff + 6.0) <= 0.2


@pytest.mark.parametrize("fmt", ["wav", "aac"])
def test_normalize_hits_target(tmp_path: Path, fmt: str) -> None:
    src = media.write_noise(tmp_path / "n.flac", seconds=4.0, amplitude_dbfs=-30.0)
    dst = out_path(tmp_path, fmt)
    recipe = Recipe(normalize=Normalize(target_lufs=-16.0, true_peak_db=-1.0), gain_db=10)
    render(str(src), str(dst), recipe, fmt)
    assert abs(media.integrated_lufs(dst) - -16.0) <= 1.0
    assert media.true_peak_db(dst) <= -1.0 + 0.3


def test_normalize_limited_by_true_peak(tmp_path: Path) -> None:
    """A stereo 997 Hz sine reads its peak level in LUFS: a ceiling below the target wins."""
    src = media.write_tone(tmp_path / "t.wav", seconds=3.0, freq=997, amplitude_dbfs=-20.0)
    dst = tmp_path / "o.flac"
    recipe = Recipe(normalize=Normalize(target_lufs=-5.0, true_peak_db=-8.0))
    render(str(src), str(dst), recipe, "flac")
    assert abs(media.true_peak_db(dst) - -8.0) <= 0.2
    assert abs(media.integrated_lufs(dst) - -8.0) <= 0.5


def test_normalize_measures_only_the_kept_part(tmp_path: Path) -> None:
    quiet = media.tone(seconds=2.0, freq=997, dbfs=-40.0)
    loud = media.tone(seconds=2.0, freq=997, dbfs=-10.0)
    src = media.write_samples(tmp_path / "s.wav", np.concatenate([loud, quiet], axis=1))
    dst = tmp_path / "o.wav"
    recipe = Recipe(trim=Trim(start_ms=2000), normalize=Normalize(target_lufs=-20.0))
    render(str(src), str(dst), recipe, "wav")
    assert abs(media.integrated_lufs(dst) - -20.0) <= 1.0


@pytest.mark.parametrize("speed", [0.5, 1.5, 2.0])
def test_speed_keeps_pitch(tmp_path: Path, tone_wav: Path, speed: float) -> None:
    dst = tmp_path / "o.flac"
    render(str(tone_wav), str(dst), Recipe(speed=speed, fade_out_ms=200), "flac")
    assert abs(media.measure_duration_s(dst) - 4.0 / speed) <= 0.03
    pcm, rate = media.decode_pcm(dst)
    middle = pcm[:, pcm.shape[1] // 4 : pcm.shape[1] * 3 // 4]
    assert abs(media.dominant_frequency(middle, rate) / 997 - 1) <= 0.02


def test_trim_silence(tmp_path: Path) -> None:
    src = media.write_tone(tmp_path / "s.wav", seconds=2.0, lead_silence_s=1.5, tail_silence_s=1.0)
    dst = tmp_path / "o.wav"
    render(str(src), str(dst), Recipe(trim_silence=True), "wav")
    pcm, rate = media.decode_pcm(dst)
    # a natural 150 ms margin stays before and after the sound (issue 17)
    assert 0.1 <= media.first_sound_s(pcm, rate) <= 0.2
    assert abs(pcm.shape[1] / rate - 2.3) <= 0.05


def test_trim_silence_within_trim(tmp_path: Path) -> None:
    src = media.write_tone(tmp_path / "s.wav", seconds=2.0, lead_silence_s=1.5, tail_silence_s=1.0)
    dst = tmp_path / "o.wav"
    recipe = Recipe(trim=Trim(start_ms=0, end_ms=3000), trim_silence=True, fade_out_ms=100)
    render(str(src), str(dst), recipe, "wav")
    assert abs(media.measure_duration_s(dst) - 1.65) <= 0.05  # 150 ms margin before the sound


def test_channels_rate_and_bit_depth(tmp_path: Path, tone_wav: Path) -> None:
    dst = tmp_path / "o.wav"
    recipe = Recipe(channels="mono", sample_rate=22050)
    render(str(tone_wav), str(dst), recipe, "wav", options=OutputOptions(bit_depth=24))
    assert media.stream_info(dst) == ("pcm_s24le", 22050, 1)
    assert abs(media.measure_duration_s(dst) - 4.0) <= 0.02
    pcm, rate = media.decode_pcm(dst)
    assert abs(media.dominant_frequency(pcm[:, rate : 3 * rate], rate) / 997 - 1) <= 0.01


def test_mono_to_stereo(tmp_path: Path) -> None:
    src = media.write_tone(tmp_path / "m.wav", seconds=1.0, channels=1)
    dst = tmp_path / "o.m4a"
    render(str(src), str(dst), Recipe(channels="stereo"), "aac")
    assert media.stream_info(dst) == ("aac", 44100, 2)


def test_progress_is_monotonic_and_ends_at_one(tmp_path: Path, tone_wav: Path) -> None:
    seen: list[float] = []
    render(str(tone_wav), str(tmp_path / "o.opus"), Recipe(), "opus", on_progress=seen.append)
    assert seen and seen[-1] == 1.0
    assert seen == sorted(seen) and all(0.0 <= v <= 1.0 for v in seen)


def test_trim_past_end_is_a_recipe_error(tmp_path: Path, tone_wav: Path) -> None:
    dst = tmp_path / "o.wav"
    with pytest.raises(RecipeError) as info:
        render(str(tone_wav), str(dst), Recipe(trim=Trim(start_ms=9000)), "wav")
    assert info.value.field == "trim.startMs"
    assert not dst.exists()


def test_bad_inputs_fail_with_codes(tmp_path: Path) -> None:
    video = media.write_video_only(tmp_path / "v.mkv")
    with pytest.raises(Permanent) as info:
        render(str(video), str(tmp_path / "o.wav"), Recipe(), "wav")
    assert info.value.code == NO_AUDIO_STREAM
    src = media.write_tone(tmp_path / "a.flac", seconds=1.0)
    cut = media.truncate(src, tmp_path / "cut.flac", keep_bytes=100)
    with pytest.raises(Permanent) as info:
        render(str(cut), str(tmp_path / "o.wav"), Recipe(), "wav")
    assert info.value.code == CORRUPT_MEDIA
    assert not (tmp_path / "o.wav").exists()


@pytest.mark.parametrize(
    ("channels", "layout", "depth"), [("stereo", "stereo", 16), ("mono", "mono", 24)]
)
def test_wav_outputs_carry_their_channel_mask(
    tmp_path: Path, tone_wav: Path, channels: str, layout: str, depth: int
) -> None:
    """Issue 15 bug 11: without WAVE_FORMAT_EXTENSIBLE readers see layout "unknown"."""
    import av

    dst = tmp_path / "o.wav"
    recipe = Recipe(channels=channels)  # type: ignore[arg-type]
    render(
        str(tone_wav), str(dst), recipe, "wav", options=OutputOptions(bit_depth=depth), title="T"
    )
    with av.open(str(dst)) as inp:
        stream = inp.streams.audio[0]
        assert stream.layout.name == layout
        assert inp.metadata.get("title") == "T"
    assert media.stream_info(dst)[0] == ("pcm_s16le" if depth == 16 else "pcm_s24le")
    assert abs(media.measure_duration_s(dst) - 4.0) <= 0.01
