"""The render's signal path: decode → graph → (true-peak limiter → graph) → frames.

Without a limiter it is one libavfilter graph. With one (normalize), the first graph does
timing, gain and resampling to the output rate in planar float; the numpy limiter holds the
ceiling at that rate (true peak depends on the final rate); a second graph adds the fades
and whatever the consumer needs at the end (the encoder's format, or the meter).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np
from av.audio.frame import AudioFrame

from services.worker.pipeline.decode import decode_frames, open_audio
from services.worker.pipeline.filters import Filter, feed, make_graph, make_pcm_graph, run_graph
from services.worker.pipeline.graph import FLOAT_PLANAR, format_chain, level_chain
from services.worker.pipeline.limiter import TruePeakLimiter


@dataclass(frozen=True, slots=True)
class SignalPath:
    """Everything but the gain and ceiling, which the normaliser tunes pass by pass."""

    timing: list[Filter]  # zero-based pts, trim, tempo
    fades: list[Filter]
    source_rate: int
    rate: int
    layout: str

    @property
    def channels(self) -> int:
        return 1 if self.layout == "mono" else 2


@dataclass(slots=True)
class PathRun:
    """One pass over the source; the limiter's figures are read after the frames ran out."""

    max_reduction_db: float = 0.0
    samples: int = 0
    limited: bool = field(default=False)


def run_path(
    src_path: str,
    path: SignalPath,
    *,
    gain_db: float,
    ceiling_db: float | None,
    tail: list[Filter],
    frame_size: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    stats: PathRun | None = None,
) -> Iterator[AudioFrame]:
    """Frames of the rendered signal; `tail` ends the last graph (encoder format or meter)."""
    stats = stats if stats is not None else PathRun()
    with open_audio(src_path) as (container, source):
        frames = decode_frames(container, source, should_stop=should_stop)
        if ceiling_db is None:
            chain = [
                *path.timing,
                *level_chain(gain_db),
                *path.fades,
                *_to_rate(path),
                *tail,
            ]
            graph = make_graph(source, chain, frame_size=frame_size)
            for frame in run_graph(graph, frames):
                stats.samples += frame.samples
                yield frame
            return
        first = make_graph(
            source, [*path.timing, FLOAT_PLANAR, *level_chain(gain_db), *_to_rate(path)]
        )
        second = make_pcm_graph(path.rate, path.layout, [*path.fades, *tail], frame_size=frame_size)
        limiter = TruePeakLimiter(path.rate, path.channels, ceiling_db)
        stats.limited = True
        pts = 0
        for frame in run_graph(first, frames):
            block = limiter.push(_planar(frame))
            for out in _through(second, block, path, pts):
                stats.samples += out.samples
                yield out
            pts += block.shape[1]
        block = limiter.flush()
        for out in _through(second, block, path, pts):
            stats.samples += out.samples
            yield out
        for out in feed(second, None):
            stats.samples += out.samples
            yield out
        stats.max_reduction_db = limiter.max_reduction_db


def _to_rate(path: SignalPath) -> list[Filter]:
    return format_chain(
        source_rate=path.source_rate, out_rate=path.rate, out_layout=path.layout, sample_fmt="fltp"
    )


def _planar(frame: AudioFrame) -> np.ndarray:
    return np.ascontiguousarray(frame.to_ndarray()[:, : frame.samples], dtype=np.float32)


def _through(
    graph: av.filter.Graph,
    block: np.ndarray,
    path: SignalPath,
    pts: int,
) -> Iterator[AudioFrame]:
    if block.shape[1] == 0:
        return
    frame = AudioFrame.from_ndarray(block, format="fltp", layout=path.layout)
    frame.sample_rate = path.rate
    frame.pts = pts
    frame.time_base = Fraction(1, path.rate)
    yield from feed(graph, frame)
