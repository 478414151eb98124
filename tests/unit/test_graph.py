"""Recipe → filter chain rules, without media."""

from __future__ import annotations

import pytest

from audioprep.domain.recipe import Normalize, Recipe, Trim
from audioprep.services.worker.pipeline.formats import FORMATS
from audioprep.services.worker.pipeline.graph import build_filter_chain, gain_db, output_layout
from audioprep.services.worker.pipeline.loudness import Loudness
from audioprep.services.worker.pipeline.mp3 import mp3_bitrate


def chain(recipe: Recipe, **kw: object) -> list[tuple[str, str]]:
    args: dict[str, object] = {
        "source_rate": 44100,
        "source_channels": 2,
        "source_duration_ms": 10_000,
        "measured": None,
        "sound_bounds_ms": None,
        "out_rate": 44100,
        "out_layout": "stereo",
        "out_sample_fmt": "fltp",
    }
    args.update(kw)
    return build_filter_chain(recipe, **args)  # type: ignore[arg-type]


def names(filters: list[tuple[str, str]]) -> list[str]:
    return [name for name, _ in filters]


def test_identity_only_formats() -> None:
    assert chain(Recipe()) == [
        ("asetpts", "PTS-STARTPTS"),
        ("aformat", "sample_fmts=fltp:sample_rates=44100:channel_layouts=stereo"),
    ]


def test_trim_resets_timestamps_after_atrim() -> None:
    filters = chain(Recipe(trim=Trim(start_ms=1500, end_ms=4250)))
    assert filters[1] == ("atrim", "start=1.5:end=4.25")
    assert filters[2] == ("asetpts", "PTS-STARTPTS")


def test_trim_end_past_source_is_dropped() -> None:
    filters = chain(Recipe(trim=Trim(start_ms=100, end_ms=99_000)))
    assert ("atrim", "start=0.1") in filters


def test_fade_out_starts_from_output_length() -> None:
    recipe = Recipe(trim=Trim(start_ms=1000, end_ms=9000), speed=2.0, fade_out_ms=500)
    filters = chain(recipe)
    assert ("atempo", "2") in filters
    assert ("afade", "t=out:st=3.5:d=0.5") in filters  # 8 s / 2 = 4 s long


def test_fades_clamped_to_length() -> None:
    filters = chain(Recipe(trim=Trim(start_ms=0, end_ms=1000), fade_in_ms=5000))
    assert ("afade", "t=in:st=0:d=1") in filters


def test_gain_and_resample() -> None:
    filters = chain(Recipe(gain_db=-6.0), out_rate=48000, out_layout="mono", out_sample_fmt="s16")
    assert ("volume", "volume=-6.000dB") in filters
    assert ("aresample", "48000") in filters
    assert filters[-1] == ("aformat", "sample_fmts=s16:sample_rates=48000:channel_layouts=mono")
    assert names(filters).index("volume") < names(filters).index("aresample")


def test_silence_bounds_narrow_the_trim() -> None:
    recipe = Recipe(trim=Trim(start_ms=100, end_ms=9000), trim_silence=True)
    filters = chain(recipe, sound_bounds_ms=(1200, 8000))
    assert ("atrim", "start=1.2:end=8") in filters


def test_silence_bounds_ignored_when_disabled_or_all_silent() -> None:
    assert "atrim" not in names(chain(Recipe(), sound_bounds_ms=(1200, 8000)))
    assert "atrim" not in names(chain(Recipe(trim_silence=True), sound_bounds_ms=None))


def test_normalize_gain_to_target() -> None:
    recipe = Recipe(normalize=Normalize(target_lufs=-16.0, true_peak_db=-1.0))
    assert gain_db(recipe, Loudness(-23.0, -10.0, 5.0), -16.0) == pytest.approx(7.0)


def test_normalize_gain_is_not_capped_by_the_true_peak() -> None:
    # the limiter holds the ceiling; a cap here left speech 1.4-6.5 LU short (issue 14)
    recipe = Recipe(normalize=Normalize(target_lufs=-16.0, true_peak_db=-1.5))
    assert gain_db(recipe, Loudness(-23.0, -4.0, 5.0), -16.0) == pytest.approx(7.0)


def test_normalize_on_silence_is_no_gain() -> None:
    recipe = Recipe(normalize=Normalize(), gain_db=4.0)
    assert gain_db(recipe, None, -16.0) == 0.0  # normalize overrides gainDb
    assert gain_db(Recipe(gain_db=4.0), None) == 4.0
    assert gain_db(recipe, Loudness(None, None, None), -16.0) == 0.0
    assert gain_db(recipe, Loudness(-70.0, None, None), -16.0) == 0.0


def test_output_layout() -> None:
    assert output_layout(Recipe(), 1) == "mono"
    assert output_layout(Recipe(), 6) == "stereo"
    assert output_layout(Recipe(channels="mono"), 2) == "mono"


def test_mp3_bitrate_snaps_to_legal_values() -> None:
    assert mp3_bitrate(192, 44100) == 192
    assert mp3_bitrate(250, 48000) == 256
    assert mp3_bitrate(256, 22050) == 160
    assert mp3_bitrate(96, 8000) == 96


def test_output_rates_per_format() -> None:
    assert FORMATS["opus"].output_rate(44100) == 48000
    assert FORMATS["mp3"].output_rate(96000) == 48000
    assert FORMATS["aac"].output_rate(22050) == 22050
    assert FORMATS["wav"].output_rate(8000) == 8000
