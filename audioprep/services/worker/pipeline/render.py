"""Render a recipe: stream decode → filter graph (→ limiter) → encoders, in constant memory.

One signal path feeds every output of the render (sinks.py): one decode, the voice chain and
the filters once, one calibration. With `normalize`, normalize.py drives calibration, encode
and verification passes; every render ends by decoding what it wrote and measuring each
output for its loudness report.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

from audioprep.domain.errors import INVALID_RECIPE, Permanent
from audioprep.domain.events import LoudnessReport, VoiceAnalysisInfo, VoiceReport, VoiceSteps
from audioprep.domain.recipe import OutputOptions, Recipe, check_recipe
from audioprep.services.worker.pipeline.excerpt import build_excerpt
from audioprep.services.worker.pipeline.formats import EncoderSettings, encoder_settings
from audioprep.services.worker.pipeline.level_meter import Levels, measure_file
from audioprep.services.worker.pipeline.loudness import Loudness
from audioprep.services.worker.pipeline.loudness_report import build_report
from audioprep.services.worker.pipeline.normalize import (
    LONG_SOURCE_MS,
    Outcome,
    normalize_outputs,
)
from audioprep.services.worker.pipeline.probe import MediaInfo
from audioprep.services.worker.pipeline.progress import Progress, StagedProgress
from audioprep.services.worker.pipeline.render_plan import (
    JoinSource,
    Plan,
    output_rate,
    plan_render,
    without_joins,
)
from audioprep.services.worker.pipeline.signal_path import PathRun, PcmCache, run_path
from audioprep.services.worker.pipeline.sinks import OutputSpec, Sink
from audioprep.services.worker.pipeline.voice_analysis import summary
from audioprep.services.worker.pipeline.voice_chain import VoicePlan

__all__ = ["JoinSource", "OutputSpec", "RenderResult", "render", "render_outputs"]

PartName = Literal["intro", "episode", "outro"]
# where each pass sits in the job's progress (0..1)
_NORMALIZE_SPANS = {
    "analysing voice": (0.0, 0.05),
    "measuring": (0.05, 0.12),
    "calibrating": (0.12, 0.3),
    "rendering": (0.3, 0.92),
    "verifying": (0.92, 0.99),
}
_PLAIN_SPANS = {
    "finding silence": (0.0, 0.05),
    "measuring": (0.0, 0.05),  # an intro/outro's episode loudness
    "rendering": (0.05, 0.92),
    "verifying": (0.92, 0.99),
}


@dataclass(frozen=True, slots=True)
class OutputRendered:
    """One written file, measured from the encoder side."""

    dst_path: str
    fmt: str
    duration_ms: int
    sample_rate: int
    channels: int
    codec: str
    bytes: int
    loudness_report: LoudnessReport | None = None


@dataclass(frozen=True, slots=True)
class PartRendered:
    """An intro, the episode or an outro as it went into the output."""

    part: PartName
    start_ms: int  # where it starts in the output
    duration_ms: int
    integrated_lufs: float | None  # after its matching gain, before normalisation
    gain_db: float = 0.0  # the matching gain (intro/outro)
    crossfade_ms: int = 0  # overlap with the part before it


@dataclass(frozen=True, slots=True)
class RenderResult:
    """What was written (the first output's figures; every output in `outputs`)."""

    duration_ms: int
    sample_rate: int
    channels: int
    codec: str
    bytes: int
    loudness_report: LoudnessReport | None = None
    voice_report: VoiceReport | None = None
    outputs: tuple[OutputRendered, ...] = ()
    parts: tuple[PartRendered, ...] = ()
    episode_start_ms: int = 0  # where the episode starts in the output (after an intro)
    episode_ms: int | None = None  # the episode's length in the output (with intro/outro)


def render(
    src_path: str,
    dst_path: str,
    recipe: Recipe,
    fmt: str,
    *,
    options: OutputOptions | None = None,
    title: str | None = None,
    on_progress: Callable[[float], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
    source_info: MediaInfo | None = None,
    source_loudness: Loudness | None = None,
    source_voice: VoiceAnalysisInfo | None = None,
    intro: JoinSource | None = None,
    outro: JoinSource | None = None,
) -> RenderResult:
    """Render `src_path` to `dst_path`; on any failure or cancel the partial file is removed.

    `source_info`/`source_loudness` (from ingest) skip a probe and, for untrimmed
    normalisation, the measuring pass. `on_stage` hears each pass begin (measuring,
    calibrating, rendering, verifying); `on_progress` is one monotonic fraction over them.
    """
    return render_outputs(
        src_path,
        [OutputSpec(dst_path, fmt, options)],
        recipe,
        title=title,
        on_progress=on_progress,
        on_stage=on_stage,
        source_info=source_info,
        source_loudness=source_loudness,
        source_voice=source_voice,
        intro=intro,
        outro=outro,
    )


def render_outputs(
    src_path: str,
    outputs: Sequence[OutputSpec],
    recipe: Recipe,
    *,
    title: str | None = None,
    on_progress: Callable[[float], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
    source_info: MediaInfo | None = None,
    source_loudness: Loudness | None = None,
    source_voice: VoiceAnalysisInfo | None = None,
    intro: JoinSource | None = None,
    outro: JoinSource | None = None,
) -> RenderResult:
    """Render the recipe once into every output; on any failure or cancel all partial files
    are removed. The signal path runs at the rate most outputs need; an output at another
    rate (opus: 48 kHz) resamples the shared signal for itself."""
    if not outputs:
        raise Permanent("a render needs at least one output", code=INVALID_RECIPE)
    check_recipe(recipe)
    settings = [encoder_settings(o.fmt, o.options) for o in outputs]

    def rate_for(wanted: int) -> int:
        return output_rate(wanted, [s.fmt.output_rate(wanted) for s in settings])

    spans = dict(_NORMALIZE_SPANS if recipe.normalize is not None else _PLAIN_SPANS)
    if len(outputs) > 1:  # one output's own passes: `verifying mp3`, `rendering opus`
        for output in outputs:
            spans[f"verifying {output.fmt}"] = spans["verifying"]
            spans[f"rendering {output.fmt}"] = spans["rendering"]
    staged = StagedProgress(on_progress, on_stage, spans)
    try:
        plan = plan_render(
            src_path,
            recipe,
            rate_for,
            source_info,
            source_loudness,
            staged,
            source_voice,
            intro=intro,
            outro=outro,
        )
        wanted = recipe.sample_rate or plan.path.source_rate
        rates = [s.fmt.output_rate(wanted) for s in settings]
        return _Renderer(src_path, outputs, settings, rates, plan, title, staged).run()
    except BaseException:
        for output in outputs:
            with contextlib.suppress(FileNotFoundError):
                os.remove(output.dst_path)
        raise


class _Renderer:
    """Encode passes over the planned path into the outputs, verification, the result."""

    def __init__(
        self,
        src_path: str,
        outputs: Sequence[OutputSpec],
        settings: list[EncoderSettings],
        rates: list[int],
        plan: Plan,
        title: str | None,
        staged: StagedProgress,
    ) -> None:
        self.src_path, self.outputs, self.settings, self.rates = src_path, outputs, settings, rates
        self.plan, self.title, self.staged = plan, title, staged
        self.samples = [0] * len(outputs)  # what each output got in its last encode

    def run(self) -> RenderResult:
        plan = self.plan
        scratch = Path(self.outputs[0].dst_path).parent
        cache = PcmCache(spill_dir=scratch) if plan.target is not None else None
        try:
            outcomes, levels = self._passes(cache, scratch)
        finally:
            if cache is not None:
                cache.close()
        if self.samples[0] == 0:
            raise Permanent("the edit leaves no audio", code=INVALID_RECIPE)
        self.staged.finish()
        rendered = tuple(
            self._rendered(i, outcomes[i] if outcomes else None, levels[i])
            for i in range(len(self.outputs))
        )
        first = rendered[0]
        parts, episode_start = self._parts()
        return RenderResult(
            duration_ms=first.duration_ms,
            sample_rate=first.sample_rate,
            channels=first.channels,
            codec=first.codec,
            bytes=first.bytes,
            loudness_report=first.loudness_report,
            voice_report=_voice_report(plan, levels[0]),
            outputs=rendered,
            parts=parts,
            episode_start_ms=episode_start,
            episode_ms=next((p.duration_ms for p in parts if p.part == "episode"), None),
        )

    def _passes(
        self, cache: PcmCache | None, scratch: Path
    ) -> tuple[list[Outcome] | None, list[Levels]]:
        plan = self.plan
        everyone = list(range(len(self.outputs)))
        if plan.target is None:
            self.encode(plan.gain_db, None, everyone, cache)
            return None, [self.verify(i) for i in everyone]
        excerpt = None
        if plan.target.measure == "lufs" and plan.length_ms > LONG_SOURCE_MS:
            self.staged.stage("calibrating")
            excerpt = build_excerpt(
                self.src_path,
                without_joins(plan.path),
                end_ms=plan.end_ms,
                scratch=scratch,
            )
        try:
            outcomes = normalize_outputs(
                self.src_path,
                plan.path,
                target=plan.target,
                measured=plan.before,
                codecs=[s.codec for s in self.settings],
                encode=lambda gain, ceiling, which: self.encode(gain, ceiling, which, cache),
                verify=self.verify,
                cache=cache,
                stage=self.staged.stage,
                length_ms=plan.length_ms,
                excerpt=excerpt,
            )
        finally:
            if excerpt is not None:
                Path(excerpt.path).unlink(missing_ok=True)
        return outcomes, [o.after for o in outcomes]

    def encode(
        self, gain: float, ceiling: float | None, which: Sequence[int], cache: PcmCache | None
    ) -> PathRun:
        """One pass over the whole signal path into the outputs `which`."""
        path = self.plan.path
        stage = "rendering"
        if len(which) < len(self.outputs):  # one output encoded again, alone
            stage = f"rendering {self.outputs[which[0]].fmt}"
        progress = Progress(self.staged.stage(stage), self.plan.length_ms)
        sinks = [
            Sink(
                self.outputs[i].dst_path,
                self.settings[i],
                self.outputs[i].options,
                rate=self.rates[i],
                layout=path.layout,
                title=self.title,
            )
            for i in which
        ]
        run = PathRun()
        try:
            for sink in sinks:
                sink.open()
            if len(sinks) == 1:  # frames come in the sink's own format, as they always did
                tail, frame_size = sinks[0].tail, sinks[0].frame_size
            else:  # planar float at the path's rate; each sink converts for itself
                tail = [("aformat", f"sample_fmts=fltp:sample_rates={path.rate}")]
                frame_size = None
                for sink in sinks:
                    sink.convert_from(path.rate, path.layout)
            position = 0
            for frame in run_path(
                self.src_path,
                path,
                gain_db=gain,
                ceiling_db=ceiling,
                tail=tail,
                frame_size=frame_size,
                stats=run,
                cache=cache,
            ):
                if len(sinks) > 1:  # one timeline for every sink's graph
                    frame.pts, frame.time_base = position, Fraction(1, path.rate)
                    position += frame.samples
                for sink in sinks:
                    sink.write(frame)
                progress.advance_samples(frame.samples, path.rate)
            for sink in sinks:
                sink.close()
        except BaseException:
            for sink in sinks:
                sink.abort()
            raise
        for i, sink in zip(which, sinks, strict=True):
            self.samples[i] = sink.samples
        progress.done()
        return run

    def verify(self, index: int) -> Levels:
        several = len(self.outputs) > 1
        self.staged.stage(f"verifying {self.outputs[index].fmt}" if several else "verifying")
        # the true peak is what a ceiling is checked against: measured when normalising
        return measure_file(
            self.outputs[index].dst_path,
            true_peak=self.plan.target is not None,
        )

    def _rendered(self, index: int, outcome: Outcome | None, after: Levels) -> OutputRendered:
        plan, output, rate = self.plan, self.outputs[index], self.rates[index]
        codec = self.settings[index].codec
        return OutputRendered(
            dst_path=output.dst_path,
            fmt=output.fmt,
            duration_ms=round(self.samples[index] * 1000 / rate),
            sample_rate=rate,
            channels=plan.path.channels,
            codec={"libmp3lame": "mp3", "libopus": "opus"}.get(codec, codec),
            bytes=os.path.getsize(output.dst_path),
            loudness_report=build_report(plan.before, after, plan.target, outcome, plan.gain_db),
        )

    def _parts(self) -> tuple[tuple[PartRendered, ...], int]:
        """Where each part landed, from what the join counted (planned figures as fallback)."""
        plan = self.plan
        joins = plan.path.joins
        if joins is None:
            return (), 0
        levels, rate = joins.levels, plan.path.rate
        planned = {p.name: p for p in plan.parts}
        order: tuple[PartName, ...] = ("intro", "episode", "outro")
        names = [n for n in order if n == "episode" or n in planned]
        if levels.measured:
            overlaps = [n * 1000 / rate for n in levels.crossfades]
        else:
            overlaps = [p.crossfade_ms for p in plan.parts]
        out: list[PartRendered] = []
        start = 0.0
        for index, name in enumerate(names):
            part = planned.get(name)
            if name in levels.samples:
                length = levels.samples[name] * 1000 / rate
            else:
                length = plan.episode_ms if part is None else part.length_ms
            overlap = overlaps[index - 1] if 0 < index <= len(overlaps) else 0.0
            start -= overlap
            out.append(
                PartRendered(
                    part=name,
                    start_ms=round(start),
                    duration_ms=round(length),
                    integrated_lufs=levels.lufs.get(name),
                    gain_db=0.0 if part is None else part.gain_db,
                    crossfade_ms=round(overlap),
                )
            )
            start += length
        episode_start = next(p.start_ms for p in out if p.part == "episode")
        return tuple(out), episode_start


def _voice_report(plan: Plan, after: Levels) -> VoiceReport | None:
    voice = plan.path.voice
    if voice is None and plan.trimmed_ms is None:
        return None
    voice = voice or VoicePlan()
    gains = voice.leveler_db
    steps = VoiceSteps(
        highpass_hz=voice.highpass_hz,
        dehum_hz=voice.notched_hz[0] if voice.notched_hz else None,
        notched_hz=voice.notched_hz,
        denoise_db=None if voice.denoise_db is None else round(voice.denoise_db, 1),
        leveler_max_gain_db=None if gains is None else round(float(gains.max()), 2),
        leveler_min_gain_db=None if gains is None else round(float(gains.min()), 2),
        deess=voice.deess,
        trimmed_ms=list(plan.trimmed_ms) if plan.trimmed_ms else None,
        cuts_ms=[[a, b] for a, b in voice.cuts_ms],
        cut_total_ms=sum(b - a for a, b in voice.cuts_ms),
    )
    return VoiceReport(
        before=plan.voice_before,
        after=summary(after.voice) if after.voice is not None else None,
        steps=steps,
    )
