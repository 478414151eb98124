"""Render a recipe: stream decode → filter graph (→ limiter) → encoder, in constant memory.

With `normalize`, normalize.py drives calibration, encode and verification passes; every
render ends by decoding what it wrote and measuring it for the loudness report.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import av.container
from av.audio.frame import AudioFrame
from av.audio.stream import AudioStream

from services.worker.pipeline.formats import EncoderSettings, encoder_settings
from services.worker.pipeline.graph import (
    fade_chain,
    gain_db,
    kept_window,
    output_layout,
    output_length_ms,
    prefix_chain,
)
from services.worker.pipeline.level_meter import Levels, measure_file
from services.worker.pipeline.loudness import Loudness, measure_loudness
from services.worker.pipeline.loudness_report import build_report
from services.worker.pipeline.mp3 import LAME_QUALITY, LameWriter
from services.worker.pipeline.normalize import Outcome, normalize
from services.worker.pipeline.probe import MediaInfo, probe
from services.worker.pipeline.progress import Progress, StagedProgress
from services.worker.pipeline.signal_path import PathRun, PcmCache, SignalPath, run_path
from services.worker.pipeline.silence import find_sound_bounds
from shared.errors import INVALID_RECIPE, RENDER_FAILED, Permanent
from shared.events import LoudnessReport
from shared.loudness_targets import LoudnessTarget, resolve_target
from shared.recipe import OutputOptions, Recipe, RecipeError, check_recipe

_CODEC_NAMES = {"libmp3lame": "mp3", "libopus": "opus"}  # reported like probe reports them
_LAME_FRAME = 1152 * 4  # samples per graph frame fed to lameenc (any size works)
# where each pass sits in the job's progress (0..1)
_NORMALIZE_SPANS = {
    "finding silence": (0.0, 0.05),
    "measuring": (0.05, 0.12),
    "calibrating": (0.12, 0.3),
    "rendering": (0.3, 0.92),
    "verifying": (0.92, 0.99),
}
_PLAIN_SPANS = {
    "finding silence": (0.0, 0.05),
    "rendering": (0.05, 0.92),
    "verifying": (0.92, 0.99),
}


@dataclass(frozen=True, slots=True)
class RenderResult:
    """What was written, measured from the encoder side."""

    duration_ms: int
    sample_rate: int
    channels: int
    codec: str
    bytes: int
    loudness_report: LoudnessReport | None = None


@dataclass(frozen=True, slots=True)
class _Plan:
    """Everything decided before the output file is opened."""

    path: SignalPath
    length_ms: float
    gain_db: float
    target: LoudnessTarget | None
    before: Loudness | None  # the kept part (or the source, when that is what was measured)


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
    should_stop: Callable[[], bool] | None = None,
    source_info: MediaInfo | None = None,
    source_loudness: Loudness | None = None,
) -> RenderResult:
    """Render `src_path` to `dst_path`; on any failure or cancel the partial file is removed.

    `source_info`/`source_loudness` (from ingest) skip a probe and, for untrimmed
    normalisation, the measuring pass. `on_stage` hears each pass begin (measuring,
    calibrating, rendering, verifying); `on_progress` is one monotonic fraction over them.
    """
    check_recipe(recipe)
    settings = encoder_settings(fmt, options)
    spans = _NORMALIZE_SPANS if recipe.normalize is not None else _PLAIN_SPANS
    staged = StagedProgress(on_progress, on_stage, spans)
    try:
        plan = _plan(src_path, recipe, settings, source_info, source_loudness, should_stop, staged)
        return _render_planned(
            src_path, dst_path, plan, settings, options, title, staged, should_stop
        )
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(dst_path)
        raise


def _render_planned(
    src_path: str,
    dst_path: str,
    plan: _Plan,
    settings: EncoderSettings,
    options: OutputOptions | None,
    title: str | None,
    staged: StagedProgress,
    should_stop: Callable[[], bool] | None,
) -> RenderResult:
    """Encode (normalised: as many passes as it takes), then measure what was written."""
    cache = PcmCache(spill_dir=Path(dst_path).parent) if plan.target is not None else None
    try:
        return _normalized_or_plain(
            src_path, dst_path, plan, settings, options, title, staged, should_stop, cache
        )
    finally:
        if cache is not None:
            cache.close()


def _normalized_or_plain(
    src_path: str,
    dst_path: str,
    plan: _Plan,
    settings: EncoderSettings,
    options: OutputOptions | None,
    title: str | None,
    staged: StagedProgress,
    should_stop: Callable[[], bool] | None,
    cache: PcmCache | None,
) -> RenderResult:
    written: list[int] = []

    def encode(gain: float, ceiling: float | None) -> PathRun:
        run = _encode(
            src_path,
            dst_path,
            plan,
            settings,
            options,
            title,
            staged.stage("rendering"),
            should_stop,
            gain=gain,
            ceiling=ceiling,
            cache=cache,
        )
        written.append(run.samples)
        return run

    def verify() -> Levels:
        staged.stage("verifying")
        return measure_file(dst_path, should_stop=should_stop)

    outcome: Outcome | None = None
    if plan.target is not None:
        outcome = normalize(
            src_path,
            plan.path,
            target=plan.target,
            measured=plan.before,
            codec=settings.codec,
            encode=encode,
            verify=verify,
            should_stop=should_stop,
            cache=cache,
            stage=staged.stage,
            length_ms=plan.length_ms,
        )
        after = outcome.after
    else:
        encode(plan.gain_db, None)
        after = verify()
    samples_out = written[-1]
    if samples_out == 0:
        raise Permanent("the edit leaves no audio", code=INVALID_RECIPE)
    return RenderResult(
        duration_ms=round(samples_out * 1000 / plan.path.rate),
        sample_rate=plan.path.rate,
        channels=plan.path.channels,
        codec=_CODEC_NAMES.get(settings.codec, settings.codec),
        bytes=os.path.getsize(dst_path),
        loudness_report=build_report(plan.before, after, plan.target, outcome, plan.gain_db),
    )


def _plan(
    src_path: str,
    recipe: Recipe,
    settings: EncoderSettings,
    info: MediaInfo | None,
    source_loudness: Loudness | None,
    should_stop: Callable[[], bool] | None,
    staged: StagedProgress,
) -> _Plan:
    """Measuring passes (sound bounds, loudness) and the signal path."""
    info = info or probe(src_path)
    bounds = None
    if recipe.trim_silence:
        staged.stage("finding silence")
        bounds = find_sound_bounds(src_path, should_stop=should_stop)
    window = kept_window(recipe, source_duration_ms=info.duration_ms, sound_bounds_ms=bounds)
    if window.length_ms(info.duration_ms) <= 0:
        raise RecipeError("trim.startMs", "is at or past the end of the source")
    whole = window.start_ms == 0 and window.end_ms is None and recipe.speed == 1.0
    timing = prefix_chain(recipe, source_duration_ms=info.duration_ms, sound_bounds_ms=bounds)
    before: Loudness | None = source_loudness if whole else None
    norm = recipe.normalize
    target: LoudnessTarget | None = None
    layout = output_layout(recipe, info.channels)
    if norm is not None:
        target = resolve_target(
            preset=norm.preset,
            target_lufs=norm.target_lufs,
            true_peak_db=norm.true_peak_db,
            mono=layout == "mono",
        )
        if before is None or (before.integrated_lufs is None and before.true_peak_db is None):
            before = measure_loudness(
                src_path,
                filters=timing,
                expected_ms=window.length_ms(info.duration_ms),
                on_progress=staged.stage("measuring"),
                should_stop=should_stop,
            )
    rate = settings.fmt.output_rate(recipe.sample_rate or info.sample_rate)
    length = output_length_ms(recipe, source_duration_ms=info.duration_ms, sound_bounds_ms=bounds)
    path = SignalPath(
        timing=timing,
        fades=fade_chain(recipe, length),
        source_rate=info.sample_rate,
        rate=rate,
        layout=layout,
    )
    gain = gain_db(recipe, before, target.target if target else None)
    return _Plan(path=path, length_ms=length, gain_db=gain, target=target, before=before)


def _open_encoder(
    out: av.container.OutputContainer, path: SignalPath, settings: EncoderSettings
) -> AudioStream:
    """Add and open the output stream (frame_size is known only once open, see NOTES)."""
    stream = out.add_stream(settings.codec, rate=path.rate, layout=path.layout)
    if not isinstance(stream, AudioStream):
        raise Permanent(f"{settings.codec} is not an audio encoder", code=RENDER_FAILED)
    stream.format = settings.sample_fmt
    if settings.bitrate_kbps is not None:
        stream.bit_rate = settings.bitrate_kbps * 1000
    stream.codec_context.open()
    return stream


def _encode(
    src_path: str,
    dst_path: str,
    plan: _Plan,
    settings: EncoderSettings,
    options: OutputOptions | None,
    title: str | None,
    on_progress: Callable[[float], None] | None,
    should_stop: Callable[[], bool] | None,
    *,
    gain: float,
    ceiling: float | None,
    cache: PcmCache | None = None,
) -> PathRun:
    """One encode pass over the whole signal path."""
    progress = Progress(on_progress, plan.length_ms)
    lame: LameWriter | None = None
    path = plan.path
    run = PathRun()
    sample_fmt = "s16" if settings.codec == "libmp3lame" else settings.sample_fmt
    tail = [
        (
            "aformat",
            f"sample_fmts={sample_fmt}:sample_rates={path.rate}:channel_layouts={path.layout}",
        )
    ]
    try:
        with av.open(dst_path, "w", format=settings.fmt.container) as out:
            if title:
                out.metadata["title"] = title
            encoder: AudioStream | None = None
            if settings.codec == "libmp3lame":
                quality = options.quality if options and options.quality is not None else None
                lame = LameWriter(
                    out,
                    rate=path.rate,
                    channels=path.channels,
                    bitrate_kbps=settings.bitrate_kbps or 192,
                    quality=LAME_QUALITY if quality is None else quality,
                )
                frame_size = _LAME_FRAME
            else:
                encoder = _open_encoder(out, path, settings)
                frame_size = encoder.codec_context.frame_size
            frames = run_path(
                src_path,
                path,
                gain_db=gain,
                ceiling_db=ceiling,
                tail=tail,
                frame_size=frame_size or None,
                should_stop=should_stop,
                stats=run,
                cache=cache,
            )
            for frame in frames:
                _write(out, encoder, lame, frame)
                progress.advance_samples(frame.samples, path.rate)
            if lame is not None:
                lame.finish()
            elif encoder is not None:
                for packet in encoder.encode(None):
                    out.mux(packet)
    except av.FFmpegError as exc:
        raise Permanent(f"render failed: {exc}", code=RENDER_FAILED) from exc
    if lame is not None:
        lame.patch_header(dst_path)
    progress.done()
    return run


def _write(
    out: av.container.OutputContainer,
    encoder: AudioStream | None,
    lame: LameWriter | None,
    frame: AudioFrame,
) -> None:
    """Hand one filtered frame to whichever encoder this render uses."""
    if lame is not None:
        lame.encode(frame)
        return
    assert encoder is not None
    for packet in encoder.encode(frame):
        out.mux(packet)
