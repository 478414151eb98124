"""Normalisation that lands: gain to target, true-peak limiter, and a check of the encoded file.

1. Start from the measured loudness of the kept part: gain = target - measured.
2. Calibrate (dry runs: decode → gain → limiter → fades → meter, no encoder) until the
   limited signal is within 0.1 LU of the aim; limiting lowers loudness, so the gain grows by
   secant steps. Skipped when the measured true peak shows the limiter will not act.
3. Encode, decode what was written and measure it (ebur128 and our meter). Off target by more
   than 0.3 LU, or over the ceiling, and it corrects and re-encodes: a lossy codec's overshoot
   lowers the limiter's ceiling by that much, a codec loudness shift moves the aim.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from audioprep.domain.loudness_targets import LoudnessTarget
from audioprep.services.worker.pipeline.excerpt import Excerpt
from audioprep.services.worker.pipeline.level_meter import LOUDNESS_ONLY_CHAIN, Levels
from audioprep.services.worker.pipeline.loudness import Loudness, LoudnessMeter
from audioprep.services.worker.pipeline.progress import Progress
from audioprep.services.worker.pipeline.signal_path import PathRun, PcmCache, SignalPath, run_path

CALIBRATION_TOLERANCE_LU = 0.1
# Off by more than this after an encode and it encodes again. 0.15 LU keeps us closer than
# ffmpeg-normalize; past LONG_SOURCE_MS a re-encode costs a minute or more, so long sources
# re-encode only past 0.3 LU (still well inside the ±0.5 LU promise).
VERIFY_TOLERANCE_LU = 0.15
LONG_VERIFY_TOLERANCE_LU = 0.3
# Several outputs of one render land within this of each other (each alone may be off by its
# tolerance, the other way): the one farthest from the target is encoded again until they do.
SPREAD_TOLERANCE_LU = 0.2
LONG_SOURCE_MS = 10 * 60_000
MAX_DRY_RUNS = 6
MAX_ENCODES = 4
HEAVY_LIMITING_DB = 6.0
MAX_LIMITING_DB = 20.0  # past this much limiting the target is out of reach (warned)
PEAK_MARGIN_DB = 0.05  # our detector and ebur128's 192 kHz resampler differ by a few 0.01 dB
# first guess of how far each codec pushes true peaks over a limited signal; verification
# learns the rest per file
CODEC_HEADROOM_DB = {"pcm_s16le": 0.0, "pcm_s24le": 0.0, "flac": 0.0}
LOSSY_HEADROOM_DB = 0.5


@dataclass(slots=True)
class Outcome:
    """What normalisation did, for the loudness report."""

    gain_db: float
    ceiling_db: float
    max_reduction_db: float
    measuring_passes: int
    encode_passes: int
    after: Levels
    warnings: list[tuple[str, str]] = field(default_factory=list)


EncodeFn = Callable[[float, float], PathRun]  # (gain dB, ceiling dB) -> what the pass did
StageFn = Callable[[str], Callable[[float], None]]  # stage name -> that pass's progress
VerifyFn = Callable[[], Levels]
# several outputs: (gain, ceiling, which outputs) -> the pass; verify one output by index
EncodeManyFn = Callable[[float, float, Sequence[int]], PathRun]
VerifyOneFn = Callable[[int], Levels]


def metric(levels: Levels, target: LoudnessTarget) -> float | None:
    """The value the target is about: integrated LUFS, or RMS dBFS (ACX)."""
    return levels.integrated if target.measure == "lufs" else levels.rms_db


def normalize(
    src_path: str,
    path: SignalPath,
    *,
    target: LoudnessTarget,
    measured: Loudness | None,
    codec: str,
    encode: EncodeFn,
    verify: VerifyFn,
    cache: PcmCache | None = None,
    stage: StageFn | None = None,
    length_ms: float | None = None,
    excerpt: Excerpt | None = None,
) -> Outcome:
    """Run calibration, encode and verification passes; returns the final figures.

    With an `excerpt` (long sources) the dry runs run on it: the full file's loudness is
    predicted as measured + (excerpt after the chain − excerpt before it).
    """
    (outcome,) = normalize_outputs(
        src_path,
        path,
        target=target,
        measured=measured,
        codecs=[codec],
        encode=lambda gain, ceiling, _which: encode(gain, ceiling),
        verify=lambda _index: verify(),
        cache=cache,
        stage=stage,
        length_ms=length_ms,
        excerpt=excerpt,
    )
    return outcome


@dataclass(slots=True)
class _Round:
    """Where one output's normalisation stands between encodes."""

    gain: float
    ceiling: float
    aim: float
    calibration: _Calibration
    warnings: list[tuple[str, str]]
    dry_runs: int = 0
    encodes: int = 0
    skipped: bool = False
    run: PathRun = field(default_factory=PathRun)
    after: Levels | None = None

    def fork(self) -> _Round:
        """A copy for one output (its own calibration points and warnings)."""
        return replace(self, calibration=self.calibration.fork(), warnings=list(self.warnings))


