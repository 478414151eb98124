"""Issue 17: the voice chain measured on espeak speech with noise, hum, a level step and
pauses, scored against the clean reference (PESQ wide band, STOI)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pesq import pesq
from pystoi import stoi
from scipy.signal import resample_poly

from audioprep.domain.recipe import Denoise, Leveler, Recipe, ShortenPauses
from audioprep.services.worker.pipeline.render import render
from audioprep.services.worker.pipeline.voice_analysis import VoiceAnalyzer, measure_voice
from tests import media, speech

RATE = 48000


@pytest.fixture(scope="module")
def mixes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, speech.VoiceMix]:
    speech.require_espeak()
    root = tmp_path_factory.mktemp("voice")
    return {
        "snr15-hum50": speech.voice_mix(root / "a", snr_db=15, hum_hz=50, name="a"),
        "snr8": speech.voice_mix(root / "b", snr_db=8, name="b"),
        "clean-hum60": speech.voice_mix(root / "c", snr_db=None, hum_hz=60, name="c"),
        "clean": speech.voice_mix(root / "d", snr_db=None, name="d"),
        "step10": speech.voice_mix(root / "e", snr_db=30, level_step_db=10, name="e"),
    }


def _scores(clean: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    ref = resample_poly(clean[0], 1, 3)
    deg = resample_poly(out[0][: clean.shape[1]], 1, 3)
    return float(pesq(16000, ref, deg, "wb")), float(stoi(ref, deg, 16000))


def _line_db(pcm: np.ndarray, rate: int, freq: float) -> float:
    """Level of a spectral line (dB, relative) in the leading room tone (no speech there):
    1 Hz bins over the second from 0.5 s."""
    x = pcm[0][rate // 2 : rate // 2 + rate]
    spec = np.abs(np.fft.rfft(x * np.hanning(rate)))
    return float(20 * np.log10(spec[int(freq) - 1 : int(freq) + 2].max() + 1e-12))


def _render(mix: speech.VoiceMix, recipe: Recipe, tmp_path: Path) -> tuple[np.ndarray, object]:
    dst = tmp_path / "out.wav"
    result = render(str(mix.path), str(dst), recipe, "wav")
    pcm, rate = media.decode_pcm(dst)
    assert rate == RATE
    return pcm, result


def test_analysis_finds_noise_floor_hum_and_speech(mixes: dict[str, speech.VoiceMix]) -> None:
    noisy = measure_voice(str(mixes["snr15-hum50"].path))
    assert noisy.hum is not None and noisy.hum.frequency_hz == 50.0
    assert noisy.noise_floor_db is not None and noisy.snr_db is not None
    assert 8 <= noisy.snr_db <= 25
    assert 0.5 <= noisy.speech_ratio <= 0.9
    hum60 = measure_voice(str(mixes["clean-hum60"].path))
    assert hum60.hum is not None and hum60.hum.frequency_hz == 60.0
    assert measure_voice(str(mixes["clean"].path)).hum is None


def test_denoise_raises_pesq_keeps_stoi_and_lowers_the_floor(
    mixes: dict[str, speech.VoiceMix], tmp_path: Path
) -> None:
    for name in ("snr15-hum50", "snr8"):
        mix = mixes[name]
        out, result = _render(mix, Recipe(highpass_hz=80, dehum="auto", denoise="auto"), tmp_path)
        assert out.shape[1] == mix.noisy.shape[1]  # no cut, no added length
        before = _scores(mix.clean, mix.noisy)
        after = _scores(mix.clean, out)
        assert after[0] > before[0] + 0.3, (name, before, after)
        assert after[1] >= before[1] - 0.02, (name, before, after)
        # noise floor in the 3 s inner pause (and the 2 s head) lowered by >= 10 dB
        head = slice(int(0.2 * RATE), int(1.8 * RATE))
        floor_before = media.rms_db(mix.noisy[:, head])
        floor_after = media.rms_db(out[:, head])
        assert floor_after <= floor_before - 10, (name, floor_before, floor_after)
        report = result.voice_report  # type: ignore[attr-defined]
        assert report.steps.denoise_db is not None and report.steps.highpass_hz == 80


def test_no_added_delay(mixes: dict[str, speech.VoiceMix], tmp_path: Path) -> None:
    mix = mixes["snr15-hum50"]
    out, _ = _render(
        mix, Recipe(highpass_hz=80, dehum="auto", denoise=Denoise(amount_db=20)), tmp_path
    )
    a, b = int(2 * RATE), int(6 * RATE)
    corr = np.correlate(out[0][a:b], mix.clean[0][a - 480 : b + 480], "valid")
    lag = int(np.argmax(corr)) - 480
    assert abs(lag) <= RATE // 1000  # within 1 ms


def test_dehum_removes_hum_and_leaves_clean_audio_alone(
    mixes: dict[str, speech.VoiceMix], tmp_path: Path
) -> None:
    mix = mixes["clean-hum60"]
    out, result = _render(mix, Recipe(dehum="auto"), tmp_path)
    for k in (1, 2, 3):
        assert _line_db(out, RATE, 60 * k) <= _line_db(mix.noisy, RATE, 60 * k) - 20
    assert result.voice_report.steps.notched_hz[:2] == [60.0, 120.0]  # type: ignore[attr-defined]
    clean = mixes["clean"]
    untouched, result = _render(clean, Recipe(dehum="auto"), tmp_path)
    assert np.max(np.abs(untouched - clean.noisy)) < 1e-3  # no hum: no notch, no change
    assert result.voice_report is None or not result.voice_report.steps.notched_hz  # type: ignore[attr-defined]


def test_leveler_brings_two_speakers_together(
    mixes: dict[str, speech.VoiceMix], tmp_path: Path
) -> None:
    mix = mixes["step10"]
    (a0, a1), (b0, b1) = mix.speech_ranges_s

    def gap(pcm: np.ndarray) -> float:
        sa = pcm[:, int(a0 * RATE) : int(a1 * RATE)]
        sb = pcm[:, int(b0 * RATE) : int(b1 * RATE)]
        return media.rms_db(sa) - media.rms_db(sb)

    assert gap(mix.noisy) > 8
    out, _ = _render(mix, Recipe(leveler=Leveler(strength=1.0)), tmp_path)
    assert abs(gap(out)) <= 3


def test_trim_silence_is_relative_to_the_noise_floor(
    mixes: dict[str, speech.VoiceMix], tmp_path: Path
) -> None:
    mix = mixes["snr15-hum50"]
    out, result = _render(mix, Recipe(trim_silence=True), tmp_path)
    first_word = mix.speech_ranges_s[0][0]
    steps = result.voice_report.steps  # type: ignore[attr-defined]
    assert steps.trimmed_ms is not None
    lead = first_word - steps.trimmed_ms[0] / 1000
    assert 0.1 <= lead <= 0.3, lead
    assert out.shape[1] < mix.noisy.shape[1] - 3 * RATE  # about 2 s cut at each end


def test_shorten_pauses(mixes: dict[str, speech.VoiceMix], tmp_path: Path) -> None:
    mix = mixes["snr15-hum50"]
    recipe = Recipe(shorten_pauses=ShortenPauses(max_pause_ms=700))
    out, result = _render(mix, recipe, tmp_path)
    steps = result.voice_report.steps  # type: ignore[attr-defined]
    assert steps.cut_total_ms > 1500 and steps.cuts_ms
    # output duration = input - cut list
    assert (
        abs(out.shape[1] - (mix.noisy.shape[1] - steps.cut_total_ms * RATE / 1000)) <= RATE * 0.002
    )
    # no pause in the output longer than max + 50 ms (measured by a fresh analysis)
    analyzer = VoiceAnalyzer(RATE)
    analyzer.feed(out)
    pauses = analyzer.result().pauses_ms()
    assert pauses and max(end - start for start, end in pauses) <= 700 + 50
    # no clicks: the largest sample step stays that of the input
    assert np.max(np.abs(np.diff(out[0]))) <= np.max(np.abs(np.diff(mix.noisy[0]))) * 1.05


def test_ingest_analysis_summary_is_reused(
    mixes: dict[str, speech.VoiceMix], tmp_path: Path
) -> None:
    from audioprep.services.worker.pipeline.analyse import analyse
    from audioprep.services.worker.pipeline.voice_analysis import summary

    mix = mixes["snr15-hum50"]
    info = summary(analyse(str(mix.path)).voice)
    assert info.hum is not None and info.hum.frequency_hz == 50.0
    assert info.noise_floor_db is not None and info.snr_db is not None
    dst = tmp_path / "o.wav"
    result = render(
        str(mix.path), str(dst), Recipe(dehum="auto", denoise="auto"), "wav", source_voice=info
    )
    assert result.voice_report is not None
    assert result.voice_report.before == info  # no second measuring pass was needed
    assert result.voice_report.steps.notched_hz[0] == 50.0
