"""Fair-dispatch tests: each test gets its own name prefix (stream, consumers, lease, usage),
so its dispatcher sees only its own jobs."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from nats.aio.client import Client

from audioprep.domain.events import decode_event
from audioprep.shared.admission import StatusReply, StatusRequest, ask
from audioprep.shared.event_store import EventStore, StoredEvent
from audioprep.shared.names import Names
from audioprep.shared.provision import provision
from audioprep.shared.settings import Settings
from audioprep.shared.tenant_limits import TenantLimits, TenantPolicies
from tests.conftest import Stack
from tests.e2e.test_api_support import in_app_loop

KEY_A, KEY_B, KEY_ADMIN = "key-tenant-a-0123456789", "key-tenant-b-0123456789", "key-ops-01234"
A = {"Authorization": f"Bearer {KEY_A}"}
B = {"Authorization": f"Bearer {KEY_B}"}
ADMIN = {"Authorization": f"Bearer {KEY_ADMIN}"}
HEADERS = {"ta": A, "tb": B}
_prefixes = itertools.count()


def fair_settings(
    base: Settings,
    *,
    defaults: TenantLimits | None = None,
    tenants: dict[str, TenantLimits] | None = None,
    **changes: Any,
) -> Settings:
    """Keys for tenants `ta`, `tb` and an admin (`ops`), a fresh name prefix, the limits."""
    prefix = f"fair{os.getpid()}x{next(_prefixes)}"
    return base.with_(
        names=Names(prefix),
        api_keys={KEY_A: "ta", KEY_B: "tb", KEY_ADMIN: "ops"},
        admin_keys=frozenset({KEY_ADMIN}),
        tenant_policies=TenantPolicies(defaults=defaults or TenantLimits(), tenants=tenants or {}),
        **changes,
    )


async def provisioned(nc: Client, settings: Settings) -> Settings:
    await provision(nc.jetstream(), settings)
    return settings


async def dispatcher_status(nc: Client, settings: Settings) -> StatusReply | None:
    subject = settings.names.scheduler_status_subject
    return await ask(nc, subject, StatusRequest(), StatusReply, 1.0)


async def settled_status(nc: Client, settings: Settings, timeout: float = 15.0) -> StatusReply:
    """The dispatcher's status once it counts nothing waiting or in flight (it folds the
    last endings a moment after they are written), or the last one seen."""
    seen: list[StatusReply | None] = []

    async def settled() -> bool:
        seen.append(await dispatcher_status(nc, settings))
        return seen[-1] is not None and not seen[-1].tenants

    with contextlib.suppress(AssertionError):
        await wait_until(settled, timeout, "the dispatcher to count nothing in flight")
    status = seen[-1]
    assert status is not None, "no dispatcher answered"
    return status


async def wait_until(
    check: Callable[[], Awaitable[bool]], timeout: float = 30.0, what: str = "condition"
) -> None:
    """Poll with a deadline (no fixed sleeps as synchronisation)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def caught_up(nc: Client, settings: Settings, timeout: float = 20.0) -> StatusReply:
    found: list[StatusReply] = []

    async def ready() -> bool:
        status = await dispatcher_status(nc, settings)
        if status is not None and status.caught_up:
            found.append(status)
            return True
        return False

    await wait_until(ready, timeout, "the dispatcher to lead and catch up")
    return found[-1]


async def stream_events(nc: Client, settings: Settings) -> list[StoredEvent]:
    """Every event of the prefix's stream, in order (an ordered read, then stop)."""
    js = nc.jetstream()
    info = await js.stream_info(settings.names.stream)
    last = info.state.last_seq or 0
    out: list[StoredEvent] = []
    if last == 0:
        return out
    sub = await js.subscribe(
        settings.names.stream_subjects, stream=settings.names.stream, ordered_consumer=True
    )
    try:
        while True:
            msg = await sub.next_msg(timeout=5)
            seq = msg.metadata.sequence.stream
            out.append(StoredEvent(seq=seq, subject=msg.subject, event=decode_event(msg.data)))
            if seq >= last:
                return out
    finally:
        await sub.unsubscribe()


def event_store(stack: Stack) -> EventStore:
    return EventStore(stack.nc, stack.nc.jetstream(), stack.settings.names)


async def call(stack: Stack, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One request run on the app's own loop (tests/e2e/test_api_support.in_app_loop): the
    test client blocks this loop for a request, and the dispatcher the API asks lives here."""

    async def go(client: httpx.AsyncClient) -> httpx.Response:
        return await client.request(method, path, **kwargs)

    return await in_app_loop(stack, go)


async def post_upload(stack: Stack, path: Path, headers: dict[str, str]) -> httpx.Response:
    files = {"file": (path.name, path.read_bytes(), "audio/wav")}
    return await call(stack, "POST", "/api/audio/ingest", files=files, headers=headers)


async def upload(stack: Stack, path: Path, headers: dict[str, str]) -> str:
    resp = await post_upload(stack, path, headers)
    assert resp.status_code == 202, resp.text
    return str(resp.json()["jobId"])
