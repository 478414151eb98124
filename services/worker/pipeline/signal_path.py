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
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
import numpy.typing as npt
from av.audio.frame import AudioFrame

from services.worker.pipeline.decode import decode_frames, open_audio
from services.worker.pipeline.filters import Filter, feed, make_graph, make_pcm_graph, run_graph
from services.worker.pipeline.graph import FLOAT_PLANAR, format_chain, level_chain
from services.worker.pipeline.limiter import TruePeakLimiter
from services.worker.pipeline.true_peak import PeakDetector
from shared.errors import RENDER_FAILED, Cancelled, Retryable

Samples = npt.NDArray[np.float32]
Floats = npt.NDArray[np.float64]


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


BLOCK_SAMPLES = 16384
PCM_CACHE_BYTES = 96 * 1024 * 1024  # ~4 minutes of 48 kHz stereo float


class PcmCache:
    """What the first pass computed, for the passes after it.

    Short sources: the first graph's output (timed, resampled, planar float, before gain) and
    its true peaks, in memory: later passes neither decode nor detect. Longer ones spill only
    the peaks to a scratch file (float16, 2 bytes a sample; ±0.004 dB): later passes decode
    again (cheap) but skip the oversampled peak detection (the expensive part). Memory stays
    flat either way.
    """

    def __init__(self, limit_bytes: int | None = None, spill_dir: Path | None = None) -> None:
        self.blocks: list[tuple[Samples, Floats]] | None = []
        self.tail_peaks: Floats | None = None
        self._bytes = 0
        self._limit = PCM_CACHE_BYTES if limit_bytes is None else limit_bytes
        self._spill_dir = spill_dir
        self._spill: BinaryIO | None = None
        self._spill_path: Path | None = None
        self.lengths: list[tuple[int, int]] = []  # (block samples, peak values) per block

    def add(self, block: Samples, peaks: Floats) -> None:
        self.lengths.append((block.shape[1], len(peaks)))
        if self._spill is not None:
            self._spill.write(peaks.astype(np.float16).tobytes())
            return
        if self.blocks is None:
            return
        self._bytes += block.nbytes + peaks.nbytes
        if self._bytes <= self._limit:
            self.blocks.append((block, peaks))
            return
        held, self.blocks = self.blocks, None  # too long to keep: spill the peaks, or stream
        if self._spill_dir is not None:
            self._spill_path = self._spill_dir / "peaks.f16"
            self._spill = self._spill_path.open("wb")
            for _, old in [*held, (block, peaks)]:
                self._spill.write(old.astype(np.float16).tobytes())

    def restart(self) -> None:
        """A pass is detecting afresh: start over."""
        self.close()
        self.blocks, self._bytes, self.tail_peaks, self.lengths = [], 0, None, []

    def finish(self, tail_peaks: Floats) -> None:
        self.tail_peaks = tail_peaks
        if self._spill is not None:
            self._spill.close()
            self._spill = None

    def ready(self) -> tuple[list[tuple[Samples, Floats]], Floats] | None:
        if self.blocks is None or self.tail_peaks is None:
            return None
        return self.blocks, self.tail_peaks

    def spilled_peaks(self) -> Iterator[Floats] | None:
        """Peaks per block from the scratch file, when the last full pass spilled them."""
        if self.tail_peaks is None or self._spill_path is None or self._spill is not None:
            return None
        return self._read_spill(self._spill_path)

    def _read_spill(self, path: Path) -> Iterator[Floats]:
        with path.open("rb") as fh:
            for _, count in self.lengths:
                raw = fh.read(count * 2)
                yield np.frombuffer(raw, dtype=np.float16).astype(np.float64)

    def close(self) -> None:
        if self._spill is not None:
            self._spill.close()
            self._spill = None
        if self._spill_path is not None:
            self._spill_path.unlink(missing_ok=True)
            self._spill_path = None


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
    cache: PcmCache | None = None,
) -> Iterator[AudioFrame]:
    """Frames of the rendered signal; `tail` ends the last graph (encoder format or meter)."""
    stats = stats if stats is not None else PathRun()
    if ceiling_db is not None:
        yield from _limited(
            src_path, path, gain_db, ceiling_db, tail, frame_size, should_stop, stats, cache
        )
        return
    with open_audio(src_path) as (container, source):
        frames = decode_frames(container, source, should_stop=should_stop)
        chain = [*path.timing, *level_chain(gain_db), *path.fades, *_to_rate(path), *tail]
        graph = make_graph(source, chain, frame_size=frame_size)
        for frame in run_graph(graph, frames):
            stats.samples += frame.samples
            yield frame


