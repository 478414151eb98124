"""Ingest analysis: info, loudness, peaks and the voice analysis from ONE decode pass."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from audioprep.domain.errors import TOO_LONG, Permanent
from audioprep.services.worker.pipeline.decode import decode_frames, open_audio
from audioprep.services.worker.pipeline.filters import make_graph, run_graph
from audioprep.services.worker.pipeline.loudness import METER, Loudness, LoudnessMeter
from audioprep.services.worker.pipeline.peaks import PeakAccumulator, planar_float_for
from audioprep.services.worker.pipeline.probe import MediaInfo, header_duration_ms, media_info
from audioprep.services.worker.pipeline.progress import Progress
from audioprep.services.worker.pipeline.voice_analysis import VoiceAnalysis, VoiceAnalyzer


@dataclass(frozen=True, slots=True)
class Analysis:
    """Everything ingest reports about a source."""

    info: MediaInfo
    loudness: Loudness
    peaks: dict[str, Any]
    voice: VoiceAnalysis


@dataclass(frozen=True, slots=True)
class IngestAnalysis:
    """An analysis as ingest stores it: the peaks already encoded as their JSON file (run in
    the media child, this crosses the pipe as bytes instead of 4,000 floats to unpickle)."""

    info: MediaInfo
    loudness: Loudness
    peaks_json: bytes
    voice: VoiceAnalysis


def analyse_for_ingest(
    path: str,
    *,
    points: int = 2000,
    on_progress: Callable[[float], None] | None = None,
    max_duration_s: float | None = None,
) -> IngestAnalysis:
    """`analyse`, with the peaks encoded for storage."""
    found = analyse(path, points=points, on_progress=on_progress, max_duration_s=max_duration_s)
    return IngestAnalysis(
        info=found.info,
        loudness=found.loudness,
        peaks_json=msgspec.json.encode(found.peaks),
        voice=found.voice,
    )


def analyse(
    path: str,
    *,
    points: int = 2000,
    on_progress: Callable[[float], None] | None = None,
    max_duration_s: float | None = None,
) -> Analysis:
    """Probe, measure loudness and compute peaks; the duration is the decoded sample count.

    Past `max_duration_s` (by the header, or while decoding when the header lies or has no
    duration) it stops at once with Permanent(too_long) instead of decoding hours of audio.
    """
    with open_audio(path) as (container, stream):
        rate = stream.codec_context.sample_rate
        header_ms = header_duration_ms(container, stream)
        max_samples = int(max_duration_s * rate) if max_duration_s else None
        if max_duration_s and header_ms and header_ms > max_duration_s * 1000:
            raise _too_long(header_ms / 1000, max_duration_s)
        acc = PeakAccumulator(
            points=points, expected_samples=int((header_ms or 0) * rate / 1000), sample_rate=rate
        )
        meter = LoudnessMeter()
        voice = VoiceAnalyzer(rate)
        progress = Progress(on_progress, header_ms)
        samples = 0
        graph = make_graph(stream, [METER, planar_float_for(stream.codec_context.channels)])
        for frame in run_graph(graph, decode_frames(container, stream)):
            meter.feed(frame)
            pcm = frame.to_ndarray()
            acc.feed(pcm)  # type: ignore[arg-type]
            voice.feed(pcm[:, : frame.samples])  # type: ignore[arg-type]
            samples += frame.samples
            if max_samples is not None and samples > max_samples:
                raise _too_long(samples / rate, max_duration_s or 0)
            progress.advance_samples(frame.samples, rate)
        info = media_info(container, stream, round(samples * 1000 / rate))
    progress.done()
    return Analysis(info=info, loudness=meter.result(), peaks=acc.result(), voice=voice.result())


def _too_long(seconds: float, limit_s: float) -> Permanent:
    more = "at least " if seconds <= limit_s + 1 else ""
    return Permanent(
        f"audio is {more}{seconds:.0f} s long; the limit is {limit_s:.0f} s", code=TOO_LONG
    )
