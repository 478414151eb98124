"""Where the sound is: a measuring pass for trimSilence (silenceremove changed in FFmpeg 8)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from services.worker.pipeline.decode import decode_frames, open_audio
from services.worker.pipeline.filters import make_graph, run_graph

SILENCE_THRESHOLD_DBFS = -50.0


def find_sound_bounds(
    path: str,
    *,
    threshold_dbfs: float = SILENCE_THRESHOLD_DBFS,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[int, int] | None:
    """(first, last) ms where any channel exceeds the threshold; None when all is silence."""
    threshold = 10 ** (threshold_dbfs / 20)
    first: int | None = None
    last: int | None = None
    position = 0
    rate = 0
    with open_audio(path) as (container, stream):
        rate = stream.codec_context.sample_rate
        graph = make_graph(stream, [("asetpts", "PTS-STARTPTS"), ("aformat", "sample_fmts=fltp")])
        for frame in run_graph(graph, decode_frames(container, stream, should_stop=should_stop)):
            loud = np.flatnonzero(np.abs(frame.to_ndarray()).max(axis=0) > threshold)
            if loud.size:
                if first is None:
                    first = position + int(loud[0])
                last = position + int(loud[-1]) + 1
            position += frame.samples
    if first is None or last is None:
        return None
    return math.floor(first * 1000 / rate), math.ceil(last * 1000 / rate)
