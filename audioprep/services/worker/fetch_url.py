"""Fetching a source from a URL or YouTube with yt-dlp (audio only)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from audioprep.domain.errors import UNSUPPORTED_URL, Permanent
from audioprep.services.worker.context import JobContext
from audioprep.services.worker.media_process import run_media_call
from audioprep.services.worker.ytdlp_fetch import Downloaded, download
from audioprep.shared import keys

DOWNLOAD_LOW, DOWNLOAD_HIGH = 2, 38  # progress band of the download inside an ingest


@dataclass(frozen=True)
class FetchedSource:
    path: Path
    filename: str
    title: str | None


async def fetch_source(ctx: JobContext) -> FetchedSource:
    """Download the job's URL into its scratch dir (child process; cancel kills it)."""
    req = ctx.request
    if not req.url or req.source not in ("url", "youtube"):
        raise Permanent("ingest job without a URL", code=UNSUPPORTED_URL)
    out_dir = ctx.scratch / "download"
    out_dir.mkdir(parents=True, exist_ok=True)
    await ctx.progress(DOWNLOAD_LOW, "downloading", force=True)
    got: Downloaded = await run_media_call(
        download,
        req.url,
        req.source,
        str(out_dir),
        max_bytes=ctx.settings.max_upload_bytes,
        max_duration_s=ctx.settings.max_duration_s,
        allow_hosts=ctx.settings.url_allow_hosts,
        on_progress=ctx.progress_callback(DOWNLOAD_LOW, DOWNLOAD_HIGH, "downloading"),
    )
    stem = keys.safe_filename(got.title or _name_from_url(req.url), fallback="audio")
    filename = keys.safe_filename(f"{keys.stem(stem)}.{got.ext}")
    return FetchedSource(path=Path(got.path), filename=filename, title=got.title)


def _name_from_url(url: str) -> str:
    last = url.split("?", 1)[0].split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return keys.stem(last) or "audio"
