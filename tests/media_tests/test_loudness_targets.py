"""Issue 14 acceptance: every normalised render lands within ±0.5 LU under its ceiling.

Inputs look like the real thing (tests/speech.py: espeak speech in studio, laptop, phone and
96 kHz versions, music-like material with transients, a tone); every output format; outputs
decoded and measured by FFmpeg's ebur128 through plain PyAV (tests/media.py) and by
pyloudnorm, which shares no code with the pipeline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyloudnorm
import pytest

from audioprep.domain.recipe import Normalize, Recipe, Trim
from audioprep.services.worker.pipeline.render import render
from audioprep.services.worker.pipeline.true_peak import max_true_peak_db
from tests import media, speech

FORMATS = ("wav", "flac", "mp3", "opus", "aac")
EXT = {"wav": "wav", "flac": "flac", "mp3": "mp3", "opus": "opus", "aac": "m4a"}
TARGETS = ((-16.0, -1.5), (-14.0, -1.0))
TOLERANCE_LU = 0.5


@pytest.fixture(scope="module")
def materials(tmp_path_factory: pytest.TempPathFactory) -> dict[str, speech.Material]:
    speech.require_espeak()
    root = tmp_path_factory.mktemp("loudness-material")
    return {name: speech.make_material(name, root / name) for name in speech.MATERIALS}


def pyloudnorm_lufs(path: Path) -> float:
    pcm, rate = media.decode_pcm(path)
    data = pcm.T.astype(np.float64)
    return float(
        pyloudnorm.Meter(rate).integrated_loudness(data[:, 0] if pcm.shape[0] == 1 else data)
    )


CASES = [
    (name, fmt, TARGETS[(i + j) % 2])
    for i, name in enumerate(speech.MATERIALS)
    for j, fmt in enumerate(FORMATS)
]


@pytest.mark.parametrize(
    ("name", "fmt", "target"), CASES, ids=[f"{n}-{f}-{t[0]:g}" for n, f, t in CASES]
)
def test_normalized_output_meets_target_and_ceiling(
    materials: dict[str, speech.Material],
    tmp_path: Path,
    name: str,
    fmt: str,
    target: tuple[float, float],
) -> None:
    lufs, ceiling = target
    src = materials[name]
    dst = tmp_path / f"out.{EXT[fmt]}"
    recipe = Recipe(normalize=Normalize(target_lufs=lufs, true_peak_db=ceiling))
    result = render(str(src.path), str(dst), recipe, fmt)

    measured = media.integrated_lufs(dst)
    assert abs(measured - lufs) <= TOLERANCE_LU, (name, fmt, measured)
    assert abs(pyloudnorm_lufs(dst) - lufs) <= TOLERANCE_LU
    assert media.true_peak_db(dst) <= ceiling, (name, fmt, media.true_peak_db(dst))
    pcm, rate = media.decode_pcm(dst)
    assert (max_true_peak_db(pcm, rate) or -99) <= ceiling + 0.02  # our detector agrees
    report = result.loudness_report
    assert report is not None and report.target is not None
    assert report.target.integrated_lufs == lufs and report.target.true_peak_db == ceiling
    assert report.after.integrated_lufs is not None
    assert abs(report.after.integrated_lufs - measured) <= 0.1  # the report tells the truth
    assert report.before is not None and report.before.integrated_lufs is not None


def test_before_fix_speech_missed_by_static_gain(materials: dict[str, speech.Material]) -> None:
    """The material really needs the limiter: a gain capped by the true peak falls short."""
    src = media._ebur128(materials["studio"].path)
    capped_gain = min(-16.0 - src["I"], -1.5 - src["TP"])
    assert src["I"] + capped_gain < -16.0 - 1.0


def test_heavy_limiting_is_reached_and_warned(
    materials: dict[str, speech.Material], tmp_path: Path
) -> None:
    dst = tmp_path / "o.wav"
    recipe = Recipe(normalize=Normalize(target_lufs=-11.0, true_peak_db=-1.0))
    report = render(str(materials["studio"].path), str(dst), recipe, "wav").loudness_report
    assert report is not None
    assert abs(media.integrated_lufs(dst) - -11.0) <= TOLERANCE_LU
    assert media.true_peak_db(dst) <= -1.0
    assert report.limiter_max_reduction_db > 6.0
    assert "heavy_limiting" in [w.code for w in report.warnings]


def test_unreachable_target_stops_and_says_so(tmp_path: Path) -> None:
    """A sine reads its peak level in LUFS: -5 LUFS under a -8 dBTP ceiling cannot be made."""
    src = media.write_tone(tmp_path / "t.wav", seconds=4.0, freq=997, amplitude_dbfs=-20.0)
    dst = tmp_path / "o.flac"
    recipe = Recipe(normalize=Normalize(target_lufs=-5.0, true_peak_db=-8.0))
    report = render(str(src), str(dst), recipe, "flac").loudness_report
    assert report is not None
    assert media.true_peak_db(dst) <= -8.0
    assert "target_unreachable" in [w.code for w in report.warnings]


def test_trimmed_window_is_what_is_normalised(
    materials: dict[str, speech.Material], tmp_path: Path
) -> None:
    dst = tmp_path / "o.mp3"
    recipe = Recipe(trim=Trim(start_ms=2000, end_ms=9000), normalize=Normalize(preset="spotify"))
    report = render(str(materials["studio"].path), str(dst), recipe, "mp3").loudness_report
    assert report is not None and report.target is not None
    assert report.target.preset == "spotify" and report.target.integrated_lufs == -14.0
    assert abs(media.integrated_lufs(dst) - -14.0) <= TOLERANCE_LU
    assert media.true_peak_db(dst) <= -1.0


def test_mono_podcast_preset_aims_three_lu_lower(
    materials: dict[str, speech.Material], tmp_path: Path
) -> None:
    dst = tmp_path / "o.mp3"
    recipe = Recipe(normalize=Normalize(preset="apple-podcasts"), channels="mono")
    report = render(str(materials["studio"].path), str(dst), recipe, "mp3").loudness_report
    assert report is not None and report.target is not None
    assert report.target.integrated_lufs == -19.0
    assert abs(media.integrated_lufs(dst) - -19.0) <= TOLERANCE_LU
    assert media.true_peak_db(dst) <= -1.0


def test_acx_preset_meets_rms_and_peak_and_reports_noise_floor(
    materials: dict[str, speech.Material], tmp_path: Path
) -> None:
    clean = tmp_path / "clean.flac"
    recipe = Recipe(normalize=Normalize(preset="audiobook-acx"))
    report = render(str(materials["hires"].path), str(clean), recipe, "flac").loudness_report
    assert report is not None and report.acx is not None
    pcm, _ = media.decode_pcm(clean)
    rms = media.rms_db(pcm)
    assert -23.0 <= rms <= -18.0
    assert 20 * np.log10(np.max(np.abs(pcm))) <= -3.0
    assert report.acx.rms_pass and report.acx.peak_pass
    assert abs((report.acx.rms_db or 0) - rms) <= 0.2
    # espeak's pauses are digital silence: no room tone, so the floor is that of the voice's
    # quietest half second; the noisy laptop take must fail the -60 dBFS check
    noisy = tmp_path / "noisy.mp3"
    noisy_report = render(str(materials["laptop"].path), str(noisy), recipe, "mp3").loudness_report
    assert noisy_report is not None and noisy_report.acx is not None
    assert noisy_report.acx.rms_pass and noisy_report.acx.peak_pass
    assert not noisy_report.acx.noise_floor_pass and not noisy_report.acx.passed
    assert "acx_noise_floor" in [w.code for w in noisy_report.warnings]


def test_preview_codec_is_verified_like_a_save(
    materials: dict[str, speech.Material], tmp_path: Path
) -> None:
    from audioprep.services.worker.pipeline.formats import PREVIEW_OPTIONS

    dst = tmp_path / "p.opus"
    recipe = Recipe(normalize=Normalize(preset="apple-podcasts"))
    render(str(materials["music"].path), str(dst), recipe, "opus", options=PREVIEW_OPTIONS)
    assert abs(media.integrated_lufs(dst) - -16.0) <= TOLERANCE_LU
    assert media.true_peak_db(dst) <= -1.0


def test_render_without_normalize_reports_levels(
    materials: dict[str, speech.Material], tmp_path: Path
) -> None:
    dst = tmp_path / "o.wav"
    report = render(
        str(materials["phone"].path), str(dst), Recipe(gain_db=-3.0), "wav"
    ).loudness_report
    assert report is not None and report.target is None and report.gain_db == -3.0
    assert report.after.integrated_lufs is not None
    assert abs(report.after.integrated_lufs - media.integrated_lufs(dst)) <= 0.1


def test_passes_are_reported_as_stages_with_monotonic_progress(
    materials: dict[str, speech.Material], tmp_path: Path
) -> None:
    """Issue 15 bug 12: measuring passes are stages, not a progress stuck at 1 %."""
    stages: list[str] = []
    values: list[float] = []
    recipe = Recipe(trim=Trim(start_ms=1000), normalize=Normalize(preset="spotify"))
    render(
        str(materials["studio"].path),
        str(tmp_path / "o.opus"),
        recipe,
        "opus",
        on_progress=values.append,
        on_stage=stages.append,
    )
    assert stages[0] == "measuring" and "calibrating" in stages
    assert stages.index("rendering") > stages.index("calibrating")
    assert stages[-1].startswith("verifying")
    assert values == sorted(values) and values[-1] == 1.0
    assert any(v < 0.3 for v in values) and any(v > 0.5 for v in values)


def test_long_sources_spill_peaks_and_land_the_same(
    materials: dict[str, speech.Material], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the in-memory limit later passes re-decode and read the peaks from scratch."""
    from audioprep.services.worker.pipeline import signal_path

    recipe = Recipe(normalize=Normalize(target_lufs=-14.0, true_peak_db=-1.0))
    kept = render(str(materials["studio"].path), str(tmp_path / "a.flac"), recipe, "flac")
    monkeypatch.setattr(signal_path, "PCM_CACHE_BYTES", 200_000)
    spilled_dir = tmp_path / "spill"
    spilled_dir.mkdir()
    spilled = render(str(materials["studio"].path), str(spilled_dir / "b.flac"), recipe, "flac")
    assert kept.loudness_report is not None and spilled.loudness_report is not None
    assert abs(kept.loudness_report.gain_db - spilled.loudness_report.gain_db) <= 0.05
    assert abs(media.integrated_lufs(spilled_dir / "b.flac") - -14.0) <= TOLERANCE_LU
    assert media.true_peak_db(spilled_dir / "b.flac") <= -1.0
    assert sorted(p.name for p in spilled_dir.iterdir()) == ["b.flac"]  # scratch removed


