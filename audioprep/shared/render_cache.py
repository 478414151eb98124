"""Render cache: KV bucket `render_cache`, cache key → output storage key (+ the render's result).

An entry is JSON `{"key": <output key>, "result": <JobResult>}` so a cache hit answers with
the same result a render gives (duration, format, loudness report); entries written before
that are a bare key and still read.
"""

from __future__ import annotations

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from audioprep.domain.events import JobResult
from audioprep.shared.names import Names


class CacheEntry(msgspec.Struct, frozen=True):
    key: str
    result: JobResult | None = None


_decoder = msgspec.json.Decoder(CacheEntry)


async def bucket(js: JetStreamContext, n: Names) -> KeyValue:
    """Open the bucket (one round trip): long-lived services open it once and keep it."""
    return await js.key_value(n.render_cache_bucket)


async def lookup_entry(kv: KeyValue, cache_key: str) -> CacheEntry | None:
    """The stored output for this render and its result, if one was made."""
    try:
        entry = await kv.get(cache_key)
    except KeyNotFoundError:
        return None
    raw = entry.value or b""
    if not raw:
        return None
    if raw.startswith(b"{"):
        try:
            return _decoder.decode(raw)
        except msgspec.DecodeError:
            return None
    return CacheEntry(key=raw.decode())


async def lookup(kv: KeyValue, cache_key: str) -> str | None:
    """The stored output key for this render, if one was made."""
    found = await lookup_entry(kv, cache_key)
    return found.key if found else None


async def remember(
    kv: KeyValue, cache_key: str, output_key: str, result: JobResult | None = None
) -> None:
    await kv.put(cache_key, msgspec.json.encode(CacheEntry(key=output_key, result=result)))


async def forget(kv: KeyValue, cache_key: str) -> None:
    """Drop an entry (its preview was evicted from storage)."""
    try:
        await kv.delete(cache_key)
    except KeyNotFoundError:
        return
