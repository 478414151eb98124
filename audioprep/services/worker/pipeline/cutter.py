"""Cut ranges out of a stream with short equal-power crossfades (shortenPauses).

A cut [a, b) (stream samples) removes b - a samples: the output runs to a - h, crossfades
x[a-h, a+h) into x[b-h, b+h), and goes on from b + h (h = 5 ms). So the output is exactly
the input minus the cut lengths, and every sample outside the cuts keeps its place relative
to the cuts before it (a cut list in source ms says what moved where).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Samples = npt.NDArray[np.float32]

HALF_CROSSFADE_MS = 5.0


def plan_pause_cuts(
    pauses_ms: list[tuple[float, float]], max_pause_ms: float
) -> list[tuple[int, int]]:
    """Pauses longer than the maximum keep `max_pause_ms` (half before, half after the cut)."""
    cuts = []
    for start, end in pauses_ms:
        if end - start > max_pause_ms:
            keep = max_pause_ms / 2
            cuts.append((round(start + keep), round(end - keep)))
    return cuts


class Cutter:
    """Feed planar float blocks; cuts are (start, end) stream sample indices, sorted."""

    def __init__(self, channels: int, cuts: list[tuple[int, int]], rate: int) -> None:
        self._h = max(1, round(rate * HALF_CROSSFADE_MS / 1000))
        h = self._h
        self._cuts = [(a, b) for a, b in cuts if b - a >= 2 * h and a - h >= 0]
        self.applied = list(self._cuts)
        self._channels = channels
        self._buf = np.zeros((channels, 0), dtype=np.float32)
        self._buf_start = 0  # absolute index of _buf[:, 0]
        self._fade_out: Samples | None = None
        ramp = np.linspace(0.0, np.pi / 2, 2 * h, dtype=np.float64)
        self._fo = np.cos(ramp).astype(np.float32)
        self._fi = np.sin(ramp).astype(np.float32)

    def push(self, block: Samples) -> Samples:
        self._buf = np.concatenate([self._buf, block], axis=1)
        return self._advance()

    def flush(self) -> Samples:
        out = self._advance()
        tail = [out]
        if self._fade_out is not None:  # the stream ended inside a cut: fade to silence
            tail.append(self._fade_out * self._fo)
            self._fade_out = None
        tail.append(self._buf)
        self._buf = np.zeros((self._channels, 0), dtype=np.float32)
        return np.concatenate(tail, axis=1)

    def _take(self, upto: int) -> Samples:
        """Remove and return buffered samples with absolute index < upto."""
        n = max(0, min(upto - self._buf_start, self._buf.shape[1]))
        taken, self._buf = self._buf[:, :n], self._buf[:, n:]
        self._buf_start += n
        return taken

    def _advance(self) -> Samples:
        out: list[Samples] = []
        h = self._h
        end = self._buf_start + self._buf.shape[1]
        while self._cuts:
            a, b = self._cuts[0]
            if self._fade_out is None:
                out.append(self._take(a - h))
                if end < a + h:
                    break
                self._fade_out = self._take(a + h)
            self._take(b - h)  # the cut itself
            if end < b + h:
                break
            fade_in = self._take(b + h)
            out.append(self._fade_out * self._fo + fade_in * self._fi)
            self._fade_out = None
            self._cuts.pop(0)
        if not self._cuts and self._fade_out is None:
            out.append(self._take(end))
        if not out:
            return np.zeros((self._channels, 0), dtype=np.float32)
        return np.concatenate(out, axis=1)
