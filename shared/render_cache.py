"""Render cache: KV bucket `render_cache`, cache key → output storage key."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from shared import subjects


async def bucket(js: JetStreamContext) -> KeyValue:
    """Open the bucket (one round trip): long-lived services open it once and keep it."""
    return await js.key_value(subjects.RENDER_CACHE_BUCKET)


async def lookup(kv: KeyValue, cache_key: str) -> str | None:
    """The stored output for this render, if one was made."""
    try:
        entry = await kv.get(cache_key)
    except KeyNotFoundError:
        return None
    return entry.value.decode() if entry.value else None


async def remember(kv: KeyValue, cache_key: str, output_key: str) -> None:
    await kv.put(cache_key, output_key.encode())


async def forget(kv: KeyValue, cache_key: str) -> None:
    """Drop an entry (its preview was evicted from storage)."""
    try:
        await kv.delete(cache_key)
    except KeyNotFoundError:
        return
