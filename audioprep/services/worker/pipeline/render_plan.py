"""What a render decides before any output file is opened: measuring passes (sound bounds,
loudness), the voice chain, the intro/outro joins and the signal path."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from audioprep.domain.events import VoiceAnalysisInfo
from audioprep.domain.loudness_targets import LoudnessTarget, resolve_target
from audioprep.domain.recipe import Recipe, RecipeError
from audioprep.services.worker.pipeline.graph import (
    Window,
    fade_chain,
    gain_db,
    kept_window,
    output_layout,
    output_length_ms,
    prefix_chain,
)
from audioprep.services.worker.pipeline.joins import JoinPart, Joins, crossfade_ms, match_gain_db
from audioprep.services.worker.pipeline.loudness import Loudness, measure_loudness
from audioprep.services.worker.pipeline.probe import MediaInfo, probe
from audioprep.services.worker.pipeline.progress import StagedProgress
from audioprep.services.worker.pipeline.signal_path import SignalPath
from audioprep.services.worker.pipeline.voice_analysis import (
    Hum,
    VoiceAnalysis,
    measure_voice,
    summary,
)
from audioprep.services.worker.pipeline.voice_chain import (
    VoicePlan,
    needs_analysis,
    plan_voice,
    trim_bounds_ms,
)


@dataclass(frozen=True, slots=True)
class JoinSource:
    """An intro or outro as the worker has it: a local file, what its ingest measured."""

    path: str
    crossfade_ms: int
    info: MediaInfo | None = None
    loudness: Loudness | None = None


@dataclass(frozen=True, slots=True)
class PartPlan:
    """An intro or outro as planned: its length, loudness, matching gain and overlap."""

    name: str
    length_ms: float
    loudness: Loudness
    gain_db: float
    crossfade_ms: float


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything decided before the output file is opened."""

    path: SignalPath
    length_ms: float  # the whole output (intro + episode + outro − crossfades)
    gain_db: float
    target: LoudnessTarget | None
    before: Loudness | None  # the kept part (or the source, when that is what was measured)
    voice_before: VoiceAnalysisInfo | None = None
    trimmed_ms: tuple[int, int] | None = None
    end_ms: float = 0.0  # where the kept window ends in the source
    episode_ms: float = 0.0  # the episode's length in the output
    parts: tuple[PartPlan, ...] = ()


def output_rate(wanted: int, rates: list[int]) -> int:
    """The rate the signal path runs at: the one most outputs need (ties: the first's)."""
    if not rates:
        return wanted
    return max(rates, key=lambda r: (rates.count(r), -rates.index(r)))


def plan_render(
    src_path: str,
    recipe: Recipe,
    rate_for: Callable[[int], int],
    info: MediaInfo | None,
    source_loudness: Loudness | None,
    staged: StagedProgress,
    source_voice: VoiceAnalysisInfo | None = None,
    *,
    intro: JoinSource | None = None,
    outro: JoinSource | None = None,
) -> Plan:
    """Measuring passes (sound bounds, loudness) and the signal path; `rate_for` maps the
    wanted rate (recipe's, else the source's) to the rate the path runs at."""
    info = info or probe(src_path)
    bounds = None
    analysis: VoiceAnalysis | None = None
    have_summary = source_voice is not None
    if needs_analysis(recipe, have_summary):
        analysis = measure_voice(src_path, on_progress=staged.stage("analysing voice"))
    if recipe.trim_silence and analysis is not None:
        bounds = trim_bounds_ms(analysis)
    window = kept_window(recipe, source_duration_ms=info.duration_ms, sound_bounds_ms=bounds)
    if window.length_ms(info.duration_ms) <= 0:
        raise RecipeError("trim.startMs", "is at or past the end of the source")
    whole = window.start_ms == 0 and window.end_ms is None and recipe.speed == 1.0
    timing = prefix_chain(recipe, source_duration_ms=info.duration_ms, sound_bounds_ms=bounds)
    before: Loudness | None = source_loudness if whole else None
    norm = recipe.normalize
    target: LoudnessTarget | None = None
    layout = output_layout(recipe, info.channels)
    joining = intro is not None or outro is not None
    if norm is not None:
        target = resolve_target(
            preset=norm.preset,
            target_lufs=norm.target_lufs,
            true_peak_db=norm.true_peak_db,
            mono=layout == "mono",
        )
    if (norm is not None or joining) and (
        before is None or (before.integrated_lufs is None and before.true_peak_db is None)
    ):
        before = measure_loudness(
            src_path,
            filters=timing,
            expected_ms=window.length_ms(info.duration_ms),
            on_progress=staged.stage("measuring"),
        )
    rate = rate_for(recipe.sample_rate or info.sample_rate)
    voice = _voice_plan(recipe, analysis, source_voice, info.sample_rate, window, info.duration_ms)
    episode = output_length_ms(recipe, source_duration_ms=info.duration_ms, sound_bounds_ms=bounds)
    episode -= sum(b - a for a, b in voice.cuts_ms) / recipe.speed
    parts = _plan_parts(intro, outro, before, episode)
    joins = _joins(intro, outro, parts)
    length = episode + sum(p.length_ms - p.crossfade_ms for p in parts)
    path = SignalPath(
        timing=timing,
        fades=fade_chain(recipe, length),
        source_rate=info.sample_rate,
        rate=rate,
        layout=layout,
        voice=voice if voice.active else None,
        start_ms=window.start_ms,
        speed=recipe.speed,
        joins=joins,
    )
    gain = gain_db(recipe, before, target.target if target else None)
    voice_before = summary(analysis) if analysis is not None else source_voice
    return Plan(
        path=path,
        length_ms=length,
        gain_db=gain,
        target=target,
        before=before,
        voice_before=voice_before if voice.active or recipe.trim_silence else None,
        trimmed_ms=bounds,
        end_ms=info.duration_ms if window.end_ms is None else window.end_ms,
        episode_ms=episode,
        parts=tuple(parts),
    )


