"""RNNoise (the model PyPI `pyrnnoise` ships) as a streaming stage.

RNNoise takes 480-sample frames at 48 kHz in 16-bit scale and answers with the cleaned frame
and a speech probability. We call the library directly with float frames (pyrnnoise's own
wrapper rounds to int16 and clips), a block of frames per call, one state per channel (the
library: rnnoise_lib.py, our SIMD build or the wheel's), and:
- mix the cleaned signal with the original so noise drops by at most `amount_db`
  (out = wet·(1-a) + dry·a, a = 10^(-amount/20)): in noise the result is the dry signal
  `amount_db` down, in speech it is RNNoise's;
- remove RNNoise's delay (measured: 960 samples, 20 ms): output is sample-aligned with the
  input and has the same length.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from audioprep.services.worker.pipeline.rnnoise_lib import FRAME, Rnnoise, load

Samples = npt.NDArray[np.float32]

RATE = 48_000
DELAY = 960  # RNNoise's output lags its input by two frames (tests/unit/test_voice.py)
__all__ = ["DELAY", "FRAME", "RATE", "Denoiser", "auto_amount_db"]


class Denoiser:
    """Feed planar float blocks at 48 kHz; get denoised, aligned blocks back."""

    def __init__(self, channels: int, amount_db: float, rnnoise: Rnnoise | None = None) -> None:
        self._rnnoise = rnnoise or load()
        self._states = [self._rnnoise.create() for _ in range(channels)]
        self._dry_gain = np.float32(10 ** (-amount_db / 20))
        self._wet_gain = np.float32(1.0) - self._dry_gain
        self._pending = np.zeros((channels, 0), dtype=np.float32)
        self._dry = np.zeros((channels, DELAY), dtype=np.float32)  # dry, delayed like RNNoise
        self._to_drop = DELAY
        self.samples_in = 0
        self.samples_out = 0

    def push(self, block: Samples) -> Samples:
        self.samples_in += block.shape[1]
        data = np.concatenate([self._pending, block], axis=1)
        whole = data.shape[1] // FRAME * FRAME
        self._pending = data[:, whole:]
        return self._frames(data[:, :whole])

    def flush(self) -> Samples:
        pad = (-self._pending.shape[1]) % FRAME + DELAY
        channels = self._pending.shape[0]
        tail = np.concatenate([self._pending, np.zeros((channels, pad), dtype=np.float32)], axis=1)
        self._pending = np.zeros((channels, 0), dtype=np.float32)
        out = self._frames(tail)
        keep = self.samples_in - (self.samples_out - out.shape[1])
        self.samples_out = self.samples_in
        return out[:, : max(0, keep)]

    def close(self) -> None:
        for state in self._states:
            self._rnnoise.destroy(state)
        self._states = []

    def _frames(self, data: Samples) -> Samples:
        channels, n = data.shape
        if n == 0:
            return np.zeros((channels, 0), dtype=np.float32)
        data = np.ascontiguousarray(data, dtype=np.float32)
        wet = np.empty_like(data)
        vad = np.empty(n // FRAME, dtype=np.float32)
        for c, state in enumerate(self._states):
            self._rnnoise.frames(state, data[c], wet[c], vad)  # vad unused: the analysis has one
        dry = np.concatenate([self._dry, data], axis=1)
        self._dry = dry[:, n:]
        mixed = (wet * self._wet_gain + dry[:, :n] * self._dry_gain).astype(np.float32)
        drop = min(self._to_drop, n)
        self._to_drop -= drop
        out = mixed[:, drop:]
        self.samples_out += out.shape[1]
        return out


def auto_amount_db(noise_floor_db: float | None, speech_level_db: float | None) -> float:
    """`denoise: "auto"`: enough to put the floor ~45 dB under the speech, 6-30 dB."""
    if noise_floor_db is None or speech_level_db is None:
        return 0.0  # digital-silence pauses: nothing to remove
    snr = speech_level_db - noise_floor_db
    return float(min(30.0, max(6.0, 45.0 - snr)))
