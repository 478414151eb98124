"""The API's watch-fed view cache: it follows every KV write, never goes back to an older
revision, and never serves a view from before a nats-server restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec

from audioprep.domain.events import JobRequested
from audioprep.domain.fold import fold
from audioprep.domain.views import JobView, encode_view
from audioprep.shared.event_store import EventStore
from audioprep.shared.ids import new_job_id
from audioprep.shared.job_views import JobViews
from audioprep.shared.names import Names
from audioprep.shared.nats_conn import connect
from audioprep.shared.nats_server import NatsServer
from audioprep.shared.view_cache import ViewCache
from tests.faults.harness import connected, fault_settings

NAMES = Names()


def _view(job_id: str, progress: int) -> JobView:
    view = fold(None, JobRequested(job_id=job_id, kind="ingest", source="upload"), 1)
    assert view is not None
    return msgspec.structs.replace(view, progress=progress)


async def _until(predicate: object, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():  # type: ignore[operator]
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_cache_follows_writes_and_survives_a_restart(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats", log_file=tmp_path / "nats.log").start()
    try:
        settings = fault_settings(server.url, tmp_path / "data")
        async with connected(settings) as writer_nc:
            kv_w = await writer_nc.jetstream().key_value(NAMES.jobs_bucket)
            nc = await connect(settings, "api-test")
            js = nc.jetstream()
            cache = ViewCache(nc, js, NAMES.jobs_bucket)
            await cache.start()
            views = JobViews(
                await js.key_value(NAMES.jobs_bucket), EventStore(nc, js, NAMES), cache=cache
            )
            job = new_job_id()
            await kv_w.put(job, encode_view(_view(job, 10)))

            # a miss reads KV and is remembered; then each write reaches the cache by the watch
            first = await views.stored(job)
            assert first is not None and first.progress == 10
            for progress in (20, 30):
                await kv_w.put(job, encode_view(_view(job, progress)))

                async def shows(p: int = progress) -> bool:
                    return (await views.stored(job)).progress == p  # type: ignore[union-attr]

                await _until(shows)
            assert cache.hits >= 2

            # an older revision never replaces a newer one
            token = cache.token()
            cache.learned(job, encode_view(_view(job, 5)), 1, token)
            assert (await views.stored(job)).progress == 30  # type: ignore[union-attr]

            # a delete is seen too (the poll then falls back to the events)
            await kv_w.delete(job)

            async def gone() -> bool:
                return await views.stored(job) is None

            await _until(gone)

            # restart nats-server; a write lands before the cache's watch could have seen it
            other = new_job_id()
            await kv_w.put(other, encode_view(_view(other, 1)))
            assert (await views.stored(other)).progress == 1  # type: ignore[union-attr]
            port = server.port
            server.stop()
            server = NatsServer(tmp_path / "nats", port=port, log_file=tmp_path / "nats.log")
            server.start()

            async def reconnected() -> bool:
                return bool(nc.is_connected and writer_nc.is_connected)

            await _until(reconnected, timeout=20)
            for _ in range(50):  # JetStream takes a moment to recover its streams
                try:
                    await kv_w.put(other, encode_view(_view(other, 2)))
                    break
                except Exception:
                    await asyncio.sleep(0.2)
            hits = cache.hits
            after = await views.stored(other)
            assert after is not None and after.progress == 2
            assert cache.hits == hits  # read from KV: nothing from before the restart is served

            await cache.stop()
            await nc.close()
    finally:
        server.stop()
