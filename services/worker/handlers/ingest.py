"""Ingest: bring the original into `sources/`, then probe, measure loudness and peaks."""

from __future__ import annotations

import msgspec

from services.worker.context import JobContext
from services.worker.fetch_url import fetch_source
from services.worker.media_process import run_media_call
from services.worker.pipeline.analyse import Analysis, analyse
from services.worker.source_files import local_source
from shared import keys
from shared.errors import TOO_LONG, Permanent
from shared.events import JobResult, LoudnessInfo

PEAK_POINTS = 2000


async def _bring_source(ctx: JobContext) -> tuple[str, str | None]:
    """Store the original under sources/<jobId>/ (deterministic key: reruns overwrite)."""
    req = ctx.request
    if req.source == "upload":
        if not req.upload_key:
            raise Permanent("upload job without upload key", code="invalid_request")
        key = keys.source_key(req.tenant, req.job_id, req.filename or "audio")
        await ctx.progress(2, "storing", force=True)
        await ctx.storage.copy(req.upload_key, key)
        return key, None
    fetched = await fetch_source(ctx)
    key = keys.source_key(req.tenant, req.job_id, fetched.filename)
    await ctx.storage.put_file(key, fetched.path)
    return key, fetched.title


async def run_ingest(ctx: JobContext) -> JobResult:
    source_key, title = await _bring_source(ctx)
    path = await local_source(ctx, source_key)
    await ctx.progress(40, "analysing", force=True)
    analysis: Analysis = await run_media_call(
        analyse,
        str(path),
        points=PEAK_POINTS,
        on_progress=ctx.progress_callback(40, 95, "analysing"),
        max_duration_s=ctx.settings.max_duration_s,
    )
    info = analysis.info
    if info.duration_ms > ctx.settings.max_duration_s * 1000:
        raise Permanent(
            f"audio is {info.duration_ms / 1000:.0f} s long; the limit is "
            f"{ctx.settings.max_duration_s} s",
            code=TOO_LONG,
        )
    peaks_key = keys.peaks_key(ctx.request.tenant, ctx.job_id)
    await ctx.storage.put_bytes(peaks_key, msgspec.json.encode(analysis.peaks))
    loud = analysis.loudness
    return JobResult(
        source_key=source_key,
        duration_ms=info.duration_ms,
        sample_rate=info.sample_rate,
        channels=info.channels,
        codec=info.codec,
        container=info.container,
        bit_rate=info.bit_rate,
        loudness=LoudnessInfo(
            integrated_lufs=loud.integrated_lufs,
            true_peak_db=loud.true_peak_db,
            lra=loud.lra,
            short_term_max_lufs=loud.short_term_max_lufs,
        ),
        peaks_key=peaks_key,
        title=title or info.title,
    )


async def cleanup_ingest(ctx: JobContext) -> None:
    """A failed or cancelled ingest leaves nothing behind but the upload it came with."""
    req = ctx.request
    await ctx.storage.delete_prefix(keys.sources_prefix(req.tenant, req.job_id))
    await ctx.storage.delete(keys.peaks_key(req.tenant, req.job_id))
