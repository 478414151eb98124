"""What a voice recording is like, from one pass: levels, noise floor, speech, hum, clipping.

Streaming and cheap (numpy on 20 ms frames, a 1 Hz-resolution spectrum of one second in every
five for hum). Everything the voice chain decides comes from here: trimSilence and
shortenPauses cut where there is no speech (relative to the measured noise floor, so noisy
recordings work), the leveler rides the speech level, dehum "auto" notches what was found and
denoise "auto" sizes itself from the SNR.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from audioprep.domain.events import HumInfo, VoiceAnalysisInfo
from audioprep.services.worker.pipeline.decode import decode_frames, open_audio
from audioprep.services.worker.pipeline.filters import make_graph, run_graph
from audioprep.services.worker.pipeline.peaks import planar_float_for
from audioprep.services.worker.pipeline.progress import Progress

Samples = npt.NDArray[np.float32]
Floats = npt.NDArray[np.float64]
Mask = npt.NDArray[np.bool_]

FRAME_MS = 20
SILENT_DB = -100.0  # a frame this quiet is digital silence, not a noise floor
CLIP_LEVEL = 0.999
HUM_EVERY_S = 5.0
HUM_MIN_PROMINENCE_DB = 10.0
HUM_FREQUENCIES = (50.0, 60.0)
HUM_HARMONICS = 4
SPEECH_HANGOVER_MS = 200  # consonants and word tails around the loud frames


@dataclass(frozen=True, slots=True)
class Hum:
    frequency_hz: float
    level_db: float  # peak amplitude of the fundamental, dBFS
    harmonics: int  # harmonics (fundamental included) that stand out


@dataclass(frozen=True, slots=True)
class VoiceAnalysis:
    """Summary plus the per-frame data cuts and the leveler need."""

    rate: int
    frame_samples: int
    frame_db: Floats  # RMS per 20 ms frame (channel mean), dBFS
    speech: Mask  # voice activity per frame (loud frames widened by the hangover)
    loud: Mask  # frames above the speech threshold, not widened
    noise_floor_db: float | None  # None: the pauses are digital silence
    speech_level_db: float | None
    clipped_samples: int
    hum: Hum | None

    @property
    def snr_db(self) -> float | None:
        if self.speech_level_db is None:
            return None
        floor = self.noise_floor_db if self.noise_floor_db is not None else SILENT_DB
        return self.speech_level_db - floor

    @property
    def speech_ratio(self) -> float:
        return float(self.speech.mean()) if len(self.speech) else 0.0

    def frame_ms(self, index: int) -> float:
        return index * self.frame_samples * 1000 / self.rate

    def speech_bounds_ms(self, margin_ms: float) -> tuple[int, int] | None:
        """First and last speech, widened by a natural margin (None: no speech at all)."""
        idx = np.flatnonzero(self.loud)
        if idx.size == 0:
            return None
        total_ms = len(self.speech) * self.frame_samples * 1000 / self.rate
        start = max(0.0, self.frame_ms(int(idx[0])) - margin_ms)
        end = min(total_ms, self.frame_ms(int(idx[-1]) + 1) + margin_ms)
        return math.floor(start), math.ceil(end)

    def pauses_ms(self) -> list[tuple[float, float]]:
        """Runs without speech between the first and the last speech, in ms."""
        idx = np.flatnonzero(self.loud)
        if idx.size < 2:
            return []
        inner = self.loud[idx[0] : idx[-1] + 1]
        edges = np.flatnonzero(np.diff(inner.astype(np.int8)))
        runs = []
        # a pause starts where speech ends (diff -1) and ends where speech starts (diff +1)
        starts = [e + 1 for e in edges if inner[e]]
        ends = [e + 1 for e in edges if not inner[e]]
        for s, e in zip(starts, ends, strict=False):
            runs.append((self.frame_ms(int(idx[0] + s)), self.frame_ms(int(idx[0] + e))))
        return runs


class VoiceAnalyzer:
    """Feed planar float blocks (channels, n) at `rate`; `result()` at the end."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.frame = max(1, round(rate * FRAME_MS / 1000))
        self._carry = np.zeros(0, dtype=np.float32)
        self._frames: list[Floats] = []
        self._clipped = 0
        self._hum_every = int(HUM_EVERY_S * rate)
        self._hum_len = rate  # 1 s windows: 1 Hz bins
        self._hum_window = _hum_window(self._hum_len)
        self._hum_acc: Floats | None = None
        self._hum_count = 0
        self._hum_buf = np.zeros(0, dtype=np.float32)
        self._position = 0

    def feed(self, block: Samples) -> None:
        if block.shape[1] == 0:
            return
        self._clipped += int(np.count_nonzero(np.abs(block) >= CLIP_LEVEL))
        mono = block.mean(axis=0, dtype=np.float32) if block.shape[0] > 1 else block[0]
        self._levels(mono)
        self._hum(mono)

    def _levels(self, mono: Samples) -> None:
        data = np.concatenate([self._carry, mono])
        whole = len(data) // self.frame * self.frame
        if whole:
            frames = data[:whole].reshape(-1, self.frame).astype(np.float64)
            power = np.mean(frames * frames, axis=1)
            with np.errstate(divide="ignore"):
                self._frames.append(10 * np.log10(np.maximum(power, 1e-14)))
        self._carry = data[whole:]

    def _hum(self, mono: Samples) -> None:
        start = self._position
        self._position += len(mono)
        # collect the first second of every HUM_EVERY_S span
        offset = 0
        while offset < len(mono):
            pos = (start + offset) % self._hum_every
            if pos < self._hum_len:
                take = min(self._hum_len - pos, len(mono) - offset)
                self._hum_buf = np.concatenate([self._hum_buf, mono[offset : offset + take]])
                offset += take
                if len(self._hum_buf) >= self._hum_len:
                    self._spectrum(self._hum_buf[: self._hum_len])
                    self._hum_buf = np.zeros(0, dtype=np.float32)
            else:
                offset += self._hum_every - pos

    def _spectrum(self, second: Samples) -> None:
        spec = np.abs(np.fft.rfft(second * self._hum_window))[:1001].astype(np.float64)
        power = spec * spec
        self._hum_acc = power if self._hum_acc is None else self._hum_acc + power
        self._hum_count += 1

    def result(self) -> VoiceAnalysis:
        frame_db = np.concatenate(self._frames) if self._frames else np.zeros(0)
        floor, loud, level = _speech_activity(frame_db)
        speech = _dilate(loud, max(1, round(SPEECH_HANGOVER_MS / FRAME_MS)))
        return VoiceAnalysis(
            rate=self.rate,
            frame_samples=self.frame,
            frame_db=frame_db,
            speech=speech,
            loud=loud,
            noise_floor_db=floor,
            speech_level_db=level,
            clipped_samples=self._clipped,
            hum=self._find_hum(),
        )

    def _find_hum(self) -> Hum | None:
        if self._hum_acc is None:
            return None
        power = self._hum_acc / self._hum_count
        best: Hum | None = None
        best_score = 0.0
        for f0 in HUM_FREQUENCIES:
            standing = 0
            score = 0.0
            for k in range(1, HUM_HARMONICS + 1):
                prominence = _line_prominence_db(power, f0 * k)
                if prominence >= HUM_MIN_PROMINENCE_DB:
                    standing += 1
                    score += prominence
            fundamental = _line_prominence_db(power, f0)
            # the fundamental, or (small speakers) two harmonics, must stand out
            if (fundamental >= HUM_MIN_PROMINENCE_DB or standing >= 2) and score > best_score:
                peak = math.sqrt(float(power[int(f0) - 1 : int(f0) + 2].sum()))
                level = 20 * math.log10(max(peak * 4 / self._hum_len / math.sqrt(1.5), 1e-12))
                best = Hum(frequency_hz=f0, level_db=round(level, 1), harmonics=standing)
                best_score = score
        return best


