"""Fair dispatch as the stream records it: another tenant's jobs start before a flood drains,
weights share the starts, a tenant at its running cap never runs more and blocks nobody.
Orders and counts from the events, never timings."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from audioprep.domain.events import JobRequested, JobStarted
from audioprep.services.worker.dispatch.main import run_dispatcher
from audioprep.services.worker.main import run_worker
from audioprep.shared import keys
from audioprep.shared.event_store import EventStore, StoredEvent
from audioprep.shared.ids import new_job_id
from audioprep.shared.settings import Settings
from audioprep.shared.storage import open_storage
from audioprep.shared.tenant_limits import TenantLimits
from tests.conftest import running_stack
from tests.fairness.conftest import (
    caught_up,
    dispatcher_status,
    fair_settings,
    provisioned,
    settled_status,
    stream_events,
    wait_until,
)
from tests.media import write_tone

TERMINAL = ("JobCompleted", "JobFailed", "JobCancelled")


@pytest.fixture(scope="module")
def tone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tone(tmp_path_factory.mktemp("order") / "tone.wav", seconds=0.3)


async def request_ingests(
    nc: Client, settings: Settings, tone: Path, tenant: str, count: int
) -> list[str]:
    """`count` upload ingests of `tenant`, published straight to the stream (as the API does)."""
    storage = open_storage(settings.storage)
    store = EventStore(nc, nc.jetstream(), settings.names)
    ids = []
    for _ in range(count):
        job_id = new_job_id()
        key = keys.upload_key(tenant, job_id, tone.name)
        await storage.put_file(key, tone)
        await store.request_job(
            JobRequested(
                job_id=job_id,
                kind="ingest",
                tenant=tenant,
                source="upload",
                upload_key=key,
                filename=tone.name,
            )
        )
        ids.append(job_id)
    return ids


@contextlib.asynccontextmanager
async def dispatcher_only(settings: Settings) -> AsyncIterator[None]:
    """A dispatcher without a worker (`audioprep dispatcher`): requests wait, released."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_dispatcher(settings, stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=15)


@contextlib.asynccontextmanager
async def one_worker(settings: Settings) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(settings, stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=60)


async def ended(nc: Client, settings: Settings, ids: list[str]) -> list[StoredEvent]:
    events: list[StoredEvent] = []

    async def all_done() -> bool:
        events[:] = await stream_events(nc, settings)
        done = {s.event.job_id for s in events if type(s.event).__name__ in TERMINAL}
        return set(ids) <= done

    await wait_until(all_done, 60, "every job to end")
    return events


def start_order(events: list[StoredEvent]) -> list[str]:
    """Tenants in the order their jobs first started."""
    seen: set[str] = set()
    order = []
    for stored in events:
        if isinstance(stored.event, JobStarted) and stored.event.job_id not in seen:
            seen.add(stored.event.job_id)
            order.append(stored.event.tenant)
    return order


async def released(nc: Client, settings: Settings, count: int) -> None:
    """Until the dispatcher has released `count` ingests in all (the first ones queued)."""

    async def enough() -> bool:
        status = await dispatcher_status(nc, settings)
        return status is not None and status.kinds["ingest"].released >= count

    await wait_until(enough, 20, f"{count} releases")


async def test_a_second_tenant_starts_before_the_flood_drains_and_weights_share(
    base_settings: Settings, nc: Client, tone: Path
) -> None:
    settings = await provisioned(
        nc,
        fair_settings(
            base_settings,
            worker_concurrency=1,
            tenants={"tc": TenantLimits(weight=3)},
        ),
    )
    async with dispatcher_only(settings):
        await caught_up(nc, settings)
        # ta floods; the dispatcher lets the window's worth (2) go at once (no worker yet);
        # then tb asks for three.
        flood = await request_ingests(nc, settings, tone, "ta", 12)
        await released(nc, settings, 2)
        late = await request_ingests(nc, settings, tone, "tb", 3)
        async with one_worker(settings):
            events = await ended(nc, settings, flood + late)
        order = start_order(events)
        assert len(order) == 15
        # FIFO would start tb's three last (13th-15th); round robin starts them right after
        # the two already released, alternating with ta: 3rd, 5th, 7th.
        assert [i for i, tenant in enumerate(order) if tenant == "tb"] == [2, 4, 6], order
        assert order[7:] == ["ta"] * 8  # ta's backlog drains after tb is done

        # Weights tc 3 : tb 1, both backlogged: three of tc's starts for each of tb's.
        heavy = await request_ingests(nc, settings, tone, "tc", 24)
        await released(nc, settings, 15 + 2)
        light = await request_ingests(nc, settings, tone, "tb", 8)
        async with one_worker(settings):
            events = await ended(nc, settings, heavy + light)
    order = start_order(events)[15:]
    assert order.index("tb") == 2, order  # a newcomer goes next, whatever its weight
    assert Counter(order[5:29]) == {"tc": 18, "tb": 6}, order


async def test_a_tenant_at_its_running_cap_runs_no_more_and_blocks_nobody(
    base_settings: Settings, nc: Client, media_dir: Path
) -> None:
    settings = await provisioned(
        nc,
        fair_settings(
            base_settings, worker_concurrency=2, tenants={"ta": TenantLimits(max_running=1)}
        ),
    )
    slow = write_tone(media_dir / "slow.wav", seconds=90.0, channels=1, rate=22050)
    quick = write_tone(media_dir / "quick.wav", seconds=0.3)
    async with running_stack(settings, nc, workers=1):
        await caught_up(nc, settings)
        capped = await request_ingests(nc, settings, slow, "ta", 3)
        free = await request_ingests(nc, settings, quick, "tb", 2)
        events = await ended(nc, settings, capped + free)
        status = await settled_status(nc, settings)
    running: Counter[str] = Counter()
    most: Counter[str] = Counter()
    live: dict[str, str] = {}
    for stored in events:
        name, job_id = type(stored.event).__name__, stored.event.job_id
        if name == "JobStarted" and job_id not in live:
            live[job_id] = stored.event.tenant
            running[stored.event.tenant] += 1
            most[stored.event.tenant] = max(most[stored.event.tenant], running[stored.event.tenant])
        elif name in TERMINAL and job_id in live:
            running[live.pop(job_id)] -= 1
    assert most["ta"] == 1  # never two of ta's at once, with two slots free
    order = start_order(events)
    # tb (submitted after all of ta's) ran while ta sat at its cap, before ta's last started
    assert order.index("tb") < len(order) - 1 - order[::-1].index("ta"), order
    assert most["tb"] >= 1 and order.count("tb") == 2
    assert status is not None and not status.tenants  # nothing left waiting or running
