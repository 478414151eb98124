"""The numpy true-peak limiter and detector: ceiling held, no delay, streaming = whole."""

from __future__ import annotations

import numpy as np
import pytest

from audioprep.services.worker.pipeline.limiter import TruePeakLimiter
from audioprep.services.worker.pipeline.true_peak import (
    PeakDetector,
    max_true_peak_db,
    oversampling_factor,
)

RATE = 44100


def _signal(seconds: float = 3.0, channels: int = 2) -> np.ndarray:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((channels, int(RATE * seconds))) * 0.25
    x[:, 20000:20040] *= 4.0  # a burst far over the ceiling
    return x.astype(np.float32)


def _run(lim: TruePeakLimiter, x: np.ndarray, block: int) -> np.ndarray:
    out = [lim.push(x[:, i : i + block]) for i in range(0, x.shape[1], block)]
    out.append(lim.flush())
    return np.concatenate(out, axis=1)


def test_ceiling_held_at_the_true_peak() -> None:
    x = _signal()
    assert (max_true_peak_db(x, RATE) or 0) > 6.0
    y = _run(TruePeakLimiter(RATE, 2, -1.0), x, 4096)
    assert (max_true_peak_db(y, RATE) or 0) <= -1.0 + 0.01


@pytest.mark.parametrize("block", [1, 333, 1024, 50000])
def test_streaming_matches_one_block_and_keeps_length(block: int) -> None:
    x = _signal(seconds=1.0)
    whole = _run(TruePeakLimiter(RATE, 2, -1.0), x, x.shape[1])
    streamed = _run(TruePeakLimiter(RATE, 2, -1.0), x, block)
    assert streamed.shape == x.shape == whole.shape
    assert np.max(np.abs(streamed - whole)) < 1e-6


def test_no_added_delay_and_untouched_below_the_ceiling() -> None:
    x = _signal() * 0.05  # peaks well under -1 dBTP
    y = _run(TruePeakLimiter(RATE, 2, -1.0), x, 4096)
    assert np.array_equal(y, x)


def test_gain_reduction_is_reported_and_local() -> None:
    x = _signal()
    lim = TruePeakLimiter(RATE, 2, -1.0)
    y = _run(lim, x, 4096)
    assert lim.max_reduction_db > 6.0
    # far from the burst the limiter has recovered: the signal is only scaled where needed
    quiet_part = slice(60000, 80000)
    ratio = np.abs(y[:, quiet_part]).max() / np.abs(x[:, quiet_part]).max()
    assert ratio > 0.5


def test_precomputed_peaks_scale_with_gain() -> None:
    """One detection at gain 1 serves every pass: peaks(g·x) = g·peaks(x)."""
    x = _signal(seconds=1.0)
    gain = 2.5
    direct = _run(TruePeakLimiter(RATE, 2, -1.0), x * gain, 2048)
    det = PeakDetector(RATE, 2)
    lim = TruePeakLimiter(RATE, 2, -1.0)
    out = [
        lim.push(x[:, i : i + 2048] * gain, det.push(x[:, i : i + 2048]) * gain)
        for i in range(0, x.shape[1], 2048)
    ]
    out.append(lim.flush(det.flush() * gain))
    assert np.max(np.abs(np.concatenate(out, axis=1) - direct)) < 1e-5


def test_detector_sees_inter_sample_peaks() -> None:
    """A sine at fs/4 sampled at ±45°: samples read -3 dB below the real peak."""
    n = np.arange(4000)
    x = np.sin(np.pi / 2 * n + np.pi / 4).astype(np.float32)[None, :] * 0.5
    sample_peak = 20 * np.log10(np.max(np.abs(x)))
    assert abs(sample_peak - (-6.02 - 0.0) + 3.01) < 0.05  # -9.03 dBFS at the samples
    assert abs((max_true_peak_db(x, RATE) or 0) - -6.02) < 0.1


def test_oversampling_reaches_192k() -> None:
    assert oversampling_factor(48000) == 4
    assert oversampling_factor(44100) == 5
    assert oversampling_factor(8000) == 24
    assert oversampling_factor(96000) == 4
