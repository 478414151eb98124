"""Render a recipe: stream decode → filter graph (→ limiter) → encoder, in constant memory.

With `normalize`, normalize.py drives calibration, encode and verification passes; every
render ends by decoding what it wrote and measuring it for the loudness report.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import av
import av.container
from av.audio.frame import AudioFrame
from av.audio.stream import AudioStream

from audioprep.domain.errors import INVALID_RECIPE, RENDER_FAILED, Permanent
from audioprep.domain.events import LoudnessReport, VoiceAnalysisInfo, VoiceReport, VoiceSteps
from audioprep.domain.loudness_targets import LoudnessTarget, resolve_target
from audioprep.domain.recipe import OutputOptions, Recipe, RecipeError, check_recipe
from audioprep.services.worker.pipeline.excerpt import build_excerpt
from audioprep.services.worker.pipeline.formats import EncoderSettings, encoder_settings
from audioprep.services.worker.pipeline.graph import (
    Window,
    fade_chain,
    gain_db,
    kept_window,
    output_layout,
    output_length_ms,
    prefix_chain,
)
from audioprep.services.worker.pipeline.level_meter import Levels, measure_file
from audioprep.services.worker.pipeline.loudness import Loudness, measure_loudness
from audioprep.services.worker.pipeline.loudness_report import build_report
from audioprep.services.worker.pipeline.mp3 import LAME_QUALITY, LameWriter
from audioprep.services.worker.pipeline.normalize import LONG_SOURCE_MS, Outcome, normalize
from audioprep.services.worker.pipeline.probe import MediaInfo, probe
from audioprep.services.worker.pipeline.progress import Progress, StagedProgress
from audioprep.services.worker.pipeline.signal_path import PathRun, PcmCache, SignalPath, run_path
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
from audioprep.services.worker.pipeline.wav import WavWriter

_CODEC_NAMES = {"libmp3lame": "mp3", "libopus": "opus"}  # reported like probe reports them
_LAME_FRAME = 1152 * 4  # samples per graph frame fed to lameenc (any size works)
_WAV_FRAME = 4096  # samples per frame fed to the PCM encoder
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
    voice_report: VoiceReport | None = None


@dataclass(frozen=True, slots=True)
class _Plan:
    """Everything decided before the output file is opened."""

    path: SignalPath
    length_ms: float
    gain_db: float
    target: LoudnessTarget | None
    before: Loudness | None  # the kept part (or the source, when that is what was measured)
    voice_before: VoiceAnalysisInfo | None = None
    trimmed_ms: tuple[int, int] | None = None
    end_ms: float = 0.0  # where the kept window ends in the source


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
    source_voice: VoiceAnalysisInfo | None = None,
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
        plan = _plan(
            src_path,
            recipe,
            settings,
            source_info,
            source_loudness,
            should_stop,
            staged,
            source_voice,
        )
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
        # the true peak is what a ceiling is checked against: measured when normalising
        return measure_file(dst_path, should_stop=should_stop, true_peak=plan.target is not None)

    outcome: Outcome | None = None
    if plan.target is not None:
        excerpt = None
        if plan.target.measure == "lufs" and plan.length_ms > LONG_SOURCE_MS:
            staged.stage("calibrating")
            excerpt = build_excerpt(
                src_path,
                plan.path,
                end_ms=plan.end_ms,
                scratch=Path(dst_path).parent,
                should_stop=should_stop,
            )
        try:
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
                excerpt=excerpt,
            )
        finally:
            if excerpt is not None:
                Path(excerpt.path).unlink(missing_ok=True)
        after = outcome.after
    else:
        encode(plan.gain_db, None)
        after = verify()
    samples_out = written[-1]
    if samples_out == 0:
        raise Permanent("the edit leaves no audio", code=INVALID_RECIPE)
    staged.finish()
    return RenderResult(
        duration_ms=round(samples_out * 1000 / plan.path.rate),
        sample_rate=plan.path.rate,
        channels=plan.path.channels,
        codec=_CODEC_NAMES.get(settings.codec, settings.codec),
        bytes=os.path.getsize(dst_path),
        loudness_report=build_report(plan.before, after, plan.target, outcome, plan.gain_db),
        voice_report=_voice_report(plan, after),
    )


def _voice_report(plan: _Plan, after: Levels) -> VoiceReport | None:
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


def _plan(
    src_path: str,
    recipe: Recipe,
    settings: EncoderSettings,
    info: MediaInfo | None,
    source_loudness: Loudness | None,
    should_stop: Callable[[], bool] | None,
    staged: StagedProgress,
    source_voice: VoiceAnalysisInfo | None = None,
) -> _Plan:
    """Measuring passes (sound bounds, loudness) and the signal path."""
    info = info or probe(src_path)
    bounds = None
    analysis: VoiceAnalysis | None = None
    have_summary = source_voice is not None
    if needs_analysis(recipe, have_summary):
        analysis = measure_voice(
            src_path, on_progress=staged.stage("analysing voice"), should_stop=should_stop
        )
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
    voice = _voice_plan(recipe, analysis, source_voice, info.sample_rate, window, info.duration_ms)
    length = output_length_ms(recipe, source_duration_ms=info.duration_ms, sound_bounds_ms=bounds)
    length -= sum(b - a for a, b in voice.cuts_ms) / recipe.speed
    path = SignalPath(
        timing=timing,
        fades=fade_chain(recipe, length),
        source_rate=info.sample_rate,
        rate=rate,
        layout=layout,
        voice=voice if voice.active else None,
        start_ms=window.start_ms,
        speed=recipe.speed,
    )
    gain = gain_db(recipe, before, target.target if target else None)
    voice_before = summary(analysis) if analysis is not None else source_voice
    return _Plan(
        path=path,
        length_ms=length,
        gain_db=gain,
        target=target,
        before=before,
        voice_before=voice_before if voice.active or recipe.trim_silence else None,
        trimmed_ms=bounds,
        end_ms=info.duration_ms if window.end_ms is None else window.end_ms,
    )


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

    def frames(frame_size: int | None) -> Iterator[AudioFrame]:
        return run_path(
            src_path,
            path,
            gain_db=gain,
            ceiling_db=ceiling,
            tail=tail,
            frame_size=frame_size,
            should_stop=should_stop,
            stats=run,
            cache=cache,
        )

    if settings.fmt.name == "wav":
        _write_wav(dst_path, frames(_WAV_FRAME), path, settings, title, progress)
        progress.done()
        return run
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
            for frame in frames(frame_size or None):
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


def _write_wav(
    dst_path: str,
    frames: Iterator[AudioFrame],
    path: SignalPath,
    settings: EncoderSettings,
    title: str | None,
    progress: Progress,
) -> None:
    """PCM from a standalone encoder into our own WAVE_FORMAT_EXTENSIBLE writer (wav.py)."""
    codec = av.CodecContext.create(settings.codec, "w")
    assert isinstance(codec, av.AudioCodecContext)
    codec.sample_rate = path.rate
    codec.layout = path.layout
    codec.format = settings.sample_fmt
    try:
        codec.open()
        bits = 24 if settings.codec == "pcm_s24le" else 16
        with open(dst_path, "wb") as fh:
            writer = WavWriter(fh, rate=path.rate, channels=path.channels, bits=bits, title=title)
            for frame in frames:
                for packet in codec.encode(frame):
                    writer.write(bytes(packet))
                progress.advance_samples(frame.samples, path.rate)
            for packet in codec.encode(None):
                writer.write(bytes(packet))
            writer.close()
    except av.FFmpegError as exc:
        raise Permanent(f"render failed: {exc}", code=RENDER_FAILED) from exc


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
