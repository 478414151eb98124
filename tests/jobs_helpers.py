"""Helpers for tests that drive jobs through the HTTP API."""

from __future__ import annotations

from typing import Any

from litestar.testing import AsyncTestClient

from audioprep.domain.kinds import TERMINAL_STATUSES
from audioprep.shared import names
from audioprep.shared.settings import Settings
from tests.waiting import client_for, wait_until

TERMINAL: set[str] = set(TERMINAL_STATUSES)


async def wait_for_job(
    client: AsyncTestClient,  # type: ignore[type-arg]
    job_id: str,
    *,
    timeout: float = 60.0,
    statuses: set[str] = TERMINAL,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """GET the job until it reaches one of `statuses`: again after each of its events and each
    update of its view in KV (wake-ups on NATS; `running_stack` puts the settings on the app).
    Apps without them are re-checked every 50 ms."""
    settings: Settings | None = getattr(client.app.state, "settings", None)
    last: dict[str, Any] = {}

    async def check() -> dict[str, Any] | None:
        nonlocal last
        resp = await client.get(f"/api/audio/jobs/{job_id}", headers=headers)
        assert resp.status_code == 200, resp.text
        last = resp.json()
        return last if last["status"] in statuses else None

    try:
        if settings is None:
            return await wait_until(None, [], check, timeout=timeout, what=job_id, recheck_s=0.05)
        n = settings.names
        subjects = [n.job_subjects(job_id), names.kv_subject(n.jobs_bucket, job_id)]
        nc = await client_for(settings)
        return await wait_until(nc, subjects, check, timeout=timeout, what=job_id)
    except AssertionError:
        raise AssertionError(f"job {job_id} stuck: {last}") from None