def normalize_outputs(
    src_path: str,
    path: SignalPath,
    *,
    target: LoudnessTarget,
    measured: Loudness | None,
    codecs: Sequence[str],
    encode: EncodeManyFn,
    verify: VerifyOneFn,
    cache: PcmCache | None = None,
    stage: StageFn | None = None,
    length_ms: float | None = None,
    excerpt: Excerpt | None = None,
) -> list[Outcome]:
    """`normalize` for several outputs of one signal path: one calibration and one encode
    pass feeding every encoder (at the ceiling the most demanding codec needs), then each
    output verified; only an output that missed is corrected and encoded again, alone."""
    long = length_ms is not None and length_ms > LONG_SOURCE_MS
    tolerance = LONG_VERIFY_TOLERANCE_LU if long else VERIFY_TOLERANCE_LU
    offset = 0.0
    start = measured.integrated_lufs if measured else None
    if excerpt is not None and excerpt.raw_lufs is not None and start is not None:
        offset = excerpt.raw_lufs - start
        calibration = _Calibration(
            excerpt.path, excerpt.signal, target, PcmCache(), stage, excerpt.length_ms
        )
    else:
        calibration = _Calibration(src_path, path, target, cache, stage, length_ms)
    headroom = max(CODEC_HEADROOM_DB.get(codec, LOSSY_HEADROOM_DB) for codec in codecs)
    ceiling = target.true_peak_db - headroom - PEAK_MARGIN_DB
    everyone = list(range(len(codecs)))
    if start is None:
        run = encode(0.0, ceiling, everyone)
        warning = ("silent_source", "nothing above the loudness gate; no gain applied")
        return [
            Outcome(0.0, ceiling, run.max_reduction_db, 0, 1, verify(i), [warning])
            for i in everyone
        ]
    peak = measured.true_peak_db if measured else None
    shared = _Round(target.target - start, ceiling, target.target, calibration, [])
    _prepare(shared, path, target, measured, offset, start, peak)
    run = encode(shared.gain, shared.ceiling, everyone)
    shared.encodes, shared.run = 1, run
    rounds = [shared.fork() for _ in everyone]
    for index, state in enumerate(rounds):
        state.after = verify(index)
        if _judge(state, target, tolerance):
            continue
        for _ in range(MAX_ENCODES - 1):
            _prepare(state, path, target, measured, offset, start, peak)
            state.run = encode(state.gain, state.ceiling, [index])
            state.encodes += 1
            state.after = verify(index)
            if _judge(state, target, tolerance):
                break
    while (worst := _outlier(rounds, target)) is not None:
        state = rounds[worst]
        _aim_again(state, target)
        _prepare(state, path, target, measured, offset, start, peak)
        state.run = encode(state.gain, state.ceiling, [worst])
        state.encodes += 1
        state.after = verify(worst)
    return [_outcome(state, target) for state in rounds]


