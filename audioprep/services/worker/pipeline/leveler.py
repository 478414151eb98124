"""Speech-aware leveler: ride each passage's speech level towards the file's speech level.

The gain curve is a pure function of the measuring pass (20 ms frame levels and voice
activity): the local speech level is the power mean of the speech frames within ±1.5 s
(pauses hold the last level, so silence is never pumped up), the gain is
strength × (overall speech level − local level), capped at ±15 dB and smoothed over 0.6 s.
Applying it is a per-sample interpolation with no delay.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from audioprep.services.worker.pipeline.voice_analysis import VoiceAnalysis

Samples = npt.NDArray[np.float32]
Floats = npt.NDArray[np.float64]

WINDOW_S = 3.0
SMOOTH_S = 0.6
MAX_GAIN_DB = 15.0


def leveler_gains_db(analysis: VoiceAnalysis, strength: float) -> Floats:
    """Gain per analysis frame (dB)."""
    levels = analysis.frame_db
    speech = analysis.speech & (levels > -90)
    n = len(levels)
    if n == 0 or not speech.any() or strength <= 0:
        return np.zeros(n)
    frame_s = analysis.frame_samples / analysis.rate
    half = max(1, round(WINDOW_S / 2 / frame_s))
    power = np.where(speech, np.power(10.0, levels / 10), 0.0)
    count = speech.astype(np.float64)
    csum_p = np.concatenate([[0.0], np.cumsum(power)])
    csum_c = np.concatenate([[0.0], np.cumsum(count)])
    lo = np.clip(np.arange(n) - half, 0, n)
    hi = np.clip(np.arange(n) + half + 1, 0, n)
    num = csum_p[hi] - csum_p[lo]
    den = csum_c[hi] - csum_c[lo]
    local = np.full(n, np.nan)
    have = den > 0
    local[have] = 10 * np.log10(num[have] / den[have])
    # pauses far from speech hold the nearest level before them (then after, at the start)
    idx = np.where(have, np.arange(n), -1)
    np.maximum.accumulate(idx, out=idx)
    first = int(np.argmax(have))
    idx[idx < 0] = first
    local = local[idx]
    overall = 10 * np.log10(np.mean(np.power(10.0, levels[speech] / 10)))
    gains = np.clip(strength * (overall - local), -MAX_GAIN_DB, MAX_GAIN_DB)
    smooth = max(1, round(SMOOTH_S / frame_s))
    kernel = np.ones(smooth) / smooth
    padded = np.concatenate([np.full(smooth, gains[0]), gains, np.full(smooth, gains[-1])])
    return np.asarray(np.convolve(padded, kernel, mode="same")[smooth:-smooth], dtype=np.float64)


class Leveler:
    """Applies a frame gain curve sample by sample (linear interpolation between frames)."""

    def __init__(
        self,
        channels: int,
        gains_db: Floats,
        frame_samples: int,
        *,
        scale: float = 1.0,
        offset: float = 0.0,
    ) -> None:
        # frame centres in samples of the stream this stage sees: (source - offset) * scale
        self._channels = channels
        self._x = ((np.arange(len(gains_db)) + 0.5) * frame_samples - offset) * scale
        self._gain = np.power(10.0, gains_db / 20) if len(gains_db) else np.ones(1)
        if not len(gains_db):
            self._x = np.zeros(1)
        self._position = 0

    def push(self, block: Samples) -> Samples:
        n = block.shape[1]
        positions = np.arange(self._position, self._position + n, dtype=np.float64)
        self._position += n
        gain = np.interp(positions, self._x, self._gain).astype(np.float32)
        return (block * gain).astype(np.float32)

    def flush(self) -> Samples:
        return np.zeros((self._channels, 0), dtype=np.float32)
