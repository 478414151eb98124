"""Tenant limits at submit: 429 `tenant_queue_full` / `quota_exceeded` with Retry-After, for
the tenant at its limit only; an upload past a limit is refused before it is stored; no
dispatcher answering lets submits through. No workers here: jobs stay queued."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from audioprep.services.worker.dispatch.dispatcher import seconds_to_midnight
from audioprep.services.worker.dispatch.main import run_dispatcher
from audioprep.shared.settings import Settings
from audioprep.shared.storage import open_storage
from audioprep.shared.tenant_limits import TenantLimits
from tests.conftest import Stack, running_stack
from tests.fairness.conftest import (
    A,
    B,
    call,
    caught_up,
    event_store,
    fair_settings,
    post_upload,
    provisioned,
    wait_until,
)
from tests.media import write_tone


@contextlib.asynccontextmanager
async def dispatcher_only(settings: Settings) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(run_dispatcher(settings, stop))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=15)


@pytest.fixture(scope="module")
def wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tone(tmp_path_factory.mktemp("limits") / "tone.wav", seconds=0.5)


async def post(stack: Stack, wav: Path, headers: dict[str, str]) -> tuple[int, Any, Any]:
    resp = await post_upload(stack, wav, headers)
    return resp.status_code, resp.headers, resp.json()


async def uploads_stored(settings: Settings) -> int:
    storage = open_storage(settings.storage)
    return len(await storage.list("tenants/ta/uploads/"))


async def test_queue_limit_and_upload_quota(base_settings: Settings, nc: Client, wav: Path) -> None:
    size = wav.stat().st_size
    settings = await provisioned(
        nc,
        fair_settings(
            base_settings,
            tenants={
                "ta": TenantLimits(max_queued=2),
                "tb": TenantLimits(max_upload_bytes_per_day=size * 3 // 2),
            },
        ),
    )
    async with running_stack(settings, nc, workers=0) as stack, dispatcher_only(settings):
        await caught_up(nc, settings)
        for _ in range(2):
            code, _, body = await post(stack, wav, A)
            assert code == 202, body
        stored = await uploads_stored(settings)
        code, headers, body = await post(stack, wav, A)
        assert code == 429 and body["code"] == "tenant_queue_full", body
        assert headers["content-type"].startswith("application/problem+json")
        retry = int(headers["retry-after"])
        assert 1 <= retry <= 60 and body["retryAfterS"] == retry
        assert body["queued"] == 2 and body["limit"] == 2
        assert await uploads_stored(settings) == stored  # refused before a byte was stored
        # ta's full queue is ta's alone: tb submits, up to its upload quota
        code, _, body = await post(stack, wav, B)
        assert code == 202, body
        code, headers, body = await post(stack, wav, B)  # 2 × size > 1.5 × size
        assert code == 429 and body["code"] == "quota_exceeded", body
        assert body["quota"] == "upload_bytes_per_day"
        until_midnight = seconds_to_midnight(datetime.now(UTC))
        assert abs(int(headers["retry-after"]) - until_midnight) < 60
        # a render is not an upload: tb may still render (refused here only by its source)
        resp = await call(
            stack,
            "POST",
            "/api/audio/edit/save",
            json={"sourceKey": "tenants/tb/sources/x/none.wav", "format": "wav"},
            headers=B,
        )
        assert resp.status_code == 404, resp.text
    # No dispatcher answering (none is running): the limit fails open, the submit goes on.
    async with running_stack(settings, nc, workers=0) as stack:
        code, _, body = await post(stack, wav, A)
        assert code == 202, body


async def test_a_cancelled_waiting_job_ends_at_once_and_frees_its_place(
    base_settings: Settings, nc: Client, wav: Path
) -> None:
    settings = await provisioned(
        nc, fair_settings(base_settings, tenants={"ta": TenantLimits(max_queued=1)})
    )
    async with running_stack(settings, nc, workers=0) as stack, dispatcher_only(settings):
        await caught_up(nc, settings)
        code, _, first = await post(stack, wav, A)
        assert code == 202
        job = first["jobId"]
        views: list[Any] = []

        async def positioned() -> bool:
            views.append((await call(stack, "GET", f"/api/audio/jobs/{job}", headers=A)).json())
            return "queuePosition" in views[-1]

        await wait_until(positioned, 5, "a queue position in the view")
        assert views[-1]["status"] == "pending" and views[-1]["queuePosition"] == 0, views[-1]
        assert (await post(stack, wav, A))[0] == 429
        resp = await call(stack, "POST", f"/api/audio/jobs/{job}/cancel", headers=A)
        assert resp.status_code == 202 and resp.json()["status"] == "cancelled"

        async def ended() -> bool:
            found = await stack_terminal(stack, job)
            return found == "JobCancelled"

        # the dispatcher records the end itself (no worker will ever see this job)
        await wait_until(ended, 10, "the waiting job's JobCancelled")
        assert (await post(stack, wav, A))[0] == 202


async def stack_terminal(stack: Stack, job_id: str) -> str | None:
    found = await event_store(stack).terminal_event(job_id)
    return type(found.event).__name__ if found else None
