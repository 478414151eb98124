"""Getting a stored object onto local disk for PyAV, and results back into storage."""

from __future__ import annotations

from pathlib import Path

from audioprep.domain.errors import Permanent
from audioprep.services.worker.context import JobContext
from audioprep.shared.storage import StorageNotFound


async def local_source(ctx: JobContext, key: str, *, prefix: str = "source-") -> Path:
    """The source as a local file: its own path on local storage, else a streamed temp copy
    (named `prefix` + its name: an intro and the episode may share a name)."""
    direct = ctx.storage.local_path(key)
    if direct is not None:
        if not direct.exists():
            raise Permanent(f"source {key} does not exist", code="source_not_found")
        return direct
    target = ctx.scratch / (prefix + key.rsplit("/", 1)[-1])
    try:
        await ctx.storage.download_to(key, target)
    except StorageNotFound as exc:
        raise Permanent(f"source {key} does not exist", code="source_not_found") from exc
    return target
