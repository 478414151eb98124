"""Preview and save: render a stored source with a recipe into a stored output."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import msgspec
from nats.errors import Error as NatsError

from audioprep.domain.errors import Permanent
from audioprep.domain.events import (
    JobCompleted,
    JobResult,
    OutputResult,
    PartResult,
    VoiceAnalysisInfo,
)
from audioprep.domain.recipe import IntroOutro, OutputOptions, Recipe
from audioprep.services.worker.context import JobContext
from audioprep.services.worker.media_process import run_media_call
from audioprep.services.worker.pipeline.formats import PREVIEW_OPTIONS, output_format
from audioprep.services.worker.pipeline.loudness import Loudness
from audioprep.services.worker.pipeline.probe import MediaInfo
from audioprep.services.worker.pipeline.render import (
    JoinSource,
    OutputSpec,
    RenderResult,
    render_outputs,
)
from audioprep.services.worker.publish.output import (
    PublishedFile,
    chapters_key_for,
    publish_output,
)
from audioprep.services.worker.source_files import local_source
from audioprep.shared import keys, render_cache
from audioprep.shared.job_requests import (
    PreviewRequest,
    RenderRequest,
    SaveRequest,
    render_request,
)
from audioprep.shared.metadata import output_stems

log = logging.getLogger("audioprep.worker")


def output_key(req: RenderRequest, ext: str) -> str:
    """Deterministic output key: a rerun overwrites instead of producing a second result."""
    if isinstance(req, PreviewRequest):
        return keys.preview_key(req.tenant, req.cache_key or req.job_id, ext)
    source_name = req.source_key.rsplit("/", 1)[-1]
    return keys.prepared_key(req.tenant, req.job_id, req.filename or source_name, ext)


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


@dataclass(frozen=True, slots=True)
class _Output:
    """One file the job writes: format, encoder options, storage key."""

    fmt: str
    options: OutputOptions | None
    key: str
    ext: str


def planned_outputs(req: RenderRequest) -> list[_Output]:
    """The files of this job: a save's outputs (one for a single-`format` save), or the
    preview's one file."""
    if isinstance(req, PreviewRequest):
        ext = output_format(req.format).extension
        return [_Output(req.format, req.options, output_key(req, ext), ext)]
    if not req.several:
        fmt = req.outputs[0].format
        ext = output_format(fmt).extension
        return [_Output(fmt, req.options, output_key(req, ext), ext)]
    source_name = req.source_key.rsplit("/", 1)[-1]
    default = keys.safe_filename(keys.stem(req.filename or source_name))
    planned: list[_Output] = []
    for output, stem in zip(req.outputs, output_stems(req.outputs, default), strict=True):
        ext = output_format(output.format).extension
        key = keys.prepared_key(req.tenant, req.job_id, f"{stem}.{ext}", ext)
        planned.append(_Output(output.format, output.options or req.options, key, ext))
    return planned


async def _join_source(ctx: JobContext, which: str, spec: IntroOutro | None) -> JoinSource | None:
    """An intro/outro as a local file: a source of this job's tenant, else `<which>_not_found`."""
    if spec is None:
        return None
    key, code = spec.source_key, f"{which}_not_found"
    if not keys.is_safe_key(key) or keys.tenant_of_key(key) != ctx.request.tenant:
        raise Permanent(f"the {which} {key!r} is not a source of this tenant", code=code)
    try:
        path = await local_source(ctx, key, prefix=f"{which}-")
    except Permanent as exc:
        raise Permanent(f"the {which} {key!r} does not exist", code=code) from exc
    info, loudness, _ = await ingest_facts(ctx, key)
    return JoinSource(str(path), spec.crossfade_ms, info, loudness)


def _parts(recipe: Recipe, source_key: str, rendered: RenderResult) -> list[PartResult] | None:
    keys_of = {
        "intro": recipe.intro.source_key if recipe.intro else "",
        "episode": source_key,
        "outro": recipe.outro.source_key if recipe.outro else "",
    }
    parts = [
        PartResult(
            part=p.part,
            source_key=keys_of[p.part],
            start_ms=p.start_ms,
            duration_ms=p.duration_ms,
            crossfade_ms=p.crossfade_ms,
            gain_db=None if p.part == "episode" else p.gain_db,
            integrated_lufs=p.integrated_lufs,
        )
        for p in rendered.parts
    ]
    return parts or None


