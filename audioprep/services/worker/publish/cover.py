"""The cover picture of a save: read from storage, checked again, described for the taggers."""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

from audioprep.domain.errors import Permanent
from audioprep.shared.metadata import image_kind, is_image_key_of
from audioprep.shared.storage import Storage, StorageNotFound


@dataclass(frozen=True, slots=True)
class Cover:
    data: bytes
    mime: str  # image/jpeg | image/png
    width: int
    height: int
    depth: int  # bits per pixel (FLAC PICTURE block)


def describe(data: bytes) -> Cover:
    """What a tag needs to say about a picture POST /api/images stored (header only)."""
    kind = image_kind(data)
    if kind is None:
        raise Permanent("the cover is not a JPEG or PNG image", code="invalid_cover")
    try:
        with Image.open(io.BytesIO(data), formats=[kind.upper()]) as im:
            width, height = im.size
            bands = len(im.getbands())
    except Exception as exc:
        raise Permanent(f"the cover can't be read: {exc}", code="invalid_cover") from None
    return Cover(data, f"image/{kind}", width, height, 8 * bands)


async def load_cover(storage: Storage, tenant: str, key: str) -> Cover:
    if not is_image_key_of(tenant, key):
        raise Permanent(f"{key!r} is not an image of this tenant", code="image_not_found")
    try:
        data = await storage.read_bytes(key)
    except StorageNotFound:
        raise Permanent(f"no image {key!r}", code="image_not_found") from None
    return describe(data)