def _outlier(rounds: list[_Round], target: LoudnessTarget) -> int | None:
    """The output to encode again so the outputs agree within SPREAD_TOLERANCE_LU: the one
    farthest from the target that may still be encoded (None when they agree)."""
    values = [metric(r.after, target) if r.after is not None else None for r in rounds]
    known = [v for v in values if v is not None]
    if len(known) < 2 or max(known) - min(known) <= SPREAD_TOLERANCE_LU:
        return None
    candidates = [
        (abs(v - target.target), i)
        for i, (v, r) in enumerate(zip(values, rounds, strict=True))
        if v is not None and r.encodes < MAX_ENCODES and not _unreachable(r.warnings)
    ]
    return max(candidates)[1] if candidates else None


def _aim_again(state: _Round, target: LoudnessTarget) -> None:
    """Move the aim by what the last encode missed by (as `_judge` does past tolerance)."""
    assert state.after is not None
    value = metric(state.after, target)
    if value is None:
        return
    state.aim += target.target - value
    if state.skipped:
        state.gain += target.target - value


def _prepare(
    state: _Round,
    path: SignalPath,
    target: LoudnessTarget,
    measured: Loudness | None,
    offset: float,
    start: float,
    peak: float | None,
) -> None:
    """Before an encode: calibrate the gain, unless the limiter will not act (then the
    measured loudness is exact and loudness follows the gain 1:1)."""
    skip_dry = (
        target.measure == "lufs"
        and not path.fades
        and path.voice is None
        and path.joins is None
        and measured is not None
        and peak is not None
        and peak + state.gain <= state.ceiling
        and state.dry_runs == 0
    )
    state.skipped = skip_dry
    if skip_dry:
        return
    gain, runs, reachable = state.calibration.run(
        state.gain, state.ceiling, state.aim + offset, start, peak
    )
    state.gain = gain
    state.dry_runs += runs
    if not reachable and not _unreachable(state.warnings):
        state.warnings.append(
            (
                "target_unreachable",
                f"more than {MAX_LIMITING_DB:.0f} dB of limiting would be needed; stopped there",
            )
        )


def _judge(state: _Round, target: LoudnessTarget, tolerance: float) -> bool:
    """After a verification: done, or adjust ceiling / aim / gain for the next encode."""
    assert state.after is not None
    value, peak = metric(state.after, target), state.after.true_peak
    loud_ok = value is None or abs(value - target.target) <= tolerance
    peak_ok = peak is None or peak <= target.true_peak_db
    if (loud_ok or _unreachable(state.warnings)) and peak_ok:
        return True
    if not peak_ok and peak is not None:
        state.ceiling -= peak - target.true_peak_db + PEAK_MARGIN_DB * 2
    if not loud_ok and value is not None and not _unreachable(state.warnings):
        state.aim += target.target - value  # the codec (or a downmix) moved the loudness
        if state.skipped:  # no limiting, no calibration: loudness follows the gain 1:1
            state.gain += target.target - value
    return False


def _outcome(state: _Round, target: LoudnessTarget) -> Outcome:
    after = state.after
    assert after is not None
    warnings = state.warnings
    if state.run.max_reduction_db > HEAVY_LIMITING_DB:
        warnings.append(
            (
                "heavy_limiting",
                f"the limiter took off up to {state.run.max_reduction_db:.1f} dB to reach the "
                "target",
            )
        )
    value, peak = metric(after, target), after.true_peak
    missed = value is not None and abs(value - target.target) > LONG_VERIFY_TOLERANCE_LU
    if missed and not _unreachable(warnings):
        warnings.append(("target_missed", f"ended at {value:.1f} after {state.encodes} encodes"))
    if peak is not None and peak > target.true_peak_db:
        warnings.append(
            ("ceiling_exceeded", f"true peak {peak:.2f} dBTP after {state.encodes} encodes")
        )
    return Outcome(
        state.gain,
        state.ceiling,
        state.run.max_reduction_db,
        state.dry_runs,
        state.encodes,
        after,
        warnings,
    )


