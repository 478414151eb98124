"""POST /api/images: JPEG/PNG by content, limits, re-encoding, hostile files refused."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from tests.conftest import Stack
from tests.publish.conftest import A, B, jpeg_bytes, png_bytes, upload_image


def _stored(stack: Stack, key: str) -> Path:
    return stack.settings.data_dir / "storage" / key


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose (valid, CRC-correct) IHDR claims `width`×`height`, with one tiny IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


async def test_png_is_reencoded_without_metadata(pub_stack: Stack) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "<script>alert(1)</script>")
    im = Image.new("RGBA", (300, 200), (10, 20, 30, 128))
    raw = io.BytesIO()
    im.save(raw, "PNG", pnginfo=info, icc_profile=b"fake-icc" * 10)
    data = raw.getvalue() + b"<html>trailing payload</html>"
    resp = await upload_image(pub_stack, data, A, name="cover.gif")
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert (body["width"], body["height"], body["format"]) == (300, 200, "png")
    key = body["imageKey"]
    assert key.startswith("tenants/pubA/images/") and key.endswith(".png")
    stored = _stored(pub_stack, key).read_bytes()
    assert b"script" not in stored and b"trailing" not in stored and b"fake-icc" not in stored
    with Image.open(io.BytesIO(stored)) as clean:
        assert clean.mode == "RGBA" and clean.size == (300, 200)
        assert not clean.text and "icc_profile" not in clean.info
        assert clean.getpixel((5, 5)) == (10, 20, 30, 128)
    # the same picture again: the same key (content-addressed)
    again = await upload_image(pub_stack, data, A)
    assert again.status_code == 201 and again.json()["imageKey"] == key
    # another tenant's copy lives under its own prefix
    other = await upload_image(pub_stack, data, B)
    assert other.json()["imageKey"].startswith("tenants/pubB/images/")


async def test_jpeg_exif_is_dropped(pub_stack: Stack) -> None:
    exif = Image.Exif()
    exif[0x010F] = "SpyCam"  # Make
    exif[0x8825] = {2: (1.0, 2.0, 3.0)}  # GPS info
    data = jpeg_bytes((400, 400), exif=exif.tobytes())
    assert b"SpyCam" in data
    resp = await upload_image(pub_stack, data, A, name="cover.png")
    assert resp.status_code == 201, resp.text
    assert resp.json()["format"] == "jpeg" and resp.json()["imageKey"].endswith(".jpg")
    stored = _stored(pub_stack, resp.json()["imageKey"]).read_bytes()
    assert b"SpyCam" not in stored and b"Exif" not in stored
    with Image.open(io.BytesIO(stored)) as clean:
        assert clean.format == "JPEG" and clean.size == (400, 400)


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (
            b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
            415,
            "unsupported_image",
        ),
        (b"<!doctype html><html><body>hi</body></html>", 415, "unsupported_image"),
        (b"GIF89a" + b"\0" * 100, 415, "unsupported_image"),
        (_png_header_only(100_000, 100_000), 422, "image_too_large"),
        (_png_header_only(3001, 10), 422, "image_too_large"),
        (_png_header_only(20_000, 20_000), 422, "image_too_large"),
        (png_bytes((200, 200))[:400], 422, "invalid_image"),
        (jpeg_bytes((200, 200))[:300], 422, "invalid_image"),
        (b"\x89PNG\r\n\x1a\n" + b"garbage" * 20, 422, "invalid_image"),
    ],
    ids=["svg", "html", "gif", "bomb", "too-wide", "big", "png-cut", "jpeg-cut", "png-garbage"],
)
async def test_hostile_images_are_refused(
    pub_stack: Stack, data: bytes, status: int, code: str
) -> None:
    resp = await upload_image(pub_stack, data, A, name="cover.png")
    assert resp.status_code == status, resp.text
    assert resp.json()["code"] == code
    assert resp.json()["field"] == "file"


async def test_size_limit_and_missing_file(pub_stack: Stack) -> None:
    big = b"\x89PNG\r\n\x1a\n" + b"\0" * (10 * 1024 * 1024)
    resp = await upload_image(pub_stack, big, A)
    assert resp.status_code == 413 and resp.json()["code"] == "too_large"
    resp = await pub_stack.client.post(
        "/api/images", files={"other": ("x.png", b"abc", "image/png")}, headers=A
    )
    assert resp.status_code == 422 and resp.json()["code"] == "missing_file"
    resp = await upload_image(pub_stack, b"", A)
    assert resp.status_code == 422 and resp.json()["code"] == "empty_file"
    resp = await pub_stack.client.post("/api/images", json={"file": "x"}, headers=A)
    assert resp.status_code == 415
    resp = await upload_image(pub_stack, png_bytes((10, 10)), {})
    assert resp.status_code == 401
