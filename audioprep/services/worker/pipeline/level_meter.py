"""Levels of rendered audio: FFmpeg's ebur128 plus our own numpy meter, from one pass.

ebur128 gives integrated loudness, LRA, short-term max and its true peak (192 kHz); the numpy
side gives RMS, sample peak, the ACX noise floor and, when asked, a second true peak (our
PeakDetector); with both, the higher one counts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from av.audio.frame import AudioFrame

from audioprep.services.worker.pipeline.decode import decode_frames, open_audio
from audioprep.services.worker.pipeline.filters import Filter, make_graph, run_graph
from audioprep.services.worker.pipeline.loudness import METER, Loudness, LoudnessMeter
from audioprep.services.worker.pipeline.peaks import PLANAR_FLOAT
from audioprep.services.worker.pipeline.true_peak import MAX_OVERSHOOT_DB, PeakDetector
from audioprep.services.worker.pipeline.voice_analysis import VoiceAnalysis, VoiceAnalyzer

Samples = npt.NDArray[np.float32]
NOISE_WINDOW_S = 0.5  # ACX measures the noise floor as RMS over half-second windows
_SILENT_DB = -120.0


def _db(power_or_amp: float, *, power: bool) -> float | None:
    if power_or_amp <= 0:
        return None
    return (10 if power else 20) * math.log10(power_or_amp)


@dataclass(frozen=True, slots=True)
class Levels:
    """Measured levels of one signal (dB values None for digital silence)."""

    loudness: Loudness  # ebur128's view; its true_peak_db is the higher of the two meters
    rms_db: float | None
    sample_peak_db: float | None
    noise_floor_db: float | None  # quietest half-second RMS that is not digital silence
    voice: VoiceAnalysis | None = None

    @property
    def integrated(self) -> float | None:
        return self.loudness.integrated_lufs

    @property
    def true_peak(self) -> float | None:
        return self.loudness.true_peak_db


class LevelMeter:
    """Feed planar float frames (after ebur128 tagged them); read `result()`."""

    def __init__(self, rate: int, channels: int, *, true_peak: bool = True) -> None:
        self._loudness = LoudnessMeter()
        self._detector = PeakDetector(rate, channels) if true_peak else None
        self._true_peak = 0.0
        self._sum_sq = 0.0
        self._count = 0
        self._sample_peak = 0.0
        self._window = max(1, round(rate * NOISE_WINDOW_S))
        self._win_sum = 0.0
        self._win_fill = 0
        self._quietest = math.inf
        self._channels = channels
        self._voice = VoiceAnalyzer(rate)

    def feed(self, frame: AudioFrame) -> None:
        self._loudness.feed(frame)
        pcm = frame.to_ndarray()
        samples: Samples = np.asarray(pcm[:, : frame.samples], dtype=np.float32)
        self._feed_samples(samples)

    def _feed_samples(self, samples: Samples) -> None:
        if samples.shape[1] == 0:
            return
        peak = float(np.abs(samples).max())
        self._sample_peak = max(self._sample_peak, peak)
        if self._detector is not None:
            # oversample only blocks that could raise the maximum found so far
            self._detector.floor = self._true_peak * 10 ** (-MAX_OVERSHOOT_DB / 20) or None
            peaks = self._detector.push(samples)
            self._true_peak = max(self._true_peak, float(peaks.max(initial=0)))
        self._voice.feed(samples)
        sq = np.square(samples, dtype=np.float64).sum(axis=0)
        self._sum_sq += float(sq.sum())
        self._count += samples.shape[1] * samples.shape[0]
        self._windows(sq)

    def _windows(self, sq: npt.NDArray[np.float64]) -> None:
        pos = 0
        while pos < len(sq):
            take = min(self._window - self._win_fill, len(sq) - pos)
            self._win_sum += float(sq[pos : pos + take].sum())
            self._win_fill += take
            pos += take
            if self._win_fill == self._window:
                ms = self._win_sum / (self._window * self._channels)
                db = _db(ms, power=True)
                if db is not None and db > _SILENT_DB:
                    self._quietest = min(self._quietest, db)
                self._win_sum, self._win_fill = 0.0, 0

    def result(self) -> Levels:
        if self._detector is not None:
            self._true_peak = max(self._true_peak, float(self._detector.flush().max(initial=0)))
        ebu = self._loudness.result()
        ours = _db(self._true_peak, power=False)
        candidates = [p for p in (ebu.true_peak_db, ours) if p is not None]
        true_peak = round(max(candidates), 2) if candidates else None
        loud = Loudness(ebu.integrated_lufs, true_peak, ebu.lra, ebu.short_term_max_lufs)
        rms = _db(self._sum_sq / self._count, power=True) if self._count else None
        sample_peak = _db(self._sample_peak, power=False)
        return Levels(
            loudness=loud,
            rms_db=None if rms is None else round(rms, 2),
            sample_peak_db=None if sample_peak is None else round(sample_peak, 2),
            noise_floor_db=None if math.isinf(self._quietest) else round(self._quietest, 2),
            voice=self._voice.result(),
        )


def meter_frames(
    frames: Iterable[AudioFrame], rate: int, channels: int, *, true_peak: bool = True
) -> Levels:
    """Levels of frames that already passed METER (or LOUDNESS_ONLY) and PLANAR_FLOAT."""
    meter = LevelMeter(rate, channels, true_peak=true_peak)
    for frame in frames:
        meter.feed(frame)
    return meter.result()


METER_CHAIN: tuple[Filter, ...] = (METER, PLANAR_FLOAT)
# calibration needs loudness only: ebur128's 192 kHz true-peak resampler is most of its cost
LOUDNESS_ONLY_CHAIN: tuple[Filter, ...] = (("ebur128", "metadata=1"), PLANAR_FLOAT)


def measure_file(
    path: str,
    *,
    true_peak: bool = True,
    own_true_peak: bool = False,
) -> Levels:
    """Decode a written file and measure it: what verification trusts.

    The true peak is ebur128's (resampled to 192 kHz, independent of the limiter's detector,
    which tests/media_tests check against it); `own_true_peak` adds our detector's reading.
    Without `true_peak` (plain renders, where no ceiling is checked) the 192 kHz resampling,
    two thirds of the cost, is skipped and the true peak is left out of the levels.
    """
    with open_audio(path) as (container, stream):
        chain = METER_CHAIN if true_peak else LOUDNESS_ONLY_CHAIN
        graph = make_graph(stream, chain, frame_size=16384)  # numpy pays per call
        frames = run_graph(graph, decode_frames(container, stream))
        rate, channels = stream.codec_context.sample_rate, stream.codec_context.channels
        return meter_frames(frames, rate, channels, true_peak=own_true_peak)
