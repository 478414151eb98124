"""Preview and save: render a stored source with a recipe into a stored output."""

from __future__ import annotations

import logging

import msgspec
from nats.errors import Error as NatsError

from audioprep.domain.errors import Permanent
from audioprep.domain.events import JobCompleted, JobResult, VoiceAnalysisInfo
from audioprep.domain.recipe import OutputOptions, Recipe, check_recipe
from audioprep.services.worker.context import JobContext
from audioprep.services.worker.media_process import run_media_call
from audioprep.services.worker.pipeline.formats import PREVIEW_OPTIONS, output_format
from audioprep.services.worker.pipeline.loudness import Loudness
from audioprep.services.worker.pipeline.probe import MediaInfo
from audioprep.services.worker.pipeline.render import RenderResult, render
from audioprep.services.worker.publish.output import publish_output
from audioprep.services.worker.source_files import local_source
from audioprep.shared import keys, render_cache

log = logging.getLogger("audioprep.worker")

PREVIEW_DEFAULT_FORMAT = "opus"


def output_key(ctx: JobContext, ext: str) -> str:
    """Deterministic output key: a rerun overwrites instead of producing a second result."""
    req = ctx.request
    if req.kind == "preview":
        return keys.preview_key(req.tenant, req.cache_key or req.job_id, ext)
    source_name = (req.source_key or "audio").rsplit("/", 1)[-1]
    return keys.prepared_key(req.tenant, req.job_id, req.filename or source_name, ext)


def _recipe_and_options(ctx: JobContext) -> tuple[Recipe, OutputOptions | None]:
    req = ctx.request
    try:
        recipe = msgspec.convert(req.recipe or {}, Recipe)
        check_recipe(recipe)
        options = msgspec.convert(req.options, OutputOptions) if req.options else None
    except msgspec.ValidationError as exc:
        raise Permanent(f"invalid recipe: {exc}", code="invalid_recipe") from exc
    return recipe, options


async def ingest_facts(
    ctx: JobContext, source_key: str
) -> tuple[MediaInfo | None, Loudness | None, VoiceAnalysisInfo | None]:
    """What the ingest that stored this source measured (its JobCompleted in the stream, one
    direct get), if it is at hand.

    It spares the render a probe (a full decode for mp3/ogg/mkv durations) and, for an
    untrimmed normalize, the loudness pass; it also carries the title into the output.
    Anything missing or odd and the render simply measures for itself.
    """
    ingest_id = keys.ingest_job_of(source_key)
    if ingest_id is None:
        return None, None, None
    try:
        stored = await ctx.events.last_event(ingest_id, "completed")
    except (NatsError, TimeoutError, msgspec.DecodeError) as exc:  # not worth failing over
        log.warning("ingest facts unavailable", extra=ctx.log_extra(error=repr(exc)))
        return None, None, None
    done = stored.event if stored is not None else None
    r = done.result if isinstance(done, JobCompleted) else None
    if (
        done is None
        or done.kind != "ingest"
        or r is None
        or r.source_key != source_key
        or r.duration_ms is None
        or r.sample_rate is None
        or r.channels is None
    ):
        return None, None, None
    info = MediaInfo(
        duration_ms=r.duration_ms,
        sample_rate=r.sample_rate,
        channels=r.channels,
        codec=r.codec or "",
        container=r.container or "",
        bit_rate=r.bit_rate,
        title=r.title,
    )
    loud = r.loudness
    measured = (
        Loudness(loud.integrated_lufs, loud.true_peak_db, loud.lra, loud.short_term_max_lufs)
        if loud
        else None
    )
    return info, measured, r.analysis


async def run_render(ctx: JobContext) -> JobResult:
    req = ctx.request
    if not req.source_key:
        raise Permanent("render job without sourceKey", code="invalid_request")
    recipe, options = _recipe_and_options(ctx)
    if req.kind == "preview" and options is None:
        options = PREVIEW_OPTIONS  # small and browser-playable; fixed, so the cache key holds
    fmt = req.format or PREVIEW_DEFAULT_FORMAT
    ext = output_format(fmt).extension
    src = await local_source(ctx, req.source_key)
    source_info, source_loudness, source_voice = await ingest_facts(ctx, req.source_key)
    dst = ctx.scratch / f"output.{ext}"
    await ctx.progress(1, "rendering", force=True)
    relay = ctx.progress_relay(1, 95, "rendering")
    rendered: RenderResult = await run_media_call(
        render,
        str(src),
        str(dst),
        recipe,
        fmt,
        options=options,
        title=source_info.title if source_info else None,
        source_info=source_info,
        source_loudness=source_loudness,
        source_voice=source_voice,
        on_progress=relay.fraction,
        on_stage=relay.stage,
    )
    await ctx.progress(96, "storing", force=True)
    key = output_key(ctx, ext)
    chapters_key = await publish_output(ctx, dst, fmt, recipe, rendered, key)  # tags, chapters
    size = await ctx.storage.put_file(key, dst)
    result = JobResult(
        source_key=req.source_key,
        duration_ms=rendered.duration_ms,
        sample_rate=rendered.sample_rate,
        channels=rendered.channels,
        codec=rendered.codec,
        format=fmt,
        size_bytes=size,
        preview_key=key if req.kind == "preview" else None,
        prepared_key=key if req.kind == "save" else None,
        loudness_report=rendered.loudness_report,
        voice_report=rendered.voice_report,
        chapters_key=chapters_key,
    )
    if req.kind == "preview" and req.cache_key:
        await render_cache.remember(
            await render_cache.bucket(ctx.js, ctx.settings.names), req.cache_key, key, result
        )
    return result


async def cleanup_render(ctx: JobContext) -> None:
    """Remove a partial output (the scratch dir goes anyway)."""
    fmt = ctx.request.format or PREVIEW_DEFAULT_FORMAT
    try:
        ext = output_format(fmt).extension
    except Permanent:  # an unknown format: nothing was written
        return
    await ctx.storage.delete(output_key(ctx, ext))
