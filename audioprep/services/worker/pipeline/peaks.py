"""Waveform peaks (min/max pairs) for the editor, computed in blocks so memory stays flat."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from audioprep.services.worker.pipeline.decode import decode_frames, open_audio
from audioprep.services.worker.pipeline.filters import Filter, make_graph, run_graph
from audioprep.services.worker.pipeline.progress import Progress

PEAKS_VERSION = 1
PLANAR_FLOAT: Filter = ("aformat", "sample_fmts=fltp")
# PyAV 18 overruns its plane array converting 8-channel planar frames to numpy (SIGSEGV on a
# 7.1 FLAC): numpy-side analysis of more than two channels works on a stereo downmix.
_PLANAR_STEREO: Filter = ("aformat", "sample_fmts=fltp:channel_layouts=stereo")


def planar_float_for(channels: int) -> Filter:
    """Planar float for numpy; a stereo downmix when there are more than two channels."""
    return PLANAR_FLOAT if channels <= 2 else _PLANAR_STEREO


_BLOCKS_PER_POINT = 4
_MAX_BLOCKS_PER_POINT = 16

Floats = npt.NDArray[np.float32]


class PeakAccumulator:
    """Min/max per block of samples; halves its resolution instead of growing without bound."""

    def __init__(self, *, points: int, expected_samples: int, sample_rate: int) -> None:
        self.points = max(points, 1)
        self.sample_rate = sample_rate
        self._block = max(1, expected_samples // (self.points * _BLOCKS_PER_POINT))
        self._mins: list[Floats] = []
        self._maxs: list[Floats] = []
        self._count = 0
        self._pending_min: Floats = np.zeros(0, dtype=np.float32)
        self._pending_max: Floats = np.zeros(0, dtype=np.float32)

    def feed(self, pcm: Floats) -> None:
        """Add planar samples shaped (channels, n)."""
        if pcm.shape[1] == 0:
            return
        lo = np.concatenate([self._pending_min, pcm.min(axis=0)])
        hi = np.concatenate([self._pending_max, pcm.max(axis=0)])
        full = lo.size // self._block * self._block
        if full:
            self._append(
                lo[:full].reshape(-1, self._block).min(axis=1),
                hi[:full].reshape(-1, self._block).max(axis=1),
            )
        self._pending_min, self._pending_max = lo[full:], hi[full:]

    def _append(self, lo: Floats, hi: Floats) -> None:
        self._mins.append(lo)
        self._maxs.append(hi)
        self._count += lo.size
        if self._count > self.points * _MAX_BLOCKS_PER_POINT:
            self._halve()

    def _halve(self) -> None:
        """Merge neighbouring blocks: double the block size, halve the memory."""
        lo, hi = np.concatenate(self._mins), np.concatenate(self._maxs)
        even = lo.size // 2 * 2
        pend_lo, pend_hi = lo[even:], hi[even:]
        lo, hi = lo[:even].reshape(-1, 2).min(axis=1), hi[:even].reshape(-1, 2).max(axis=1)
        self._mins, self._maxs, self._count = [lo], [hi], lo.size
        self._block *= 2
        # an odd block left over becomes pending input at the new block size (a bit short)
        self._pending_min = np.concatenate([pend_lo, self._pending_min])
        self._pending_max = np.concatenate([pend_hi, self._pending_max])

    def result(self) -> dict[str, Any]:
        """JSON-able peaks: `points` min/max pairs covering the whole input."""
        lo = np.concatenate([*self._mins, self._pending_min[:1] if self._pending_min.size else []])
        hi = np.concatenate([*self._maxs, self._pending_max[:1] if self._pending_max.size else []])
        if self._pending_min.size:
            lo[-1], hi[-1] = self._pending_min.min(), self._pending_max.max()
        n = min(self.points, lo.size)
        if n == 0:
            mins: list[float] = []
            maxs: list[float] = []
        else:
            edges = np.linspace(0, lo.size, n + 1).astype(np.int64)[:-1]
            mins = np.round(np.minimum.reduceat(lo, edges), 4).astype(float).tolist()
            maxs = np.round(np.maximum.reduceat(hi, edges), 4).astype(float).tolist()
        return {
            "version": PEAKS_VERSION,
            "sampleRate": self.sample_rate,
            "points": n,
            "min": mins,
            "max": maxs,
        }


def compute_peaks(
    path: str,
    *,
    points: int = 2000,
    on_progress: Callable[[float], None] | None = None,
) -> dict[str, Any]:
    """Peaks of a whole source in one streaming decode."""
    with open_audio(path) as (container, stream):
        rate = stream.codec_context.sample_rate
        total_ms = container.duration / 1000 if container.duration else None
        acc = PeakAccumulator(
            points=points, expected_samples=int((total_ms or 0) * rate / 1000), sample_rate=rate
        )
        progress = Progress(on_progress, total_ms)
        graph = make_graph(stream, [planar_float_for(stream.codec_context.channels)])
        for frame in run_graph(graph, decode_frames(container, stream)):
            acc.feed(frame.to_ndarray())  # type: ignore[arg-type]
            progress.advance_samples(frame.samples, rate)
    progress.done()
    return acc.result()