@functools.lru_cache(maxsize=8)
def _hum_window(length: int) -> Samples:
    """The hum spectrum's Hann window, made once per rate (0.4 ms for 1 s at 44.1 kHz; every
    ingest used to compute it again), read-only since it is shared."""
    window = np.hanning(length).astype(np.float32)
    window.flags.writeable = False
    return window


def _line_prominence_db(power: Floats, freq: float) -> float:
    """How far a 1 Hz-wide line at `freq` stands above the spectrum 3-10 Hz around it."""
    i = round(freq)
    if i + 11 >= len(power):
        return 0.0
    line = float(power[i - 1 : i + 2].max())
    around = np.concatenate([power[i - 10 : i - 2], power[i + 3 : i + 11]])
    base = float(np.median(around))
    if line <= 0 or base <= 0:
        return 0.0 if line <= 0 else 60.0
    return 10 * math.log10(line / base)


def _speech_activity(frame_db: Floats) -> tuple[float | None, Mask, float | None]:
    """(noise floor, loud frames, speech level): the threshold sits above the measured floor."""
    if frame_db.size == 0:
        return None, np.zeros(0, dtype=bool), None
    audible = frame_db[frame_db > SILENT_DB]
    if audible.size == 0:
        return None, np.zeros(frame_db.shape, dtype=bool), None
    silent_share = 1 - audible.size / frame_db.size
    floor: float | None = None if silent_share > 0.05 else float(np.percentile(audible, 10))
    top = float(np.percentile(audible, 95))
    base = floor if floor is not None else max(top - 60.0, -90.0)
    threshold = base + max(8.0, min(20.0, (top - base) / 2))
    loud = frame_db > threshold
    level = None
    if loud.any():
        level = float(10 * np.log10(np.mean(np.power(10.0, frame_db[loud] / 10))))
    return (None if floor is None else round(floor, 2)), loud, level


