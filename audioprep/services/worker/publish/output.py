"""The render handler's publishing hook: tags, cover and chapters into the file, then the
Podcasting 2.0 chapters JSON next to it. Runs in the worker process, in a thread (mutagen is
pure Python and only rewrites headers; the wav INFO and m4a chapter steps stream-copy the file)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec

from audioprep.domain.errors import Permanent
from audioprep.domain.recipe import Recipe
from audioprep.services.worker.context import JobContext
from audioprep.services.worker.pipeline.render import RenderResult
from audioprep.services.worker.publish.chapters import place_chapters
from audioprep.services.worker.publish.cover import Cover, load_cover
from audioprep.services.worker.publish.tags import write_publishing
from audioprep.shared.metadata import MetadataError, chapters_json, parse_chapters, parse_metadata


def chapters_key_for(output_key: str) -> str:
    """`prepared/<job>/episode.mp3` → `prepared/<job>/episode.chapters.json`."""
    head, dot, _ = output_key.rpartition(".")
    return f"{head if dot else output_key}.chapters.json"


async def publish_output(
    ctx: JobContext,
    path: Path,
    fmt: str,
    recipe: Recipe,
    rendered: RenderResult,
    output_key: str,
) -> str | None:
    """Write the save's metadata/cover/chapters into `path`; the chapters file's key, if any."""
    req = ctx.request
    if req.kind != "save" or (not req.metadata and not req.chapters):
        return None
    try:
        metadata = parse_metadata(req.metadata)
        chapters = parse_chapters(req.chapters)
    except (msgspec.ValidationError, MetadataError) as exc:
        raise Permanent(f"invalid metadata: {exc}", code="invalid_metadata") from exc
    cover: Cover | None = None
    if metadata is not None and metadata.cover_key:
        cover = await load_cover(ctx.storage, req.tenant, metadata.cover_key)
    placed = place_chapters(chapters, recipe, rendered.voice_report, rendered.duration_ms)
    await asyncio.to_thread(write_publishing, path, fmt, metadata, cover, placed)
    if not chapters:
        return None
    key = chapters_key_for(output_key)
    await ctx.storage.put_bytes(key, chapters_json(placed, metadata))
    return key
