"""A stack with API keys for two tenants on the session's nats-server (publishing tests)."""

from __future__ import annotations

import io
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from PIL import Image

from audioprep.shared.settings import Settings
from tests.conftest import Stack, running_stack
from tests.jobs_helpers import wait_for_job

KEY_A = "pub-key-a-0123456789abcdef0123456789"
KEY_B = "pub-key-b-0123456789abcdef0123456789"
TENANT_A = "pubA"
TENANT_B = "pubB"
A = {"Authorization": f"Bearer {KEY_A}"}
B = {"Authorization": f"Bearer {KEY_B}"}
FFPROBE = "/usr/bin/ffprobe"


@pytest.fixture(scope="session")
async def pub_stack(base_settings: Settings, nc: Client) -> AsyncIterator[Stack]:
    settings = base_settings.with_(api_keys={KEY_A: TENANT_A, KEY_B: TENANT_B})
    async with running_stack(settings, nc) as s:
        yield s


async def ingest(stack: Stack, path: Path, headers: dict[str, str]) -> str:
    with path.open("rb") as f:
        resp = await stack.client.post(
            "/api/audio/ingest", files={"file": (path.name, f, "audio/wav")}, headers=headers
        )
    assert resp.status_code == 202, resp.text
    view = await wait_for_job(stack.client, resp.json()["jobId"], headers=headers)
    assert view["status"] == "completed", view
    return str(view["result"]["sourceKey"])


def png_bytes(size: tuple[int, int] = (640, 480), **save: Any) -> bytes:
    im = Image.new("RGB", size)
    im.putdata([(x % 256, y % 256, (x * y) % 256) for y in range(size[1]) for x in range(size[0])])
    out = io.BytesIO()
    im.save(out, "PNG", **save)
    return out.getvalue()


def jpeg_bytes(size: tuple[int, int] = (500, 500), **save: Any) -> bytes:
    im = Image.new("RGB", size, (200, 30, 60))
    out = io.BytesIO()
    im.save(out, "JPEG", quality=85, **save)
    return out.getvalue()


async def upload_image(
    stack: Stack, data: bytes, headers: dict[str, str], name: str = "cover.png"
) -> Any:
    return await stack.client.post(
        "/api/images", files={"file": (name, data, "image/png")}, headers=headers
    )


def ffprobe(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        [
            FFPROBE,
            "-v",
            "error",
            "-of",
            "json",
            "-show_format",
            "-show_streams",
            "-show_chapters",
            str(path),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return dict(json.loads(out.stdout))
