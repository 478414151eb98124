"""Fetching a source from a URL or YouTube with yt-dlp (audio only)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.worker.context import JobContext
from shared.errors import UNSUPPORTED_URL, Permanent


@dataclass(frozen=True)
class FetchedSource:
    path: Path
    filename: str
    title: str | None


async def fetch_source(ctx: JobContext) -> FetchedSource:
    """Download the job's URL into its scratch dir."""
    raise Permanent(f"URL ingest is not available yet: {ctx.request.url}", code=UNSUPPORTED_URL)
