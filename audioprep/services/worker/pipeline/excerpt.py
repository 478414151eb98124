"""Excerpts of a long source, so normalisation calibrates on minutes instead of hours.

How much loudness the limiter (and a denoiser, a highpass) takes away is a local property of
the programme: measured on evenly spaced excerpts it predicts the whole file. Calibration dry
runs then run on the excerpts (8 × 20 s), and the full file is encoded once and verified as
always; if the prediction missed, verification corrects it with one more encode.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import av
import numpy as np

from audioprep.services.worker.pipeline.decode import decode_frames, normal_layout, open_audio
from audioprep.services.worker.pipeline.filters import make_graph, run_graph
from audioprep.services.worker.pipeline.loudness import measure_loudness
from audioprep.services.worker.pipeline.peaks import planar_float_for
from audioprep.services.worker.pipeline.signal_path import SignalPath

EXCERPTS = 8
EXCERPT_MS = 20_000


@dataclass(frozen=True, slots=True)
class Excerpt:
    """A scratch file of excerpts, the signal path that reads it, and its raw loudness."""

    path: str
    signal: SignalPath
    length_ms: float
    raw_lufs: float | None


def usable(path: SignalPath) -> bool:
    """Leveler and cuts are keyed to positions in the whole file: no excerpts then."""
    voice = path.voice
    return voice is None or (voice.leveler_db is None and not voice.cuts_ms)


def build_excerpt(
    src_path: str,
    path: SignalPath,
    *,
    end_ms: float,
    scratch: Path,
) -> Excerpt | None:
    """Copy 8 evenly spaced 20 s windows of [start, end) into one wav (float, source rate)."""
    span = end_ms - path.start_ms
    if span < EXCERPTS * EXCERPT_MS * 2 or not usable(path):
        return None
    step = span / EXCERPTS
    windows = [
        (path.start_ms + step * i + (step - EXCERPT_MS) / 2, EXCERPT_MS) for i in range(EXCERPTS)
    ]
    out_path = scratch / "excerpt.wav"
    with open_audio(src_path) as (container, stream):
        rate = stream.codec_context.sample_rate
        layout = normal_layout(stream) if stream.codec_context.channels <= 2 else "stereo"
        bounds = [(round(a * rate / 1000), round((a + n) * rate / 1000)) for a, n in windows]
        channels = stream.codec_context.channels
        graph = make_graph(stream, [("asetpts", "PTS-STARTPTS"), planar_float_for(channels)])
        with av.open(str(out_path), "w", format="wav") as out:
            st = out.add_stream("pcm_f32le", rate=rate, layout=layout)
            position = 0
            frames = decode_frames(container, stream)
            for frame in run_graph(graph, frames):
                n = frame.samples
                pcm = np.asarray(frame.to_ndarray()[:, :n], dtype=np.float32)
                for a, b in bounds:
                    lo, hi = max(a, position), min(b, position + n)
                    if lo < hi:
                        piece = pcm[:, lo - position : hi - position]
                        packed = np.ascontiguousarray(piece.T).reshape(1, -1)
                        f = av.AudioFrame.from_ndarray(packed, format="flt", layout=layout)
                        f.sample_rate = rate
                        for packet in st.encode(f):
                            out.mux(packet)
                position += n
                if position >= bounds[-1][1]:
                    break
            for packet in st.encode(None):
                out.mux(packet)
    tempo = [f for f in path.timing if f[0] == "atempo"]
    timing = [("asetpts", "PTS-STARTPTS"), *tempo]
    signal = replace(path, timing=timing, fades=[], source_rate=rate, start_ms=0.0)
    raw = measure_loudness(str(out_path), filters=timing)
    return Excerpt(
        path=str(out_path),
        signal=signal,
        length_ms=EXCERPTS * EXCERPT_MS / path.speed,
        raw_lufs=raw.integrated_lufs,
    )
