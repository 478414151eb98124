"""Streaming a multipart upload straight into storage, with the size limit enforced live."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from litestar import Request
from multipart import MultipartError, MultipartSegment, PushMultipartParser, parse_options_header

from audioprep.services.api.problems import ProblemError
from audioprep.shared.storage import Storage

MAX_PARTS = 16
FILE_FIELD = "file"


class UploadTooLarge(Exception):
    pass


@dataclass(frozen=True)
class StoredUpload:
    key: str
    filename: str
    size: int
    content_type: str | None
    sha256: str | None = None  # hex digest of the content, when asked for


@dataclass(frozen=True)
class UploadDigest:
    filename: str
    size: int
    sha256: str


def _boundary(request: Request[Any, Any, Any]) -> str:
    ctype, options = parse_options_header(request.headers.get("content-type", ""))
    if ctype != "multipart/form-data" or not options.get("boundary"):
        raise ProblemError(415, "unsupported_media_type", "expected multipart/form-data")
    return str(options["boundary"])


async def _events(
    request: Request[Any, Any, Any], parser: PushMultipartParser
) -> AsyncIterator[Any]:
    async for chunk in request.stream():
        if chunk:
            for event in parser.parse(chunk):
                yield event
    for event in parser.parse(b""):
        yield event


async def store_upload(
    request: Request[Any, Any, Any],
    storage: Storage,
    key_for: Callable[[str], str],
    max_bytes: int,
    *,
    hash_content: bool = False,
) -> StoredUpload:
    """Find the `file` part and stream it to `key_for(filename)`; 413 past `max_bytes`.

    With `hash_content` the content's sha256 is computed on the way (Idempotency-Key
    fingerprints).
    """
    events = _multipart_events(request, max_bytes)
    stored: StoredUpload | None = None
    try:
        async for event in events:
            if isinstance(event, MultipartSegment) and event.name == FILE_FIELD and stored is None:
                hasher = hashlib.sha256() if hash_content else None
                stored = await _store_part(event, events, storage, key_for, max_bytes, hasher)
    except MultipartError as exc:
        if stored is not None:
            await storage.delete(stored.key)
        raise ProblemError(400, "malformed_multipart", f"malformed multipart body: {exc}") from exc
    if stored is None:
        raise ProblemError(
            422, "missing_file", "multipart body has no `file` part", field=FILE_FIELD
        )
    if stored.size == 0:
        await storage.delete(stored.key)
        raise ProblemError(422, "empty_file", "the uploaded file is empty", field=FILE_FIELD)
    return stored


async def hash_upload(request: Request[Any, Any, Any], max_bytes: int) -> UploadDigest:
    """Read the `file` part and hash it, storing nothing (a replayed Idempotency-Key)."""
    events = _multipart_events(request, max_bytes)
    found: UploadDigest | None = None
    try:
        async for event in events:
            if isinstance(event, MultipartSegment) and event.name == FILE_FIELD and found is None:
                hasher = hashlib.sha256()
                size = 0
                async for data in events:
                    if data is None:
                        break
                    size += len(data)
                    if size > max_bytes:
                        raise _too_large(max_bytes)
                    hasher.update(data)
                found = UploadDigest(event.filename or "upload", size, hasher.hexdigest())
    except MultipartError as exc:
        raise ProblemError(400, "malformed_multipart", f"malformed multipart body: {exc}") from exc
    if found is None:
        raise ProblemError(
            422, "missing_file", "multipart body has no `file` part", field=FILE_FIELD
        )
    return found


def _multipart_events(request: Request[Any, Any, Any], max_bytes: int) -> AsyncIterator[Any]:
    declared = int(request.headers.get("content-length") or -1)
    if declared > max_bytes + 64 * 1024:
        raise _too_large(max_bytes)
    parser = PushMultipartParser(_boundary(request), max_segment_count=MAX_PARTS)
    return _events(request, parser)


async def _store_part(
    segment: MultipartSegment,
    events: AsyncIterator[Any],
    storage: Storage,
    key_for: Callable[[str], str],
    max_bytes: int,
    hasher: Any = None,
) -> StoredUpload:
    filename = segment.filename or "upload"
    key = key_for(filename)
    exceeded = False

    async def body() -> AsyncIterator[bytes]:
        nonlocal exceeded
        size = 0
        async for event in events:
            if event is None:
                return
            size += len(event)
            if size > max_bytes:
                exceeded = True
                raise UploadTooLarge
            if hasher is not None:
                hasher.update(event)
            yield bytes(event)

    try:
        size = await storage.put_stream(key, body())
    except BaseException:
        # obstore may wrap what our generator raised: the flag says what really happened.
        await storage.delete(key)
        if exceeded:
            raise _too_large(max_bytes) from None
        raise
    return StoredUpload(
        key=key,
        filename=filename,
        size=size,
        content_type=segment.content_type,
        sha256=hasher.hexdigest() if hasher is not None else None,
    )


def _too_large(max_bytes: int) -> ProblemError:
    return ProblemError(
        413,
        "too_large",
        f"upload exceeds the limit of {max_bytes} bytes",
        extra={"limit": max_bytes},
    )