@pytest.mark.parametrize("fmt", ["flac", "mp3"])
def test_long_sources_calibrate_on_excerpts_and_still_land(
    materials: dict[str, speech.Material],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fmt: str,
) -> None:
    """Past LONG_SOURCE_MS the dry runs run on 8 excerpts; the encoded file still lands."""
    from audioprep.services.worker.pipeline import excerpt
    from audioprep.services.worker.pipeline import render as render_mod

    monkeypatch.setattr(render_mod, "LONG_SOURCE_MS", 5_000)
    monkeypatch.setattr(excerpt, "EXCERPT_MS", 700)
    built: list[str] = []
    real_build = excerpt.build_excerpt

    def spy(*args: object, **kwargs: object) -> object:
        made = real_build(*args, **kwargs)  # type: ignore[arg-type]
        built.append(made.path if made else "")
        return made

    monkeypatch.setattr(render_mod, "build_excerpt", spy)
    out_dir = tmp_path / "o"
    out_dir.mkdir()
    dst = out_dir / f"o.{EXT[fmt]}"
    recipe = Recipe(normalize=Normalize(target_lufs=-14.0, true_peak_db=-1.0))
    report = render(str(materials["studio"].path), str(dst), recipe, fmt).loudness_report
    assert built and built[0].endswith("excerpt.wav")
    assert report is not None and report.measuring_passes >= 1
    assert abs(media.integrated_lufs(dst) - -14.0) <= TOLERANCE_LU
    assert media.true_peak_db(dst) <= -1.0
    assert sorted(p.name for p in out_dir.iterdir()) == [dst.name]  # excerpt removed


