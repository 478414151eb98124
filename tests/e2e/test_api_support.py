"""Helpers shared by the test_api_* suites (no tests here): ingest, history, SSE parsing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx

from audioprep.domain import kinds
from audioprep.shared import names
from audioprep.shared.event_store import EventStore, StoredEvent
from audioprep.shared.names import Names
from tests.conftest import Stack
from tests.jobs_helpers import wait_for_job

NAMES = Names()  # the default prefix: what `audioprep up` uses

T = TypeVar("T")


async def upload(stack: Stack, path: Path, content_type: str = "audio/wav") -> str:
    with path.open("rb") as f:
        resp = await stack.client.post(
            "/api/audio/ingest", files={"file": (path.name, f, content_type)}
        )
    assert resp.status_code == 202, resp.text
    return str(resp.json()["jobId"])


async def ingest_source(stack: Stack, path: Path) -> str:
    """Upload `path`, wait for the ingest, return its sourceKey."""
    job_id = await upload(stack, path)
    view = await wait_for_job(stack.client, job_id)
    assert view["status"] == "completed", view
    return str(view["result"]["sourceKey"])


async def history(stack: Stack, job_id: str) -> list[StoredEvent]:
    js = stack.nc.jetstream()
    return await EventStore(stack.nc, js, NAMES).history(job_id)


async def event_types(stack: Stack, job_id: str) -> list[str]:
    return [type(s.event).__name__ for s in await history(stack, job_id)]


async def wait_consumer_past(stack: Stack, kind: kinds.Kind, seq: int, timeout: float = 20) -> None:
    """Wait until the kind's worker consumer has delivered and acked everything up to `seq`."""
    js = stack.nc.jetstream()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = await js.consumer_info(NAMES.stream, names.worker_consumer(kind))
        if info.ack_floor.stream_seq >= seq and info.delivered.stream_seq >= seq:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"consumer {kind} never acked past {seq}")


def local_path(stack: Stack, key: str) -> Path:
    return Path(stack.settings.data_dir) / "storage" / key


def path_of(url: str) -> str:
    """The path and query of an absolute URL (the test client talks to the app directly)."""
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


def parse_sse(text: str) -> list[dict[str, Any]]:
    """Split a text/event-stream body into messages ({id, event, data}); comments dropped."""
    out: list[dict[str, Any]] = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        msg: dict[str, Any] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            msg[name] = msg[name] + "\n" + value if name == "data" and name in msg else value
        if "data" in msg or "event" in msg:
            out.append(msg)
    return out


async def in_app_loop(stack: Stack, fn: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
    """Run `fn(client)` on the app's own event loop.

    Litestar's AsyncTestClient drives the app through a blocking portal: the calling loop, where
    the worker and projector tasks live, is blocked for the whole request. A request that waits
    for jobs to progress (a live SSE stream) or truly concurrent requests must run in the app's
    loop instead, while this loop keeps the services going.
    """

    async def call() -> T:
        transport = httpx.ASGITransport(app=stack.client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await fn(client)

    future = stack.client.blocking_portal.start_task_soon(call)
    return await asyncio.wrap_future(future)
