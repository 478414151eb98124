"""Intro and outro around the episode: loudness-matched, joined with equal-power crossfades.

The join happens in the signal path before gain and limiter (signal_path._SourceBlocks), so
the whole output is normalised, limited and faded as one programme, and the calibration cache
holds the joined signal. Each part is measured (EBU R128, after its matching gain and before
the crossfades) the first time a pass runs through it: what `result.parts` reports.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction

import av.filter
import numpy as np
import numpy.typing as npt
from av.audio.frame import AudioFrame

from audioprep.services.worker.pipeline.decode import decode_frames, open_audio
from audioprep.services.worker.pipeline.filters import feed, make_graph, make_pcm_graph, run_graph
from audioprep.services.worker.pipeline.graph import FLOAT_PLANAR, format_chain
from audioprep.services.worker.pipeline.loudness import Loudness, LoudnessMeter

Samples = npt.NDArray[np.float32]
MAX_MATCH_GAIN_DB = 30.0  # a near-silent jingle is not raised without bound
MIN_MATCH_GAIN_DB = -60.0
PARTS = ("intro", "episode", "outro")


@dataclass(frozen=True, slots=True)
class JoinPart:
    """An intro or outro: a local file, its matching gain, its overlap with the episode."""

    path: str
    gain_db: float
    crossfade_ms: float


@dataclass(slots=True)
class PartLevels:
    """What a pass saw of each part; filled once (the first pass that ran through the join)."""

    measured: bool = False
    lufs: dict[str, float | None] = field(default_factory=dict)
    samples: dict[str, int] = field(default_factory=dict)
    crossfades: list[int] = field(default_factory=list)  # samples actually overlapped


@dataclass(frozen=True, slots=True)
class Joins:
    intro: JoinPart | None = None
    outro: JoinPart | None = None
    levels: PartLevels = field(default_factory=PartLevels, compare=False)


def match_gain_db(episode: Loudness | None, part: Loudness | None) -> float:
    """The gain that brings a part to the episode's integrated loudness (0 for silence)."""
    if episode is None or part is None:
        return 0.0
    if episode.integrated_lufs is None or part.integrated_lufs is None:
        return 0.0
    gain = episode.integrated_lufs - part.integrated_lufs
    return max(MIN_MATCH_GAIN_DB, min(MAX_MATCH_GAIN_DB, gain))


def crossfade_ms(wanted: float, before_ms: float, after_ms: float) -> float:
    """An overlap no longer than either side (the episode's share is given by the caller)."""
    return max(0.0, min(wanted, before_ms, after_ms))


def joined(
    episode: Iterator[Samples],
    joins: Joins,
    *,
    rate: int,
    layout: str,
) -> Iterator[Samples]:
    """intro ⨯ episode ⨯ outro as planar float blocks at `rate` (episode blocks come in so)."""
    levels = joins.levels
    measure = not levels.measured
    parts: list[tuple[str, Iterator[Samples]]] = []
    overlaps: list[int] = []
    if joins.intro is not None:
        intro = _part_blocks(joins.intro, rate, layout)
        parts.append(("intro", intro))
        overlaps.append(round(joins.intro.crossfade_ms * rate / 1000))
    parts.append(("episode", episode))
    if joins.outro is not None:
        overlaps.append(round(joins.outro.crossfade_ms * rate / 1000))
        parts.append(("outro", _part_blocks(joins.outro, rate, layout)))
    meters = {name: _PartMeter(rate, layout) for name, _ in parts} if measure else {}
    counts = dict.fromkeys((name for name, _ in parts), 0)

    def counted(name: str, blocks: Iterator[Samples]) -> Iterator[Samples]:
        meter = meters.get(name)
        for block in blocks:
            counts[name] += block.shape[1]
            if meter is not None:
                meter.feed(block)
            yield block

    used: list[int] = []
    yield from _crossfaded([counted(n, b) for n, b in parts], overlaps, used)
    if measure:
        levels.lufs = {name: meter.result() for name, meter in meters.items()}
        levels.samples = counts
        levels.crossfades = used
        levels.measured = True