def _write_71_flac(path: Path, seconds: float = 6.0, rate: int = 48000) -> Path:
    """8 channels, written packed (PyAV's planar path overruns at 8 planes)."""
    import av

    rng = np.random.default_rng(71)
    n = int(seconds * rate)
    pcm = (rng.standard_normal((n, 8)) * 0.08 * 32767).astype(np.int16)
    with av.open(str(path), "w") as out:
        st = out.add_stream("flac", rate=rate, layout="7.1")
        st.format = "s16"
        for i in range(0, n, 4096):
            chunk = np.ascontiguousarray(pcm[i : i + 4096]).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="7.1")
            frame.sample_rate = rate
            for packet in st.encode(frame):
                out.mux(packet)
        for packet in st.encode(None):
            out.mux(packet)
    return path


def test_surround_source_is_analysed_and_normalised_through_the_downmix(tmp_path: Path) -> None:
    """A 7.1 FLAC crashed the analysis (SIGSEGV); its stereo downmix is quieter than the 7.1
    measurement, and with no limiting needed the verification must still move the gain."""
    from audioprep.services.worker.pipeline.analyse import analyse

    src = _write_71_flac(tmp_path / "s71.flac")
    analysis = analyse(str(src))
    assert analysis.info.channels == 8 and analysis.loudness.integrated_lufs is not None
    dst = tmp_path / "o.mp3"
    result = render(str(src), str(dst), Recipe(normalize=Normalize(preset="spotify")), "mp3")
    assert result.channels == 2
    assert abs(media.integrated_lufs(dst) - -14.0) <= TOLERANCE_LU
    assert media.true_peak_db(dst) <= -1.0