def _limited(
    src_path: str,
    path: SignalPath,
    gain_db: float,
    ceiling_db: float,
    tail: list[Filter],
    frame_size: int | None,
    should_stop: Callable[[], bool] | None,
    stats: PathRun,
    cache: PcmCache | None,
) -> Iterator[AudioFrame]:
    """Gain and limiter in numpy between two graphs."""
    second = make_pcm_graph(path.rate, path.layout, [*path.fades, *tail], frame_size=frame_size)
    limiter = TruePeakLimiter(path.rate, path.channels, ceiling_db)
    gain = 10 ** (gain_db / 20)
    stats.limited = True
    pts = 0
    blocks = _SourceBlocks(src_path, path, should_stop, cache)
    for block, peaks in blocks.blocks():
        limited = limiter.push(block * np.float32(gain), peaks * gain)
        for out in _through(second, limited, path, pts):
            stats.samples += out.samples
            yield out
        pts += limited.shape[1]
    limited = limiter.flush(blocks.tail_peaks * gain)
    for out in _through(second, limited, path, pts):
        stats.samples += out.samples
        yield out
    for out in feed(second, None):
        stats.samples += out.samples
        yield out
    stats.max_reduction_db = limiter.max_reduction_db


class _SourceBlocks:
    """Timed, resampled planar float blocks and their true peaks (detected at gain 1): from
    the cache when a pass already filled it, else decoded (filling the cache)."""

    def __init__(
        self,
        src_path: str,
        path: SignalPath,
        should_stop: Callable[[], bool] | None,
        cache: PcmCache | None,
    ) -> None:
        self._src, self._path, self._stop, self._cache = src_path, path, should_stop, cache
        self.tail_peaks: Floats = np.zeros(0)

    def blocks(self) -> Iterator[tuple[Samples, Floats]]:
        cache, should_stop = self._cache, self._stop
        ready = cache.ready() if cache is not None else None
        if ready is not None:
            cached, self.tail_peaks = ready
            for i, item in enumerate(cached):
                if should_stop is not None and i % 16 == 0 and should_stop():
                    raise Cancelled("stopped on request")
                yield item
            return
        spilled = cache.spilled_peaks() if cache is not None else None
        if cache is not None and spilled is not None:
            yield from self._with_spilled_peaks(cache, spilled)
            return
        if cache is not None:
            cache.restart()
        detector = PeakDetector(self._path.rate, self._path.channels)
        for block in self._decoded():
            peaks = detector.push(block)
            if cache is not None:
                cache.add(block, peaks)
            yield block, peaks
        self.tail_peaks = detector.flush()
        if cache is not None:
            cache.finish(self.tail_peaks)

    def _with_spilled_peaks(
        self, cache: PcmCache, spilled: Iterator[Floats]
    ) -> Iterator[tuple[Samples, Floats]]:
        """Decode again, take the peaks from the scratch file (decoding is deterministic)."""
        assert cache.tail_peaks is not None
        lengths = iter(cache.lengths)
        for block in self._decoded():
            expected, _ = next(lengths, (-1, 0))
            if block.shape[1] != expected:
                raise Retryable("the source decoded differently between passes", code=RENDER_FAILED)
            yield block, next(spilled)
        self.tail_peaks = cache.tail_peaks

    def _decoded(self) -> Iterator[Samples]:
        path = self._path
        with open_audio(self._src) as (container, source):
            frames = decode_frames(container, source, should_stop=self._stop)
            first = make_graph(source, [*path.timing, FLOAT_PLANAR, *_to_rate(path)])
            pending: list[Samples] = []
            size = 0
            for frame in run_graph(first, frames):
                pending.append(_planar(frame))
                size += frame.samples
                if size >= BLOCK_SAMPLES:  # numpy pays per call: work in blocks, not frames
                    yield np.concatenate(pending, axis=1)
                    pending, size = [], 0
            if pending:
                yield np.concatenate(pending, axis=1)


def _to_rate(path: SignalPath) -> list[Filter]:
    return format_chain(
        source_rate=path.source_rate, out_rate=path.rate, out_layout=path.layout, sample_fmt="fltp"
    )


def _planar(frame: AudioFrame) -> Samples:
    return np.ascontiguousarray(frame.to_ndarray()[:, : frame.samples], dtype=np.float32)


def _through(
    graph: av.filter.Graph,
    block: Samples,
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
