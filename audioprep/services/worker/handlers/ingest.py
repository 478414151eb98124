"""Ingest: bring the original into `sources/`, then probe, measure loudness and peaks."""

from __future__ import annotations

from audioprep.domain.errors import SOURCE_NOT_FOUND, TOO_LONG, Permanent
from audioprep.domain.events import JobResult, LoudnessInfo
from audioprep.services.worker.context import JobContext
from audioprep.services.worker.fetch_url import fetch_source
from audioprep.services.worker.media_process import run_media_call
from audioprep.services.worker.pipeline.analyse import IngestAnalysis, analyse_for_ingest
from audioprep.services.worker.pipeline.voice_analysis import summary as voice_summary
from audioprep.services.worker.source_files import local_source
from audioprep.shared import keys
from audioprep.shared.job_requests import IngestRequest, ingest_request
from audioprep.shared.storage import StorageNotFound

PEAK_POINTS = 2000


async def _move_upload(ctx: JobContext, req: IngestRequest, upload_key: str) -> str:
    """Move the upload to sources/<jobId>/ (copy, then delete it): one stored copy, not two.

    A rerun of the job (a redelivery) finds the upload gone and its source already in place;
    a `dlq retry` (a new job, `retry_of` the old one) copies the retried job's source."""
    name = req.filename or "audio"
    key = keys.source_key(req.tenant, req.job_id, name)
    try:
        await ctx.storage.copy(upload_key, key)
    except StorageNotFound:
        if await ctx.storage.head(key) is not None:
            return key
        earlier = keys.source_key(req.tenant, req.retry_of, name) if req.retry_of else None
        if earlier is None or await ctx.storage.head(earlier) is None:
            raise Permanent(
                f"the upload {upload_key} no longer exists", code=SOURCE_NOT_FOUND
            ) from None
        await ctx.storage.copy(earlier, key)
        return key
    await ctx.storage.delete(upload_key)
    return key


async def _bring_source(ctx: JobContext) -> tuple[str, str | None]:
    """Store the original under sources/<jobId>/ (deterministic key: reruns overwrite)."""
    req = ingest_request(ctx.request)
    if req.upload_key is not None:
        ctx.announce(2, "storing")
        key = await _move_upload(ctx, req, req.upload_key)
        if ctx.request.upload_bytes is not None:  # metering: what the upload stored
            ctx.stored_bytes += ctx.request.upload_bytes
        elif (info := await ctx.storage.head(key)) is not None:
            ctx.stored_bytes += info.size
        return key, None
    fetched = await fetch_source(ctx)
    await ctx.store_unless_ended()  # a late fetch may have got other bytes: keep the winner's
    key = keys.source_key(req.tenant, req.job_id, fetched.filename)
    ctx.stored_bytes += await ctx.storage.put_file(key, fetched.path)
    return key, fetched.title


async def run_ingest(ctx: JobContext) -> JobResult:
    source_key, title = await _bring_source(ctx)
    path = await local_source(ctx, source_key)
    ctx.announce(40, "analysing")
    analysis: IngestAnalysis = await run_media_call(
        analyse_for_ingest,
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
    await ctx.store_unless_ended()
    await ctx.storage.put_bytes(peaks_key, analysis.peaks_json)
    ctx.stored_bytes += len(analysis.peaks_json)
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
        analysis=voice_summary(analysis.voice),
    )


async def cleanup_ingest(ctx: JobContext) -> None:
    """A failed or cancelled ingest leaves nothing behind (its upload was moved, or is left
    for storage gc if it never got that far)."""
    req = ctx.request
    await ctx.storage.delete_prefix(keys.sources_prefix(req.tenant, req.job_id))
    await ctx.storage.delete(keys.peaks_key(req.tenant, req.job_id))
