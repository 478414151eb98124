"""Look-ahead true-peak limiter in numpy, streaming, with its delay removed.

Per sample n the gain the ceiling requires is g[n] = min(0, ceiling - truepeak[n]) dB. The
applied gain is built so it never exceeds what any nearby sample requires:
  hold     h[n] = min g[n-W+1 .. n]                 (W = look-ahead + hold)
  release  r[n] = min(h[n], r[n-1] + step)          (linear recovery in dB, vectorised)
  attack   s[n] = mean 10^(r/20)[n-B+1 .. n]        (B = look-ahead: a smooth ramp)
  output   y[m] = x[m] * s[m + B - 1]
Every term of the mean at m + B - 1 holds g[m] (W >= B), so |y| stays under the ceiling at
the true-peak level (up to the smoothness of s inside one interpolation span). The output is
aligned with the input: no added delay, same length.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from scipy.ndimage import minimum_filter1d

from audioprep.services.worker.pipeline.true_peak import PeakDetector

Samples = npt.NDArray[np.float32]
Floats = npt.NDArray[np.float64]

# Fast enough to shave speech's waveform peaks without pulling whole syllables down: on
# espeak speech at -1 dBTP, 4 dB of gain into this costs 0.3 LU; a 5 ms / 40 ms hold /
# 40 dB/s limiter costs 0.7 LU and cannot reach -14 LUFS at all (docs/loudness.md).
LOOKAHEAD_MS = 2.0
HOLD_MS = 5.0
RELEASE_DB_PER_S = 500.0


class TruePeakLimiter:
    """Feed planar float blocks (channels, n); get the limited audio back, aligned."""

    def __init__(self, rate: int, channels: int, ceiling_db: float) -> None:
        self._ceiling_db = ceiling_db
        self._detector = PeakDetector(rate, channels, floor_db=ceiling_db)
        self._lookahead = max(2, round(rate * LOOKAHEAD_MS / 1000))
        self._window = self._lookahead + round(rate * HOLD_MS / 1000)
        self._step = RELEASE_DB_PER_S / rate
        self._g_tail: Floats = np.zeros(self._window - 1)  # last W-1 required gains (dB)
        self._r_prev = 0.0
        self._s_tail: Floats = np.ones(self._lookahead - 1)  # last B-1 linear release gains
        self._x: Samples = np.zeros((channels, 0), dtype=np.float32)  # input not yet output
        self._x_start = 0  # absolute index of self._x[:, 0]
        self._gain_start = -(self._lookahead - 1)  # absolute index whose gain comes next
        self._pending_gain: Floats = np.zeros(0)
        self.samples_in = 0
        self.max_reduction_db = 0.0

    def push(self, block: Samples, peaks: Floats | None = None) -> Samples:
        """Limit one block; returns what is ready (the look-ahead holds back a few ms).

        `peaks`: what a PeakDetector returned for this very block, when the caller has them
        already (peaks scale with gain, so one detection serves every pass at any gain).
        """
        self.samples_in += block.shape[1]
        self._x = np.concatenate([self._x, block], axis=1)
        return self._apply(self._gains(self._detector.push(block) if peaks is None else peaks))

    def flush(self, peaks: Floats | None = None) -> Samples:
        """The rest, as if silence followed; total output length equals total input."""
        channels = self._x.shape[0]
        pad = self._lookahead + PeakDetector.CONTEXT
        self._x = np.concatenate([self._x, np.zeros((channels, pad), dtype=np.float32)], axis=1)
        remaining = self.samples_in - self._x_start
        tail = self._detector.flush() if peaks is None else peaks
        gains = self._gains(np.concatenate([tail, np.zeros(pad)]))
        return self._apply(gains)[:, : max(0, remaining)]

    def _gains(self, peaks: Floats) -> Floats:
        """Smoothed linear gains for the samples whose peaks just arrived (shifted by B-1)."""
        if len(peaks) == 0:
            return np.zeros(0)
        with np.errstate(divide="ignore"):
            peak_db = 20 * np.log10(peaks)
        need = np.minimum(0.0, self._ceiling_db - peak_db)
        seg = np.concatenate([self._g_tail, need])
        held = minimum_filter1d(seg, self._window, origin=(self._window - 1) // 2, mode="nearest")
        held = held[len(self._g_tail) :]
        self._g_tail = seg[len(seg) - (self._window - 1) :]
        ramp = np.arange(len(held)) * self._step
        released = np.minimum(
            ramp + np.minimum.accumulate(held - ramp), self._r_prev + ramp + self._step
        )
        released = np.minimum(released, 0.0)
        self._r_prev = float(released[-1])
        linear = np.power(10.0, released / 20.0)
        lin_seg = np.concatenate([self._s_tail, linear])
        csum = np.concatenate([[0.0], np.cumsum(lin_seg)])
        b = self._lookahead
        smooth = (csum[b:] - csum[:-b]) / b
        self._s_tail = lin_seg[len(lin_seg) - (b - 1) :]
        if len(smooth):
            self.max_reduction_db = max(
                self.max_reduction_db, -20 * math.log10(max(float(smooth.min()), 1e-12))
            )
        return np.asarray(smooth, dtype=np.float64)

    def _apply(self, gains: Floats) -> Samples:
        """Multiply the held-back input by the gains that are now known for it."""
        gains = np.concatenate([self._pending_gain, gains])
        # gains[0] belongs to input index _gain_start (s[k + B - 1] is the gain of sample k)
        drop = max(0, self._x_start - self._gain_start)
        if drop >= len(gains):
            self._gain_start += len(gains)
            self._pending_gain = np.zeros(0)
            return np.zeros((self._x.shape[0], 0), dtype=np.float32)
        gains = gains[drop:]
        n = min(len(gains), self._x.shape[1])
        out = (self._x[:, :n] * gains[:n]).astype(np.float32)
        self._x = self._x[:, n:]
        self._x_start += n
        self._pending_gain = gains[n:]
        self._gain_start = self._x_start
        return out