def _dilate(mask: Mask, radius: int) -> Mask:
    """Widen every True run by `radius` frames on both sides."""
    if not mask.any():
        return mask
    kernel = np.ones(2 * radius + 1, dtype=np.int32)
    return np.convolve(mask.astype(np.int32), kernel, mode="same") > 0


def summary(analysis: VoiceAnalysis) -> VoiceAnalysisInfo:
    """The camelCase summary stored in job results."""
    hum = analysis.hum
    return VoiceAnalysisInfo(
        noise_floor_db=analysis.noise_floor_db,
        speech_level_db=None
        if analysis.speech_level_db is None
        else round(analysis.speech_level_db, 2),
        snr_db=None if analysis.snr_db is None else round(analysis.snr_db, 2),
        hum=HumInfo(frequency_hz=hum.frequency_hz, level_db=hum.level_db) if hum else None,
        clipped_samples=analysis.clipped_samples,
        speech_ratio=round(analysis.speech_ratio, 3),
    )


def measure_voice(
    path: str,
    *,
    on_progress: Callable[[float], None] | None = None,
) -> VoiceAnalysis:
    """The measuring pass over the whole source (source rate, channels averaged)."""
    with open_audio(path) as (container, stream):
        total_ms = container.duration / 1000 if container.duration else None
        progress = Progress(on_progress, total_ms)
        analyzer = VoiceAnalyzer(stream.codec_context.sample_rate)
        channels = stream.codec_context.channels
        graph = make_graph(stream, [("asetpts", "PTS-STARTPTS"), planar_float_for(channels)])
        for frame in run_graph(graph, decode_frames(container, stream)):
            analyzer.feed(np.asarray(frame.to_ndarray()[:, : frame.samples], dtype=np.float32))
            progress.advance_samples(frame.samples, frame.sample_rate)
    progress.done()
    return analyzer.result()
