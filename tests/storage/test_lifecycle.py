"""`audioprep storage gc` and `evict-previews` on both backends, with real job histories."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from nats.aio.client import Client

from audioprep.domain import kinds
from audioprep.domain.events import (
    ErrorInfo,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobRequested,
    JobResult,
    JobStarted,
)
from audioprep.domain.fold import fold
from audioprep.domain.views import encode_view
from audioprep.services.cli import storage as storage_cli
from audioprep.services.cli.storage import (
    CANCELLED,
    COPIED_UPLOAD,
    EVICTED,
    FAILED,
    NO_JOB_UPLOAD,
    UNCACHED_PREVIEW,
    human_bytes,
    parse_duration,
    parse_key,
    run_eviction,
    run_gc,
)
from audioprep.shared import render_cache
from audioprep.shared.event_store import EventStore
from audioprep.shared.ids import new_job_id
from audioprep.shared.nats_server import NatsServer
from audioprep.shared.storage import ObjectInfo, Storage
from tests.storage.conftest import STORAGE_NAMES

NAMES = STORAGE_NAMES

LATER = timedelta(days=2)  # "now" for runs that should see today's objects as past the grace


def _cache_key(label: str) -> str:
    return hashlib.sha256(f"{label}-{new_job_id()}".encode()).hexdigest()


async def _job(events: EventStore, kind: kinds.Kind, *more: str, tenant: str = "default") -> str:
    """A job with real events in the stream: requested, then the named outcome."""
    job_id = new_job_id()
    await events.request_job(JobRequested(job_id=job_id, kind=kind, tenant=tenant))
    for what in more:
        match what:
            case "started":
                await events.append(JobStarted(job_id=job_id, kind=kind, tenant=tenant))
            case "failed":
                err = ErrorInfo(code="corrupt_media", message="bad")
                await events.append(JobFailed(job_id=job_id, kind=kind, tenant=tenant, error=err))
            case "cancelled":
                await events.append(JobCancelled(job_id=job_id, kind=kind, tenant=tenant))
    return job_id


async def _completed_ingest(events: EventStore, nc: Client) -> str:
    """A completed ingest whose view is in KV (as the projector would have written it)."""
    job_id = new_job_id()
    req = JobRequested(job_id=job_id, kind="ingest", source="upload")
    done = JobCompleted(
        job_id=job_id, kind="ingest", result=JobResult(source_key=f"sources/{job_id}/a.wav")
    )
    view = fold(None, req, await events.request_job(req))
    view = fold(view, done, await events.append(done))
    assert view is not None
    kv = await nc.jetstream().key_value(NAMES.jobs_bucket)
    await kv.put(job_id, encode_view(view))
    return job_id


async def _put(storage: Storage, *keys: str) -> None:
    for key in keys:
        await storage.put_bytes(key, b"x" * 1000)


async def _exists(storage: Storage, key: str) -> bool:
    return await storage.head(key) is not None


# A page of 3 splits every job's objects over pages (the scan holds one page at a time): a
# copied upload still goes only once its source, listed on another page, is found.
@pytest.mark.parametrize("page", [1000, 3], ids=["one-page", "pages-of-3"])
async def test_gc_removes_leftovers_and_keeps_what_jobs_need(
    storage: Storage, own_nc: Client, page: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage_cli, "GC_PAGE", page)
    js = own_nc.jetstream()
    events = EventStore(own_nc, js, NAMES)
    failed = await _job(events, "ingest", "started", "failed")
    cancelled = await _job(events, "save", "cancelled")
    running = await _job(events, "ingest", "started")
    tenant_failed = await _job(events, "ingest", "failed", tenant="acme")
    completed = await _completed_ingest(events, own_nc)
    no_job, unknown = new_job_id(), new_job_id()
    cached, uncached = _cache_key("cached"), _cache_key("uncached")

    doomed = {
        f"uploads/{failed}/a.wav": FAILED,
        f"sources/{failed}/a.wav": FAILED,
        f"peaks/{failed}.json": FAILED,
        f"prepared/{cancelled}/out.flac": CANCELLED,
        f"tenants/acme/uploads/{tenant_failed}/a.wav": FAILED,
        f"uploads/{completed}/a.wav": COPIED_UPLOAD,
        f"uploads/{no_job}/a.wav": NO_JOB_UPLOAD,
        f"previews/{uncached}.opus": UNCACHED_PREVIEW,
    }
    kept = [
        f"uploads/{running}/a.wav",
        f"sources/{completed}/a.wav",
        f"peaks/{completed}.json",
        f"sources/{unknown}/a.wav",  # no history at all: never guessed away
        f"previews/{cached}.opus",
        "misc/readme.txt",  # not our layout
    ]
    await _put(storage, *doomed, *kept)
    await render_cache.remember(
        await render_cache.bucket(js, NAMES), cached, f"previews/{cached}.opus"
    )

    # Today nothing is past the grace period: only job-owned leftovers are planned.
    out = io.StringIO()
    plan = await run_gc(storage, js, events, apply=False, out=out)
    young = {k: r for k, r in doomed.items() if r not in (NO_JOB_UPLOAD, UNCACHED_PREVIEW)}
    assert {d.info.key: d.reason for d in plan.doomed} == young
    assert "dry run: nothing deleted" in out.getvalue()
    assert all([await _exists(storage, k) for k in (*doomed, *kept)])

    out = io.StringIO()
    now = datetime.now(UTC) + LATER
    plan = await run_gc(storage, js, events, apply=True, verbose=True, now=now, out=out)
    assert {d.info.key: d.reason for d in plan.doomed} == doomed
    text = out.getvalue()
    assert f"deleting {len(doomed)} objects, {human_bytes(len(doomed) * 1000)}" in text
    assert f"{len(doomed)}/{len(doomed)} processed" in text
    assert f"uploads/{failed}/a.wav" in text  # --verbose lists keys
    assert [k for k in doomed if await _exists(storage, k)] == []
    assert [k for k in kept if not await _exists(storage, k)] == []
    assert (
        await render_cache.lookup(await render_cache.bucket(js, NAMES), cached)
        == f"previews/{cached}.opus"
    )

    # A second run finds nothing more to do.
    plan = await run_gc(storage, js, events, apply=True, now=now, out=io.StringIO())
    assert plan.doomed == []


async def test_evict_previews_drops_objects_and_cache_entries(
    storage: Storage, own_nc: Client
) -> None:
    js = own_nc.jetstream()
    a, b = _cache_key("a"), _cache_key("b")
    job_keyed = new_job_id()
    previews = [
        f"previews/{a}.opus",
        f"tenants/acme/previews/{b}.mp3",
        f"previews/{job_keyed}.opus",
    ]
    others = [f"prepared/{new_job_id()}/out.flac", f"sources/{new_job_id()}/a.wav"]
    await _put(storage, *previews, *others)
    await render_cache.remember(await render_cache.bucket(js, NAMES), a, previews[0])
    await render_cache.remember(await render_cache.bucket(js, NAMES), b, previews[1])

    plan = await run_eviction(
        storage, js, NAMES, older_than=parse_duration("7d"), apply=True, out=io.StringIO()
    )
    assert plan.doomed == []  # all of them are younger than a week

    out = io.StringIO()
    plan = await run_eviction(
        storage,
        js,
        NAMES,
        older_than=parse_duration("7d"),
        apply=True,
        now=datetime.now(UTC) + timedelta(days=8),
        out=out,
    )
    assert sorted(d.info.key for d in plan.doomed) == sorted(previews)
    assert {d.reason for d in plan.doomed} == {EVICTED}
    assert [k for k in previews if await _exists(storage, k)] == []
    assert [k for k in others if not await _exists(storage, k)] == []
    assert await render_cache.lookup(await render_cache.bucket(js, NAMES), a) is None
    assert await render_cache.lookup(await render_cache.bucket(js, NAMES), b) is None
    assert "3/3 processed" in out.getvalue()


async def test_cli_dry_run_then_yes(
    storage: Storage, own_nc: Client, nats_server: NatsServer
) -> None:
    """The real command line, as a user runs it (env: AUDIOPREP_* and AWS_*)."""
    events = EventStore(own_nc, own_nc.jetstream(), NAMES)
    failed = await _job(events, "ingest", "failed")
    key = f"sources/{failed}/a.wav"
    await _put(storage, key)
    env = {
        **os.environ,
        "AUDIOPREP_NATS_URL": nats_server.url,
        "AUDIOPREP_NAME_PREFIX": NAMES.prefix,
        "AUDIOPREP_STORAGE_URL": storage.url,
        "AUDIOPREP_LOG_LEVEL": "WARNING",
    }

    def cli(*args: str, rc: int = 0, **more_env: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "audioprep.services.cli.main", "storage", *args],
            env={**env, **more_env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == rc, done.stdout + done.stderr
        return done.stdout

    dry = cli("gc")
    assert "would delete 1 objects" in dry and "failed job" in dry and "--yes" in dry
    assert await _exists(storage, key)
    real = cli("gc", "--yes")
    assert "deleting 1 objects" in real and "1/1 processed" in real
    assert not await _exists(storage, key)
    assert "would delete 0 objects" in cli("evict-previews", "--older-than", "7d")

    check = cli("check")
    assert "write   ok" in check and "delete  ok" in check
    assert ("presigned GET ok" in check) != storage.is_local
    if not storage.is_local:
        missing = "s3://no-such-bucket-audioprep/x"
        assert "FAILED" in cli("check", rc=1, AUDIOPREP_STORAGE_URL=missing)


def test_parse_key() -> None:
    j = new_job_id()

    def parsed(key: str) -> tuple[str, str, str] | None:
        p = parse_key(ObjectInfo(key=key, size=1))
        return (p.tenant, p.area, p.owner) if p else None

    assert parsed(f"uploads/{j}/a.wav") == ("default", "uploads", j)
    assert parsed(f"tenants/acme/prepared/{j}/x.flac") == ("acme", "prepared", j)
    assert parsed(f"peaks/{j}.json") == ("default", "peaks", j)
    assert parsed("previews/abc123.opus") == ("default", "previews", "abc123")
    assert parsed("misc/readme.txt") is None
    assert parsed(f"uploads/{j}") is None


def test_parse_duration_and_sizes() -> None:
    assert parse_duration("7d") == timedelta(days=7)
    assert parse_duration("12h") == timedelta(hours=12)
    assert parse_duration("1.5m") == timedelta(seconds=90)
    assert parse_duration("2w") == timedelta(days=14)
    with pytest.raises(Exception, match="not a duration"):
        parse_duration("7 days")
    assert human_bytes(1000) == "1000 B"
    assert human_bytes(20 * 1024 * 1024) == "20.0 MiB"
