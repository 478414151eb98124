"""Render cache: KV bucket `render_cache`, cache key → output storage key."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError

from shared import subjects


async def lookup(js: JetStreamContext, cache_key: str) -> str | None:
    """The stored output for this render, if one was made."""
    kv = await js.key_value(subjects.RENDER_CACHE_BUCKET)
    try:
        entry = await kv.get(cache_key)
    except KeyNotFoundError:
        return None
    return entry.value.decode() if entry.value else None


async def remember(js: JetStreamContext, cache_key: str, output_key: str) -> None:
    kv = await js.key_value(subjects.RENDER_CACHE_BUCKET)
    await kv.put(cache_key, output_key.encode())


async def forget(js: JetStreamContext, cache_key: str) -> None:
    """Drop an entry (its preview was evicted from storage)."""
    kv = await js.key_value(subjects.RENDER_CACHE_BUCKET)
    try:
        await kv.delete(cache_key)
    except KeyNotFoundError:
        return
