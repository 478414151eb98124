"""Serving stored objects over HTTP: content types and single byte ranges (seekable audio)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

from litestar.datastructures import Headers
from litestar.response import Stream

from audioprep.services.api.problems import ProblemError
from audioprep.shared.storage import Storage

CONTENT_TYPES = {
    "opus": "audio/ogg",
    "ogg": "audio/ogg",
    "oga": "audio/ogg",
    "m4a": "audio/mp4",
    "mp4": "audio/mp4",
    "aac": "audio/aac",
    "mp3": "audio/mpeg",
    "wav": "audio/wav",
    "flac": "audio/flac",
    "webm": "audio/webm",
    "json": "application/json",
}
_RANGE_RE = re.compile(r"^bytes=([0-9]{0,18})-([0-9]{0,18})$")  # ASCII, bounded


def content_type_for(key: str) -> str:
    ext = key.rsplit(".", 1)[-1].lower() if "." in key.rsplit("/", 1)[-1] else ""
    return CONTENT_TYPES.get(ext, "application/octet-stream")


@dataclass(frozen=True, slots=True)
class ByteRange:
    start: int
    end: int  # inclusive, as in Content-Range


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """One `bytes=a-b`, `a-` or `-n` range; None means "send everything".

    Several ranges are answered with the whole object (allowed by RFC 9110); a syntactically
    invalid header is ignored; an unsatisfiable one is a 416.
    """
    if not header:
        return None
    value = header.strip().replace(" ", "")
    if "," in value:
        return None
    match = _RANGE_RE.match(value)
    if match is None or (not match.group(1) and not match.group(2)):
        return None
    first, last = match.group(1), match.group(2)
    if not first:  # suffix: the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            raise _unsatisfiable(size)
        return ByteRange(max(0, size - n), size - 1)
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size:
        raise _unsatisfiable(size)
    if end < start:
        return None
    return ByteRange(start, min(end, size - 1))


def _unsatisfiable(size: int) -> ProblemError:
    return ProblemError(
        416,
        "range_not_satisfiable",
        f"the object has {size} bytes",
        headers={"Content-Range": f"bytes */{size}"},
    )


async def serve_object(
    storage: Storage,
    key: str,
    headers: Headers,
    *,
    download_name: str | None = None,
    cache_control: str = "private, max-age=300",
) -> Stream:
    """The object's bytes (200) or one range of them (206), streamed from storage."""
    info = await storage.head(key)
    if info is None:
        raise ProblemError(404, "not_found", "the object does not exist (any more)")
    wanted = parse_range(headers.get("range"), info.size)
    out_headers = {
        "Accept-Ranges": "bytes",
        "Cache-Control": cache_control,
        "X-Content-Type-Options": "nosniff",
    }
    if download_name:
        out_headers["Content-Disposition"] = f'attachment; filename="{download_name}"'
    if wanted is None:
        body = await storage.get_stream(key)
        out_headers["Content-Length"] = str(info.size)
        status = 200
    else:
        body = await storage.get_stream(key, start=wanted.start, end=wanted.end + 1)
        out_headers["Content-Length"] = str(wanted.end - wanted.start + 1)
        out_headers["Content-Range"] = f"bytes {wanted.start}-{wanted.end}/{info.size}"
        status = 206
    return Stream(
        _passthrough(body),
        status_code=status,
        media_type=content_type_for(key),
        headers=out_headers,
    )


async def _passthrough(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    async for chunk in body:
        yield chunk
