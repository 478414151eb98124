"""EBU R128 loudness via ffmpeg's ebur128 meter: what ingest reports and normalize aims from."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from av.audio.frame import AudioFrame

from audioprep.services.worker.pipeline.decode import decode_frames, open_audio
from audioprep.services.worker.pipeline.filters import Filter, make_graph, run_graph
from audioprep.services.worker.pipeline.progress import Progress

METER: Filter = ("ebur128", "metadata=1:peak=true")
SILENCE_LUFS = -70.0  # ebur128's absolute gate: anything at or below is "no programme"


@dataclass(frozen=True, slots=True)
class Loudness:
    """Integrated loudness (LUFS), max true peak (dBTP) and loudness range (LU); None = silence."""

    integrated_lufs: float | None
    true_peak_db: float | None
    lra: float | None
    short_term_max_lufs: float | None = None


MIN_LRA_SECONDS = 3.5


class LoudnessMeter:
    """Collects the ebur128 meter's running values from the frames it tags."""

    def __init__(self) -> None:
        self._integrated: float | None = None
        self._lra: float | None = None
        self._peak = 0.0
        self._seconds = 0.0
        self._short_max = -math.inf

    def feed(self, frame: AudioFrame) -> None:
        """Keep the latest integrated/LRA and the largest true peak seen."""
        if frame.sample_rate:
            self._seconds += frame.samples / frame.sample_rate
        meta: Mapping[str, str] = frame.metadata
        if not meta:
            return
        if "lavfi.r128.I" in meta:
            self._integrated = float(meta["lavfi.r128.I"])
        short = meta.get("lavfi.r128.S")
        if short is not None:
            self._short_max = max(self._short_max, float(short))
        if "lavfi.r128.LRA" in meta:
            self._lra = float(meta["lavfi.r128.LRA"])
        if "lavfi.r128.true_peak" in meta:  # linear, not dB (NOTES)
            self._peak = max(self._peak, float(meta["lavfi.r128.true_peak"]))

    def result(self) -> Loudness:
        """The measurement; silence (gated out) reports None."""
        integrated = self._integrated
        if integrated is None or not math.isfinite(integrated) or integrated <= SILENCE_LUFS:
            integrated = None
        peak = round(20 * math.log10(self._peak), 2) if self._peak > 0 else None
        # LRA is built from 3 s short-term blocks: below that it is noise, not a measurement.
        enough = self._seconds >= MIN_LRA_SECONDS
        lra = self._lra if integrated is not None and enough else None
        short_max = self._short_max if self._short_max > SILENCE_LUFS else None
        return Loudness(
            integrated_lufs=None if integrated is None else round(integrated, 2),
            true_peak_db=peak,
            lra=None if lra is None else round(lra, 2),
            short_term_max_lufs=None if short_max is None else round(short_max, 2),
        )


def measure_loudness(
    path: str,
    *,
    filters: Sequence[Filter] = (),
    expected_ms: float | None = None,
    on_progress: Callable[[float], None] | None = None,
) -> Loudness:
    """Loudness of the whole source, or of what `filters` (trim, tempo) leave of it."""
    meter = LoudnessMeter()
    with open_audio(path) as (container, stream):
        total_ms = expected_ms
        if total_ms is None and container.duration:
            total_ms = container.duration / 1000
        progress = Progress(on_progress, total_ms)
        graph = make_graph(stream, [*filters, METER])
        frames = decode_frames(container, stream)
        for frame in run_graph(graph, frames):
            meter.feed(frame)
            progress.advance_samples(frame.samples, frame.sample_rate)
    progress.done()
    return meter.result()