def _part_blocks(part: JoinPart, rate: int, layout: str) -> Iterator[Samples]:
    """The part decoded, timed from zero, in planar float at the output's rate and layout."""
    gain = np.float32(10 ** (part.gain_db / 20))
    with open_audio(part.path) as (container, stream):
        chain = [
            ("asetpts", "PTS-STARTPTS"),
            FLOAT_PLANAR,
            *format_chain(
                source_rate=stream.codec_context.sample_rate,
                out_rate=rate,
                out_layout=layout,
                sample_fmt="fltp",
            ),
        ]
        graph = make_graph(stream, chain)
        for frame in run_graph(graph, decode_frames(container, stream)):
            block = np.ascontiguousarray(frame.to_ndarray()[:, : frame.samples], dtype=np.float32)
            yield block * gain


def _curves(n: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Equal-power fade-out and fade-in gains over n samples (cos² + sin² = 1)."""
    t = (np.arange(n, dtype=np.float64) + 0.5) / max(n, 1) * (math.pi / 2)
    return np.cos(t).astype(np.float32), np.sin(t).astype(np.float32)


def _mix(carry: Samples, head: Samples) -> Samples:
    """The previous part's held tail fading out over the next part's head fading in."""
    n = carry.shape[1]
    fade_out, fade_in = _curves(n)
    out = carry * fade_out
    m = min(n, head.shape[1])
    out[:, :m] += head[:, :m] * fade_in[:m]
    return out


def _crossfaded(
    parts: list[Iterator[Samples]], overlaps: list[int], used: list[int]
) -> Iterator[Samples]:
    """Concatenate parts, overlapping part i's last overlaps[i] samples with part i+1's first."""
    carry: Samples | None = None
    for index, blocks in enumerate(parts):
        hold = overlaps[index] if index < len(overlaps) else 0
        need = carry.shape[1] if carry is not None else 0
        head: list[Samples] = []
        got = 0
        held: list[Samples] = []
        held_n = 0
        for block in blocks:
            if carry is not None and got < need:
                take = min(need - got, block.shape[1])
                head.append(block[:, :take])
                got += take
                block = block[:, take:]
                if got < need:
                    continue
                yield _mix(carry, np.concatenate(head, axis=1))
                used.append(need)
                carry = None
            if block.shape[1] == 0:
                continue
            if hold == 0:
                yield block
                continue
            held.append(block)
            held_n += block.shape[1]
            if held_n - held[0].shape[1] >= hold:  # release what the tail won't need
                all_held = np.concatenate(held, axis=1)
                release = all_held.shape[1] - hold
                yield all_held[:, :release]
                held, held_n = [all_held[:, release:]], hold
        if carry is not None:  # this part was shorter than the overlap: fade over what there is
            channels = carry.shape[0]
            mixed = np.concatenate(head, axis=1) if head else np.zeros((channels, 0), np.float32)
            yield _mix(carry, mixed)
            used.append(got)
            carry = None
        if held:
            tail = np.concatenate(held, axis=1)
            if tail.shape[1] > hold:  # what is not the tail goes out as it is
                yield tail[:, : tail.shape[1] - hold]
                tail = tail[:, tail.shape[1] - hold :]
            if index + 1 < len(parts):
                carry = tail
            else:
                yield tail
    if carry is not None:  # no part came after (never with the parts the join builds)
        yield carry


class _PartMeter:
    """Integrated loudness of one part's blocks (ebur128 over frames we build)."""

    def __init__(self, rate: int, layout: str) -> None:
        self._graph: av.filter.Graph = make_pcm_graph(rate, layout, [("ebur128", "metadata=1")])
        self._meter = LoudnessMeter()
        self._rate, self._layout, self._pts = rate, layout, 0

    def feed(self, block: Samples) -> None:
        if block.shape[1] == 0:
            return
        frame = AudioFrame.from_ndarray(
            np.ascontiguousarray(block), format="fltp", layout=self._layout
        )
        frame.sample_rate = self._rate
        frame.pts = self._pts
        frame.time_base = Fraction(1, self._rate)
        self._pts += block.shape[1]
        for out in feed(self._graph, frame):
            self._meter.feed(out)

    def result(self) -> float | None:
        for out in feed(self._graph, None):
            self._meter.feed(out)
        return self._meter.result().integrated_lufs
