"""Helpers for tests that drive jobs through the HTTP API."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from litestar.testing import AsyncTestClient

TERMINAL = {"completed", "failed", "cancelled"}


async def wait_for_job(
    client: AsyncTestClient,  # type: ignore[type-arg]
    job_id: str,
    *,
    timeout: float = 60.0,
    statuses: set[str] = TERMINAL,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Poll the job until it reaches one of `statuses` (deadline, no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        resp = await client.get(f"/api/audio/jobs/{job_id}", headers=headers)
        assert resp.status_code == 200, resp.text
        last = resp.json()
        if last["status"] in statuses:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} stuck: {last}")
