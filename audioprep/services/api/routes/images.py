"""POST /api/images: a cover picture, checked and re-encoded so only its pixels are kept.

JPEG or PNG, recognised by their first bytes (a name or Content-Type says nothing); at most
MAX_IMAGE_BYTES and MAX_IMAGE_SIDE pixels a side, read from the header before any pixel is
decoded (a decompression bomb is refused unread). The pixels are copied into a fresh image and
encoded again: EXIF, XMP, ICC profiles, text chunks and anything appended after the image are
gone. Stored content-addressed under the tenant's `images/`. docs/publishing.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import warnings
from typing import Any

import msgspec
from litestar import Request, Response, post
from litestar.di import NamedDependency
from litestar.status_codes import HTTP_201_CREATED
from multipart import MultipartError, MultipartSegment
from PIL import Image, ImageOps

from audioprep.services.api.auth import tenant_for
from audioprep.services.api.context import ApiContext
from audioprep.services.api.openapi import problems
from audioprep.services.api.problems import ProblemError
from audioprep.services.api.uploads import FILE_FIELD, _multipart_events
from audioprep.shared.metadata import (
    Chapter,
    Metadata,
    MetadataError,
    check_metadata,
    image_key,
    image_kind,
    is_image_key_of,
    sorted_chapters,
)

MAX_IMAGE_BYTES = 10 * 1024 * 1024
MAX_IMAGE_SIDE = 3000
JPEG_QUALITY = 90


class ImageStored(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    image_key: str
    width: int
    height: int
    format: str
    size_bytes: int


class ImageRejected(Exception):
    def __init__(self, status: int, code: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.problem = ProblemError(status, code, detail, field=FILE_FIELD, extra=extra or None)


def clean_image(data: bytes) -> tuple[bytes, str, int, int]:
    """(re-encoded bytes, `jpeg`|`png`, width, height), or ImageRejected."""
    kind = image_kind(data)
    if kind is None:
        raise ImageRejected(
            415, "unsupported_image", "the file is not a JPEG or PNG image (its content decides)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data), formats=[kind.upper()])
            width, height = opened.size
            if width > MAX_IMAGE_SIDE or height > MAX_IMAGE_SIDE or width < 1 or height < 1:
                raise ImageRejected(
                    422,
                    "image_too_large",
                    f"the image is {width}×{height}; at most {MAX_IMAGE_SIDE}×{MAX_IMAGE_SIDE}",
                    width=width,
                    height=height,
                    maxSide=MAX_IMAGE_SIDE,
                )
            opened.load()
            im = ImageOps.exif_transpose(opened)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(
            422, "image_too_large", f"the image has too many pixels: {exc}", maxSide=MAX_IMAGE_SIDE
        ) from None
    except ImageRejected:
        raise
    except Exception as exc:  # truncated, bad CRC, garbage after a valid signature
        raise ImageRejected(422, "invalid_image", f"the image can't be decoded: {exc}") from None
    if kind == "jpeg":
        mode = "L" if im.mode in ("L", "1") else "RGB"
    else:
        alpha = im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
        mode = "RGBA" if alpha else ("L" if im.mode in ("L", "1") else "RGB")
    pixels = im.convert(mode)
    fresh = Image.frombytes(mode, pixels.size, pixels.tobytes())  # nothing but pixels
    out = io.BytesIO()
    if kind == "jpeg":
        fresh.save(out, "JPEG", quality=JPEG_QUALITY, optimize=True)
    else:
        fresh.save(out, "PNG", optimize=False, compress_level=6)
    return out.getvalue(), kind, fresh.width, fresh.height


async def _read_file_part(request: Request[Any, Any, Any]) -> bytes:
    events = _multipart_events(request, MAX_IMAGE_BYTES)
    found: bytes | None = None
    try:
        async for event in events:
            if isinstance(event, MultipartSegment) and event.name == FILE_FIELD and found is None:
                chunks: list[bytes] = []
                size = 0
                async for data in events:
                    if data is None:
                        break
                    size += len(data)
                    if size > MAX_IMAGE_BYTES:
                        raise ProblemError(
                            413,
                            "too_large",
                            f"image over {MAX_IMAGE_BYTES} bytes",
                            extra={"limit": MAX_IMAGE_BYTES},
                        )
                    chunks.append(bytes(data))
                found = b"".join(chunks)
    except MultipartError as exc:
        raise ProblemError(400, "malformed_multipart", f"malformed multipart body: {exc}") from exc
    if found is None:
        raise ProblemError(
            422, "missing_file", "multipart body has no `file` part", field=FILE_FIELD
        )
    if not found:
        raise ProblemError(422, "empty_file", "the uploaded file is empty", field=FILE_FIELD)
    return found


@post(
    "/api/images",
    status_code=HTTP_201_CREATED,
    request_max_body_size=None,
    summary="Upload a cover image",
    description=(
        "multipart/form-data with a `file` part: a JPEG or PNG (recognised by its content), "
        f"at most {MAX_IMAGE_BYTES // (1024 * 1024)} MiB and {MAX_IMAGE_SIDE}×{MAX_IMAGE_SIDE} "
        "pixels. The picture is re-encoded (no metadata survives) and stored; pass the "
        "answer's `imageKey` as `metadata.coverKey` of a save."
    ),
    responses=problems(400, 401, 413, 415, 422),
)
async def upload_image(
    request: Request[Any, Any, Any], api: NamedDependency[ApiContext]
) -> Response[ImageStored]:
    tenant = tenant_for(request, api.settings)
    data = await _read_file_part(request)
    try:
        clean, kind, width, height = await asyncio.to_thread(clean_image, data)
    except ImageRejected as exc:
        raise exc.problem from None
    key = image_key(tenant, hashlib.sha256(clean).hexdigest(), kind)
    if not await api.storage.exists(key):
        await api.storage.put_bytes(key, clean)
    return Response(
        ImageStored(image_key=key, width=width, height=height, format=kind, size_bytes=len(clean)),
        status_code=HTTP_201_CREATED,
    )


async def publishing_fields(
    api: ApiContext, tenant: str, metadata: Metadata | None, chapters: list[Chapter] | None
) -> tuple[dict[str, Any] | None, list[dict[str, Any]] | None]:
    """A save's `metadata` and `chapters`, checked, as JobRequested carries them: chapters
    sorted; the cover must be an image this tenant uploaded (else 404 `image_not_found`)."""
    try:
        check_metadata(metadata)
        ordered = sorted_chapters(chapters)
    except MetadataError as exc:
        raise ProblemError(422, "validation_error", str(exc), field=exc.field) from None
    cover = metadata.cover_key if metadata is not None else None
    if cover is not None and (
        not is_image_key_of(tenant, cover) or not await api.storage.exists(cover)
    ):
        raise ProblemError(
            404,
            "image_not_found",
            f"no image {cover!r}; upload it with POST /api/images",
            field="metadata.coverKey",
        )
    meta = msgspec.to_builtins(metadata) if metadata is not None else None
    return meta or None, [msgspec.to_builtins(c) for c in ordered] or None
