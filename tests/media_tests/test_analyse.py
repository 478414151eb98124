"""Loudness, peaks and the one-pass analysis ingest uses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from audioprep.services.worker.pipeline.analyse import analyse
from audioprep.services.worker.pipeline.loudness import measure_loudness
from audioprep.services.worker.pipeline.peaks import PeakAccumulator, compute_peaks
from audioprep.services.worker.pipeline.voice_analysis import measure_voice
from tests import media


@pytest.mark.parametrize("dbfs", [-20.0, -10.0])
def test_loudness_of_known_sine(tmp_path: Path, dbfs: float) -> None:
    path = media.write_tone(tmp_path / "a.wav", seconds=4.0, freq=997, amplitude_dbfs=dbfs)
    loud = measure_loudness(str(path))
    assert loud.integrated_lufs is not None and loud.true_peak_db is not None
    assert abs(loud.integrated_lufs - media.sine_lufs(dbfs)) <= 0.5
    assert abs(loud.true_peak_db - dbfs) <= 0.2
    assert loud.integrated_lufs == pytest.approx(media.integrated_lufs(path), abs=0.05)


def test_loudness_of_silence_does_not_crash(tmp_path: Path) -> None:
    loud = measure_loudness(str(media.write_silence(tmp_path / "s.wav", seconds=2.0)))
    assert loud.integrated_lufs is None and loud.true_peak_db is None


def test_analyse_one_pass(tmp_path: Path) -> None:
    path = media.write_tone(tmp_path / "a.mp3", seconds=3.0, freq=997, title="Demo")
    seen: list[float] = []
    result = analyse(str(path), points=100, on_progress=seen.append)
    assert abs(result.info.duration_ms - 3000) <= 20
    assert result.info.title == "Demo" and result.info.codec == "mp3"
    assert result.loudness.integrated_lufs is not None
    assert abs(result.loudness.integrated_lufs - media.sine_lufs(-20.0)) <= 0.7
    peaks = result.peaks
    assert peaks["version"] == 1 and peaks["sampleRate"] == 44100 and peaks["points"] == 100
    assert len(peaks["min"]) == len(peaks["max"]) == 100
    assert max(peaks["max"]) == pytest.approx(0.1, abs=0.01)
    assert min(peaks["min"]) == pytest.approx(-0.1, abs=0.01)
    assert seen[-1] == 1.0 and seen == sorted(seen)


def test_peaks_follow_the_signal(tmp_path: Path) -> None:
    path = media.write_tone(tmp_path / "a.flac", seconds=2.0, lead_silence_s=1.0)
    peaks = compute_peaks(str(path), points=30)
    assert peaks["points"] == 30
    assert max(peaks["max"][:9]) == 0.0  # first third is silence
    assert min(peaks["max"][11:]) == pytest.approx(0.1, abs=0.01)


def test_peak_accumulator_bounded_when_input_is_longer_than_expected() -> None:
    acc = PeakAccumulator(points=10, expected_samples=100, sample_rate=1000)
    ramp = np.linspace(-1, 1, 100_000, dtype=np.float32)[None, :]
    for i in range(0, ramp.shape[1], 777):
        acc.feed(ramp[:, i : i + 777])
    out = acc.result()
    assert out["points"] == 10
    assert out["min"][0] == pytest.approx(-1.0) and out["max"][-1] == pytest.approx(1.0)
    assert out["max"] == sorted(out["max"])


def test_sound_bounds(tmp_path: Path) -> None:
    path = media.write_tone(tmp_path / "a.wav", seconds=1.5, lead_silence_s=1.0, tail_silence_s=0.5)
    bounds = measure_voice(str(path)).speech_bounds_ms(0)
    assert bounds is not None
    assert abs(bounds[0] - 1000) <= 20 and abs(bounds[1] - 2500) <= 20
    silent = media.write_silence(tmp_path / "s.wav", seconds=1.0)
    assert measure_voice(str(silent)).speech_bounds_ms(150) is None
