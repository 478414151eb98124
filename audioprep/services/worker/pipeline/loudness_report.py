"""The loudness report of a render: before/after levels, what was applied, warnings, ACX."""

from __future__ import annotations

from audioprep.domain.events import (
    AcxCheck,
    LevelsInfo,
    LoudnessReport,
    LoudnessTargetInfo,
    ReportWarning,
)
from audioprep.domain.loudness_targets import (
    ACX_NOISE_FLOOR_MAX,
    ACX_PEAK_MAX,
    ACX_RMS_MAX,
    ACX_RMS_MIN,
    LoudnessTarget,
)
from audioprep.services.worker.pipeline.level_meter import Levels
from audioprep.services.worker.pipeline.loudness import Loudness
from audioprep.services.worker.pipeline.normalize import Outcome


def _before(loud: Loudness | None) -> LevelsInfo | None:
    if loud is None:
        return None
    return LevelsInfo(
        integrated_lufs=loud.integrated_lufs,
        true_peak_db=loud.true_peak_db,
        lra=loud.lra,
        short_term_max_lufs=loud.short_term_max_lufs,
    )


def _after(levels: Levels) -> LevelsInfo:
    loud = levels.loudness
    return LevelsInfo(
        integrated_lufs=loud.integrated_lufs,
        true_peak_db=loud.true_peak_db,
        lra=loud.lra,
        short_term_max_lufs=loud.short_term_max_lufs,
        rms_db=levels.rms_db,
        sample_peak_db=levels.sample_peak_db,
        noise_floor_db=levels.noise_floor_db,
    )


def acx_check(levels: Levels) -> AcxCheck:
    """ACX: RMS -23..-18 dBFS, sample peaks <= -3 dBFS, noise floor <= -60 dBFS."""
    rms, peak, floor = levels.rms_db, levels.sample_peak_db, levels.noise_floor_db
    rms_ok = rms is not None and ACX_RMS_MIN <= rms <= ACX_RMS_MAX
    peak_ok = peak is None or peak <= ACX_PEAK_MAX
    floor_ok = floor is None or floor <= ACX_NOISE_FLOOR_MAX
    return AcxCheck(
        rms_db=rms,
        rms_pass=rms_ok,
        peak_db=peak,
        peak_pass=peak_ok,
        noise_floor_db=floor,
        noise_floor_pass=floor_ok,
        passed=rms_ok and peak_ok and floor_ok,
    )


def build_report(
    before: Loudness | None,
    after: Levels,
    target: LoudnessTarget | None,
    outcome: Outcome | None,
    plain_gain_db: float,
) -> LoudnessReport:
    """Assemble the camelCase report stored in `result.loudnessReport`."""
    if target is None or outcome is None:
        return LoudnessReport(before=_before(before), after=_after(after), gain_db=plain_gain_db)
    warnings = [ReportWarning(code=c, message=m) for c, m in outcome.warnings]
    acx = acx_check(after) if target.is_acx else None
    if acx is not None and not acx.noise_floor_pass:
        warnings.append(
            ReportWarning(
                code="acx_noise_floor",
                message=f"noise floor {acx.noise_floor_db} dBFS is above ACX's -60 dBFS",
            )
        )
    aim = LoudnessTargetInfo(
        preset=target.preset,
        integrated_lufs=target.target if target.measure == "lufs" else None,
        rms_db=target.target if target.measure == "rms" else None,
        true_peak_db=target.true_peak_db,
    )
    return LoudnessReport(
        before=_before(before),
        after=_after(after),
        target=aim,
        gain_db=round(outcome.gain_db, 2),
        limiter_ceiling_db=round(outcome.ceiling_db, 2),
        limiter_max_reduction_db=round(outcome.max_reduction_db, 2),
        measuring_passes=outcome.measuring_passes,
        encode_passes=outcome.encode_passes,
        warnings=warnings,
        acx=acx,
    )