def _plan_parts(
    intro: JoinSource | None,
    outro: JoinSource | None,
    episode_loudness: Loudness | None,
    episode_ms: float,
) -> list[PartPlan]:
    """Length, loudness and matching gain of each part; overlaps no longer than the part,
    and together at most the episode's length."""
    parts: list[PartPlan] = []
    share = episode_ms / 2 if intro is not None and outro is not None else episode_ms
    for name, source in (("intro", intro), ("outro", outro)):
        if source is None:
            continue
        info = source.info or probe(source.path)
        loud = source.loudness
        if loud is None or loud.integrated_lufs is None:
            loud = measure_loudness(source.path)
        parts.append(
            PartPlan(
                name=name,
                length_ms=float(info.duration_ms),
                loudness=loud,
                gain_db=round(match_gain_db(episode_loudness, loud), 2),
                crossfade_ms=crossfade_ms(source.crossfade_ms, info.duration_ms, share),
            )
        )
    return parts


def _joins(
    intro: JoinSource | None, outro: JoinSource | None, parts: list[PartPlan]
) -> Joins | None:
    if not parts:
        return None
    by_name = {p.name: p for p in parts}

    def part(name: str, source: JoinSource | None) -> JoinPart | None:
        planned = by_name.get(name)
        if source is None or planned is None:
            return None
        return JoinPart(
            path=source.path, gain_db=planned.gain_db, crossfade_ms=planned.crossfade_ms
        )

    return Joins(intro=part("intro", intro), outro=part("outro", outro))


def without_joins(path: SignalPath) -> SignalPath:
    """The episode's own path (calibration excerpts are cut from the episode)."""
    return replace(path, joins=None)


def _voice_plan(
    recipe: Recipe,
    analysis: VoiceAnalysis | None,
    source_voice: VoiceAnalysisInfo | None,
    source_rate: int,
    window: Window,
    duration_ms: int,
) -> VoicePlan:
    """Decide the voice chain from the measuring pass, or from the ingest's summary."""
    if analysis is not None:
        hum, floor, level = analysis.hum, analysis.noise_floor_db, analysis.speech_level_db
    elif source_voice is not None:
        h = source_voice.hum
        hum = Hum(h.frequency_hz, h.level_db, 3) if h else None
        floor, level = source_voice.noise_floor_db, source_voice.speech_level_db
    else:
        hum, floor, level = None, None, None
    plan = plan_voice(
        recipe,
        analysis=analysis,
        hum=hum,
        noise_floor_db=floor,
        speech_level_db=level,
        source_rate=source_rate,
    )
    end = duration_ms if window.end_ms is None else window.end_ms
    inside = [(a, b) for a, b in plan.cuts_ms if a >= window.start_ms and b <= end]
    return replace(plan, cuts_ms=inside)
