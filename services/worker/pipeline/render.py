"""Render a recipe: stream decode → filter graph → encoder, frame by frame in constant memory."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass

import av
import av.container
from av.audio.frame import AudioFrame
from av.audio.stream import AudioStream

from services.worker.pipeline.decode import decode_frames, open_audio
from services.worker.pipeline.filters import make_graph, run_graph
from services.worker.pipeline.formats import EncoderSettings, encoder_settings
from services.worker.pipeline.graph import (
    build_filter_chain,
    kept_window,
    output_layout,
    output_length_ms,
    prefix_chain,
)
from services.worker.pipeline.loudness import Loudness, measure_loudness
from services.worker.pipeline.mp3 import LAME_QUALITY, LameWriter
from services.worker.pipeline.probe import MediaInfo, probe
from services.worker.pipeline.progress import Progress
from services.worker.pipeline.silence import find_sound_bounds
from shared.errors import INVALID_RECIPE, RENDER_FAILED, Permanent
from shared.recipe import OutputOptions, Recipe, RecipeError, check_recipe

_CODEC_NAMES = {"libmp3lame": "mp3", "libopus": "opus"}  # reported like probe reports them
_LAME_FRAME = 1152 * 4  # samples per graph frame fed to lameenc (any size works)


@dataclass(frozen=True, slots=True)
class RenderResult:
    """What was written, measured from the encoder side."""

    duration_ms: int
    sample_rate: int
    channels: int
    codec: str
    bytes: int


@dataclass(frozen=True, slots=True)
class _Plan:
    """Everything decided before the output file is opened."""

    chain: list[tuple[str, str]]
    rate: int
    layout: str
    length_ms: float


def render(
    src_path: str,
    dst_path: str,
    recipe: Recipe,
    fmt: str,
    *,
    options: OutputOptions | None = None,
    title: str | None = None,
    on_progress: Callable[[float], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    source_info: MediaInfo | None = None,
    source_loudness: Loudness | None = None,
) -> RenderResult:
    """Render `src_path` to `dst_path`; on any failure or cancel the partial file is removed.

    `source_info`/`source_loudness` (from ingest) skip a probe and, for untrimmed
    normalisation, the measuring pass.
    """
    check_recipe(recipe)
    settings = encoder_settings(fmt, options)
    try:
        plan = _plan(src_path, recipe, settings, source_info, source_loudness, should_stop)
        return _encode(src_path, dst_path, plan, settings, options, title, on_progress, should_stop)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(dst_path)
        raise


def _plan(
    src_path: str,
    recipe: Recipe,
    settings: EncoderSettings,
    info: MediaInfo | None,
    source_loudness: Loudness | None,
    should_stop: Callable[[], bool] | None,
) -> _Plan:
    """Measuring passes (sound bounds, loudness) and the filter chain."""
    info = info or probe(src_path)
    bounds = find_sound_bounds(src_path, should_stop=should_stop) if recipe.trim_silence else None
    window = kept_window(recipe, source_duration_ms=info.duration_ms, sound_bounds_ms=bounds)
    if window.length_ms(info.duration_ms) <= 0:
        raise RecipeError("trim.startMs", "is at or past the end of the source")
    measured: Loudness | None = None
    if recipe.normalize is not None:
        whole = window.start_ms == 0 and window.end_ms is None
        if whole and source_loudness is not None:
            measured = source_loudness
        else:
            prefix = prefix_chain(
                recipe, source_duration_ms=info.duration_ms, sound_bounds_ms=bounds
            )
            measured = measure_loudness(src_path, filters=prefix, should_stop=should_stop)
    rate = settings.fmt.output_rate(recipe.sample_rate or info.sample_rate)
    layout = output_layout(recipe, info.channels)
    sample_fmt = "s16" if settings.codec == "libmp3lame" else settings.sample_fmt
    chain = build_filter_chain(
        recipe,
        source_rate=info.sample_rate,
        source_channels=info.channels,
        source_duration_ms=info.duration_ms,
        measured=measured,
        sound_bounds_ms=bounds,
        out_rate=rate,
        out_layout=layout,
        out_sample_fmt=sample_fmt,
    )
    length = output_length_ms(recipe, source_duration_ms=info.duration_ms, sound_bounds_ms=bounds)
    return _Plan(chain=chain, rate=rate, layout=layout, length_ms=length)


def _open_encoder(
    out: av.container.OutputContainer, plan: _Plan, settings: EncoderSettings
) -> AudioStream:
    """Add and open the output stream (frame_size is known only once open, see NOTES)."""
    stream = out.add_stream(settings.codec, rate=plan.rate, layout=plan.layout)
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
) -> RenderResult:
    """The render pass proper."""
    progress = Progress(on_progress, plan.length_ms)
    samples_out = 0
    lame: LameWriter | None = None
    try:
        with (
            open_audio(src_path) as (container, source),
            av.open(dst_path, "w", format=settings.fmt.container) as out,
        ):
            if title:
                out.metadata["title"] = title
            channels = 1 if plan.layout == "mono" else 2
            encoder: AudioStream | None = None
            if settings.codec == "libmp3lame":
                quality = options.quality if options and options.quality is not None else None
                lame = LameWriter(
                    out,
                    rate=plan.rate,
                    channels=channels,
                    bitrate_kbps=settings.bitrate_kbps or 192,
                    quality=LAME_QUALITY if quality is None else quality,
                )
                frame_size = _LAME_FRAME
            else:
                encoder = _open_encoder(out, plan, settings)
                frame_size = encoder.codec_context.frame_size
            graph = make_graph(source, plan.chain, frame_size=frame_size or None)
            frames = decode_frames(container, source, should_stop=should_stop)
            for frame in run_graph(graph, frames):
                _write(out, encoder, lame, frame)
                samples_out += frame.samples
                progress.advance_samples(frame.samples, plan.rate)
            if lame is not None:
                lame.finish()
            elif encoder is not None:
                for packet in encoder.encode(None):
                    out.mux(packet)
    except av.FFmpegError as exc:
        raise Permanent(f"render failed: {exc}", code=RENDER_FAILED) from exc
    if lame is not None:
        lame.patch_header(dst_path)
    if samples_out == 0:
        raise Permanent("the edit leaves no audio", code=INVALID_RECIPE)
    progress.done()
    return RenderResult(
        duration_ms=round(samples_out * 1000 / plan.rate),
        sample_rate=plan.rate,
        channels=channels,
        codec=_CODEC_NAMES.get(settings.codec, settings.codec),
        bytes=os.path.getsize(dst_path),
    )


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