async def run_render(ctx: JobContext) -> JobResult:
    req = render_request(ctx.request)
    recipe = req.recipe
    outputs = planned_outputs(req)
    if isinstance(req, PreviewRequest) and outputs[0].options is None:
        # small and browser-playable; fixed, so the cache key holds
        outputs = [replace(outputs[0], options=PREVIEW_OPTIONS)]
    src = await local_source(ctx, req.source_key)
    intro = await _join_source(ctx, "intro", recipe.intro)
    outro = await _join_source(ctx, "outro", recipe.outro)
    source_info, source_loudness, source_voice = await ingest_facts(ctx, req.source_key)
    ctx.input_audio_ms = source_info.duration_ms if source_info else 0  # metering
    specs = [
        OutputSpec(str(ctx.scratch / f"output-{i}.{o.ext}"), o.fmt, o.options)
        for i, o in enumerate(outputs)
    ]
    await ctx.progress(1, "rendering", force=True)
    relay = ctx.progress_relay(1, 95, "rendering")
    rendered: RenderResult = await run_media_call(
        render_outputs,
        str(src),
        specs,
        recipe,
        title=source_info.title if source_info else None,
        source_info=source_info,
        source_loudness=source_loudness,
        source_voice=source_voice,
        intro=intro,
        outro=outro,
        on_progress=relay.fraction,
        on_stage=relay.stage,
    )
    await ctx.store_unless_ended()  # a late attempt (frozen past ack_wait) stores nothing
    await ctx.progress(96, "storing", force=True)
    files = [
        PublishedFile(Path(spec.dst_path), spec.fmt, done.duration_ms)
        for spec, done in zip(specs, rendered.outputs, strict=True)
    ]
    chapters_key = (
        await publish_output(ctx, req, files, rendered, outputs[0].key)
        if isinstance(req, SaveRequest)
        else None
    )
    sizes = [
        await ctx.storage.put_file(o.key, Path(s.dst_path))
        for o, s in zip(outputs, specs, strict=True)
    ]
    ctx.stored_bytes += sum(sizes)  # metering
    first = outputs[0]
    several = isinstance(req, SaveRequest) and req.several
    result = JobResult(
        source_key=req.source_key,
        duration_ms=rendered.duration_ms,
        sample_rate=rendered.sample_rate,
        channels=rendered.channels,
        codec=rendered.codec,
        format=first.fmt,
        size_bytes=sizes[0],
        preview_key=first.key if isinstance(req, PreviewRequest) else None,
        prepared_key=first.key if isinstance(req, SaveRequest) else None,
        loudness_report=rendered.loudness_report,
        voice_report=rendered.voice_report,
        chapters_key=chapters_key,
        outputs=[
            OutputResult(
                format=o.fmt,
                prepared_key=o.key,
                size_bytes=size,
                duration_ms=done.duration_ms,
                sample_rate=done.sample_rate,
                channels=done.channels,
                codec=done.codec,
                loudness_report=done.loudness_report,
            )
            for o, size, done in zip(outputs, sizes, rendered.outputs, strict=True)
        ]
        if several
        else None,
        parts=_parts(recipe, req.source_key, rendered),
    )
    if isinstance(req, PreviewRequest) and req.cache_key:
        await render_cache.remember(
            await render_cache.bucket(ctx.js, ctx.settings.names), req.cache_key, first.key, result
        )
    return result


async def cleanup_render(ctx: JobContext) -> None:
    """Remove partial outputs and the chapters file (the scratch dir goes anyway)."""
    try:
        req = render_request(ctx.request)
        outputs = planned_outputs(req)
    except Permanent:  # a request that doesn't pass (unknown format, bad outputs): no files
        return
    for output in outputs:
        await ctx.storage.delete(output.key)
    if isinstance(req, SaveRequest) and req.chapters:
        await ctx.storage.delete(chapters_key_for(outputs[0].key))
