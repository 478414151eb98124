"""Running a libavfilter chain over a decoded stream, with PyAV's EOF/EAGAIN rules in one place."""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator
from fractions import Fraction

import av
import av.filter
from av.audio.frame import AudioFrame
from av.audio.stream import AudioStream

from audioprep.services.worker.pipeline.decode import normal_layout

Filter = tuple[str, str]


def make_graph(
    stream: AudioStream, chain: Iterable[Filter], *, frame_size: int | None = None
) -> av.filter.Graph:
    """abuffer (timed like the stream, see NOTES) → chain → abuffersink, configured."""
    graph = av.filter.Graph()
    nodes = [graph.add_abuffer(template=stream, layout=normal_layout(stream))]
    nodes += [graph.add(name, args or None) for name, args in chain]
    nodes.append(graph.add("abuffersink"))
    graph.link_nodes(*nodes)
    graph.configure()
    if frame_size:
        graph.set_audio_frame_size(frame_size)
    return graph


def run_graph(
    graph: av.filter.Graph,
    frames: Iterable[AudioFrame],
) -> Iterator[AudioFrame]:
    """Push frames, yield filtered ones; stops decoding as soon as the graph says EOF (atrim)."""
    ended = False
    for frame in frames:
        try:
            graph.push(frame)
        except av.EOFError:
            ended = True
            break
        ended = yield from _drain(graph)
        if ended:
            break
    if not ended:
        try:
            graph.push(None)
        except av.EOFError:
            return
        yield from _drain(graph)


def _drain(graph: av.filter.Graph) -> Generator[AudioFrame, None, bool]:
    """Pull until the graph wants input (False) or has finished (True)."""
    while True:
        try:
            out = graph.pull()
        except av.BlockingIOError:
            return False
        except av.EOFError:
            return True
        assert isinstance(out, AudioFrame)
        yield out


def make_pcm_graph(
    rate: int, layout: str, chain: Iterable[Filter], *, frame_size: int | None = None
) -> av.filter.Graph:
    """A graph fed with planar float frames we make ourselves (after the limiter)."""
    graph = av.filter.Graph()
    nodes = [
        graph.add_abuffer(
            format="fltp", sample_rate=rate, layout=layout, time_base=Fraction(1, rate)
        )
    ]
    nodes += [graph.add(name, args or None) for name, args in chain]
    nodes.append(graph.add("abuffersink"))
    graph.link_nodes(*nodes)
    graph.configure()
    if frame_size:
        graph.set_audio_frame_size(frame_size)
    return graph


def feed(graph: av.filter.Graph, frame: AudioFrame | None) -> Iterator[AudioFrame]:
    """Push one frame (None = end of input) and yield what comes out."""
    try:
        graph.push(frame)
    except av.EOFError:
        return
    yield from _drain(graph)