def _unreachable(warnings: list[tuple[str, str]]) -> bool:
    return any(code == "target_unreachable" for code, _ in warnings)


class _Calibration:
    """Secant search for the gain whose limited output meets the aim, remembering its points.

    Points measured at one ceiling stay valid while the ceiling holds, so a later round that
    only moves the aim (a codec's loudness shift) needs no new dry run at all: the next
    verification checks the estimate.
    """

    def __init__(
        self,
        src_path: str,
        path: SignalPath,
        target: LoudnessTarget,
        cache: PcmCache | None,
        stage: StageFn | None,
        length_ms: float | None,
    ) -> None:
        self._args = (src_path, path, target, cache)
        self._stage = stage
        self._length_ms = length_ms
        self._target = target
        self._points: list[tuple[float, float]] = []
        self._ceiling: float | None = None
        self._slope = 1.0

    def fork(self) -> _Calibration:
        """A copy that learns on its own from here (same source, cache and path)."""
        twin = copy.copy(self)
        twin._points = list(self._points)
        return twin

    def run(
        self, gain: float, ceiling: float, aim: float, start: float, peak: float | None
    ) -> tuple[float, int, bool]:
        """(gain, dry runs used, reachable)."""
        peak = peak if peak is not None else start + 20.0
        max_gain = max(self._target.target - start, ceiling - peak + MAX_LIMITING_DB)
        if self._ceiling is not None and abs(ceiling - self._ceiling) < 1e-9 and self._points:
            g, v = self._points[-1]
            return min(g + (aim - v) / self._slope, max_gain), 0, True
        if self._points:  # new ceiling: start from the old estimate, keep the slope
            g, v = self._points[-1]
            gain = min(g + (aim - v) / self._slope, max_gain)
        self._points, self._ceiling = [], ceiling
        runs = 0
        for _ in range(MAX_DRY_RUNS):
            progress = Progress(
                self._stage("calibrating") if self._stage else None, self._length_ms
            )
            value = _dry_run(gain, ceiling, *self._args, progress)
            runs += 1
            if value is None:
                return gain, runs, True
            self._points.append((gain, value))
            error = aim - value
            if abs(error) <= CALIBRATION_TOLERANCE_LU:
                return gain, runs, True
            if len(self._points) >= 2:
                (g0, v0), (g1, v1) = self._points[-2], self._points[-1]
                if abs(g1 - g0) > 1e-6:
                    self._slope = min(1.0, max(0.05, (v1 - v0) / (g1 - g0)))
            nxt = gain + error / self._slope
            if nxt > max_gain:
                if gain >= max_gain - 1e-6:
                    return gain, runs, False
                nxt = max_gain
            gain = nxt
        return gain, runs, True


def _dry_run(
    gain: float,
    ceiling: float,
    src_path: str,
    path: SignalPath,
    target: LoudnessTarget,
    cache: PcmCache | None,
    progress: Progress,
) -> float | None:
    frames = run_path(
        src_path,
        path,
        gain_db=gain,
        ceiling_db=ceiling,
        tail=list(LOUDNESS_ONLY_CHAIN),
        cache=cache,
    )
    # only the one figure the target is about: ebur128's integrated loudness, or plain RMS
    loudness = LoudnessMeter()
    sum_sq, count = 0.0, 0
    for frame in frames:
        progress.advance_samples(frame.samples, path.rate)
        if target.measure == "lufs":
            loudness.feed(frame)
        else:
            pcm = frame.to_ndarray()[:, : frame.samples]
            sum_sq += float(np.square(pcm, dtype=np.float64).sum())
            count += pcm.size
    progress.done()
    if target.measure == "lufs":
        return loudness.result().integrated_lufs
    return 10 * math.log10(sum_sq / count) if count and sum_sq > 0 else None
