"""The render handler's publishing hook: tags, cover and chapters into every output file, then
the Podcasting 2.0 chapters file once, next to the first. Runs in the worker process, in a
thread (mutagen is pure Python and only rewrites headers; the wav INFO and m4a chapter steps
stream-copy the file)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from audioprep.services.worker.context import JobContext
from audioprep.services.worker.pipeline.render import RenderResult
from audioprep.services.worker.publish.chapters import place_chapters
from audioprep.services.worker.publish.cover import Cover, load_cover
from audioprep.services.worker.publish.tags import write_publishing
from audioprep.shared.job_requests import SaveRequest
from audioprep.shared.metadata import chapters_json


@dataclass(frozen=True, slots=True)
class PublishedFile:
    """One rendered file to tag: where it is, its format, its length."""

    path: Path
    fmt: str
    duration_ms: int


def chapters_key_for(output_key: str) -> str:
    """`prepared/<job>/episode.mp3` → `prepared/<job>/episode.chapters.json`."""
    head, dot, _ = output_key.rpartition(".")
    return f"{head if dot else output_key}.chapters.json"


async def publish_output(
    ctx: JobContext,
    req: SaveRequest,
    files: list[PublishedFile],
    rendered: RenderResult,
    output_key: str,
) -> str | None:
    """Write the save's metadata/cover/chapters into each file; the chapters file's key (named
    after `output_key`, the first output's), if any."""
    metadata, chapters, recipe = req.metadata, req.chapters, req.recipe
    if metadata is None and not chapters:
        return None
    cover: Cover | None = None
    if metadata is not None and metadata.cover_key:
        cover = await load_cover(ctx.storage, req.tenant, metadata.cover_key)
    first = None
    for file in files:
        placed = place_chapters(
            chapters,
            recipe,
            rendered.voice_report,
            file.duration_ms,
            episode_start_ms=rendered.episode_start_ms,
            episode_ms=rendered.episode_ms,
        )
        first = placed if first is None else first
        await asyncio.to_thread(write_publishing, file.path, file.fmt, metadata, cover, placed)
    if not chapters or first is None:
        return None
    key = chapters_key_for(output_key)
    await ctx.storage.put_bytes(key, chapters_json(first, metadata))
    return key
