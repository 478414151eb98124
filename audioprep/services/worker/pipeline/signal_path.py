"""The render's signal path: decode → graph → (true-peak limiter → graph) → frames.

Without a limiter it is one libavfilter graph. With one (normalize), the first graph does
timing, gain and resampling to the output rate in planar float; the numpy limiter holds the
ceiling at that rate (true peak depends on the final rate); a second graph adds the fades
and whatever the consumer needs at the end (the encoder's format, or the meter).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Protocol

import av
import numpy as np
import numpy.typing as npt
from av.audio.frame import AudioFrame

from audioprep.domain.errors import RENDER_FAILED, Retryable
from audioprep.services.worker.pipeline.cutter import Cutter
from audioprep.services.worker.pipeline.decode import decode_frames, open_audio
from audioprep.services.worker.pipeline.denoise import Denoiser
from audioprep.services.worker.pipeline.filters import (
    Filter,
    feed,
    make_graph,
    make_pcm_graph,
    run_graph,
)
from audioprep.services.worker.pipeline.graph import FLOAT_PLANAR, format_chain, level_chain
from audioprep.services.worker.pipeline.joins import Joins, joined
from audioprep.services.worker.pipeline.leveler import Leveler
from audioprep.services.worker.pipeline.limiter import TruePeakLimiter
from audioprep.services.worker.pipeline.true_peak import PeakDetector
from audioprep.services.worker.pipeline.voice_chain import VoicePlan

Samples = npt.NDArray[np.float32]
Floats = npt.NDArray[np.float64]


class Stage(Protocol):
    """A numpy stage: planar float blocks in, planar float blocks out, flushed at the end."""

    def push(self, block: Samples) -> Samples: ...

    def flush(self) -> Samples: ...


@dataclass(frozen=True, slots=True)
class SignalPath:
    """Everything but the gain and ceiling, which the normaliser tunes pass by pass."""

    timing: list[Filter]  # zero-based pts, trim, tempo
    fades: list[Filter]
    source_rate: int
    rate: int
    layout: str
    voice: VoicePlan | None = None
    start_ms: float = 0.0  # where the kept window starts in the source (cuts, leveler)
    speed: float = 1.0
    joins: Joins | None = None  # intro/outro around the episode (joins.py)

    @property
    def staged(self) -> bool:
        """Needs numpy stages between graphs (else one libavfilter graph does it all)."""
        return (self.voice is not None and self.voice.numpy_stages) or self.joins is not None

    @property
    def work_rate(self) -> int:
        """The rate the numpy voice stages run at (RNNoise wants 48 kHz)."""
        override = self.voice.work_rate_override if self.voice else None
        return override or self.rate

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
    stats: PathRun | None = None,
    cache: PcmCache | None = None,
) -> Iterator[AudioFrame]:
    """Frames of the rendered signal; `tail` ends the last graph (encoder format or meter)."""
    stats = stats if stats is not None else PathRun()
    if ceiling_db is not None or path.staged:
        yield from _limited(src_path, path, gain_db, ceiling_db, tail, frame_size, stats, cache)
        return
    voice = path.voice or VoicePlan()
    with open_audio(src_path) as (container, source):
        frames = decode_frames(container, source)
        chain = [
            *path.timing,
            *([FLOAT_PLANAR, *voice.pre] if voice.pre else []),
            *level_chain(gain_db),
            *voice.post,
            *path.fades,
            *_to_rate(path),
            *tail,
        ]
        graph = make_graph(source, chain, frame_size=frame_size)
        for frame in run_graph(graph, frames):
            stats.samples += frame.samples
            yield frame


def _limited(
    src_path: str,
    path: SignalPath,
    gain_db: float,
    ceiling_db: float | None,
    tail: list[Filter],
    frame_size: int | None,
    stats: PathRun,
    cache: PcmCache | None,
) -> Iterator[AudioFrame]:
    """Voice stages, gain and (with a ceiling) the limiter in numpy, between graphs."""
    second = make_pcm_graph(path.rate, path.layout, [*path.fades, *tail], frame_size=frame_size)
    limiter = (
        TruePeakLimiter(path.rate, path.channels, ceiling_db) if ceiling_db is not None else None
    )
    gain = 10 ** (gain_db / 20)
    stats.limited = limiter is not None
    pts = 0
    blocks = _SourceBlocks(src_path, path, cache, detect=limiter is not None)
    for block, peaks in blocks.blocks():
        if limiter is not None:
            limited = limiter.push(block * np.float32(gain), peaks * gain)
        else:
            limited = block * np.float32(gain)
        for out in _through(second, limited, path, pts):
            stats.samples += out.samples
            yield out
        pts += limited.shape[1]
    if limiter is None:
        for out in feed(second, None):
            stats.samples += out.samples
            yield out
        return
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
        cache: PcmCache | None,
        *,
        detect: bool = True,
    ) -> None:
        self._src, self._path, self._cache = src_path, path, cache
        self._detect = detect
        self.tail_peaks: Floats = np.zeros(0)

    def blocks(self) -> Iterator[tuple[Samples, Floats]]:
        cache = self._cache
        ready = cache.ready() if cache is not None else None
        if ready is not None:
            cached, self.tail_peaks = ready
            yield from cached
            return
        spilled = cache.spilled_peaks() if cache is not None else None
        if cache is not None and spilled is not None:
            yield from self._with_spilled_peaks(cache, spilled)
            return
        if cache is not None:
            cache.restart()
        if not self._detect:
            for block in self._decoded():
                yield block, np.zeros(0)
            return
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
        """Graph A (timing, highpass, dehum, rate), the numpy voice stages, graph B (de-esser,
        output rate), in blocks of about BLOCK_SAMPLES."""
        path = self._path
        voice = path.voice or VoicePlan()
        stages = voice_stages(path)
        with open_audio(self._src) as (container, source):
            frames = decode_frames(container, source)
            work = path.work_rate if stages else path.rate
            first_chain = [
                *path.timing,
                FLOAT_PLANAR,
                *voice.pre,
                *([] if stages else voice.post),
                *format_chain(
                    source_rate=path.source_rate,
                    out_rate=work,
                    out_layout=path.layout,
                    sample_fmt="fltp",
                ),
            ]
            first = make_graph(source, first_chain)
            pending: list[Samples] = []
            size = 0
            blocks = _run_stages(stages, _graph_blocks(first, frames))
            if path.joins is not None:
                blocks = joined(blocks, path.joins, rate=path.rate, layout=path.layout)
            for block in blocks:
                pending.append(block)
                size += block.shape[1]
                if size >= BLOCK_SAMPLES:  # numpy pays per call: work in blocks, not frames
                    yield np.concatenate(pending, axis=1)
                    pending, size = [], 0
            if pending:
                yield np.concatenate(pending, axis=1)


class _GraphStage:
    """A libavfilter graph used as a numpy stage (planar float in and out)."""

    def __init__(self, rate: int, layout: str, chain: list[Filter], out_rate: int) -> None:
        self._graph = make_pcm_graph(rate, layout, [*chain, ("aformat", "sample_fmts=fltp")])
        self._rate, self._layout, self._channels = rate, layout, 1 if layout == "mono" else 2
        self._pts = 0

    def push(self, block: Samples) -> Samples:
        if block.shape[1] == 0:
            return block
        frame = AudioFrame.from_ndarray(block, format="fltp", layout=self._layout)
        frame.sample_rate = self._rate
        frame.pts = self._pts
        frame.time_base = Fraction(1, self._rate)
        self._pts += block.shape[1]
        return self._collect(feed(self._graph, frame))

    def flush(self) -> Samples:
        return self._collect(feed(self._graph, None))

    def _collect(self, frames: Iterator[AudioFrame]) -> Samples:
        out = [_planar(f) for f in frames]
        if not out:
            return np.zeros((self._channels, 0), dtype=np.float32)
        return np.concatenate(out, axis=1)


def voice_stages(path: SignalPath) -> list[Stage]:
    """The numpy (and de-esser/resampling) stages between graph A and the limiter."""
    voice = path.voice
    if voice is None or not voice.numpy_stages:
        return []
    rate, channels = path.work_rate, path.channels
    stages: list[Stage] = []
    if voice.denoise_db is not None:
        stages.append(Denoiser(channels, voice.denoise_db))
    if voice.leveler_db is not None:
        start = path.start_ms * path.source_rate / 1000
        scale = rate / (path.source_rate * path.speed)
        stages.append(
            Leveler(channels, voice.leveler_db, voice.frame_samples, scale=scale, offset=start)
        )
    if voice.cuts_ms:
        cuts = [
            (
                round((a - path.start_ms) / path.speed * rate / 1000),
                round((b - path.start_ms) / path.speed * rate / 1000),
            )
            for a, b in voice.cuts_ms
            if a >= path.start_ms
        ]
        stages.append(Cutter(channels, cuts, rate))
    if voice.post or rate != path.rate:
        stages.append(_GraphStage(rate, path.layout, voice.post + _resample(rate, path), path.rate))
    return stages


def _resample(rate: int, path: SignalPath) -> list[Filter]:
    return [] if rate == path.rate else [("aresample", str(path.rate))]


def _graph_blocks(graph: av.filter.Graph, frames: Iterator[AudioFrame]) -> Iterator[Samples]:
    for frame in run_graph(graph, frames):
        yield _planar(frame)


def _run_stages(stages: list[Stage], blocks: Iterator[Samples]) -> Iterator[Samples]:
    """Push blocks through every stage in order; flush them in order at the end."""
    for block in blocks:
        for stage in stages:
            block = stage.push(block)
        if block.shape[1]:
            yield block
    for i, stage in enumerate(stages):
        block = stage.flush()
        for later in stages[i + 1 :]:
            block = later.push(block)
        if block.shape[1]:
            yield block
    for stage in stages:
        close = getattr(stage, "close", None)
        if close is not None:
            close()


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
