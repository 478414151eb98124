"""After a mixed run (successes, failures, retries, cancels, stray events), the rebuilt view
equals the live projector's view key for key, also after the bucket was damaged."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient
from nats.aio.client import Client
from nats.aio.msg import Msg

from audioprep.domain.events import JobProgressed, JobRequested
from audioprep.domain.views import encode_view
from audioprep.services.api.app import create_app
from audioprep.services.projector.main import run_projector
from audioprep.services.projector.rebuild import fold_stream, read_bucket
from audioprep.services.worker.main import run_worker
from audioprep.shared import names
from audioprep.shared.event_store import EventStore
from audioprep.shared.ids import new_job_id
from audioprep.shared.names import Names
from audioprep.shared.nats_server import REPO_ROOT
from tests.faults.harness import (
    Submitter,
    by_job,
    connected,
    fault_settings,
    flaky_http,
    make_sources,
    private_server,
    read_stream,
    save_request,
    service_env,
    tally,
    wait_terminal,
)
from tests.media import write_tone

NAMES = Names()  # the default prefix: what `audioprep up` uses

pytestmark = pytest.mark.slow


async def bucket_values(nc: Client) -> dict[str, bytes]:
    current = await read_bucket(nc, NAMES.jobs_bucket)
    return {k: c.value for k, c in current.items() if c.value is not None}


async def wait_caught_up(nc: Client, timeout: float = 30.0) -> int:
    """Until the projector's checkpoint reaches the stream's last sequence."""
    js = nc.jetstream()
    state = await js.key_value(NAMES.projector_state_bucket)
    deadline = time.monotonic() + timeout
    while True:
        last = (await js.stream_info(NAMES.stream)).state.last_seq or 0
        with contextlib.suppress(Exception):
            entry = await state.get(names.PROJECTOR_CHECKPOINT_KEY)
            if int(entry.value or b"0") >= last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError("projector did not catch up")
        await asyncio.sleep(0.1)


async def test_rebuild_equals_live_view_after_mixed_run(tmp_path: Path) -> None:
    with private_server(tmp_path / "nats") as server:
        settings = fault_settings(server.url, tmp_path / "data", max_deliver=3)
        tone = write_tone(tmp_path / "tone.wav", seconds=1.0)
        junk = tmp_path / "junk.mp3"
        junk.write_bytes(b"\x00not audio at all" * 4000)
        async with connected(settings) as nc:
            js = nc.jetstream()
            events = EventStore(nc, js, NAMES)
            media = tmp_path / "media"
            media.mkdir()
            sources = await make_sources(settings, media, seconds=1.0)
            stop = asyncio.Event()
            services = [
                asyncio.create_task(run_projector(settings, stop)),
                asyncio.create_task(run_worker(settings, stop)),
            ]
            ids: list[str] = []
            try:
                with flaky_http(tone.read_bytes()) as (web, _):
                    async with AsyncTestClient(app=create_app(settings), timeout=30) as client:
                        sub = Submitter(client, tone)
                        await sub.burst(4)  # successes
                        sub.tone = junk
                        await sub.burst(2)  # permanent failures (unsupported media)
                        for path in ("/flaky-1.wav", "/flaky-2.wav", "/down.wav", "/gone.wav"):
                            resp = await client.post(
                                "/api/audio/ingest", json={"source": "url", "url": web + path}
                            )
                            assert resp.status_code == 202, resp.text
                            ids.append(resp.json()["jobId"])  # retried+ok, exhausted, 404
                        saves = [save_request(sources, "wav") for _ in range(3)]
                        long_source = write_tone(media / "long.wav", seconds=120.0)
                        await sources.storage.put_file(
                            sources.source_key + "-long.wav", long_source
                        )
                        long_save = JobRequested(
                            job_id=new_job_id(),
                            kind="save",
                            source_key=sources.source_key + "-long.wav",
                            recipe={"normalize": {"targetLufs": -16}},
                            format="mp3",
                        )
                        long_started = asyncio.Event()

                        async def on_started(_: Msg) -> None:
                            long_started.set()

                        await nc.subscribe(
                            NAMES.event_subject("save", long_save.job_id, "started"),
                            cb=on_started,
                        )
                        for request in [*saves, long_save]:
                            await events.request_job(request)
                        # Cancels: one while it renders, one at once after the request.
                        await asyncio.wait_for(long_started.wait(), timeout=30)
                        resp = await client.post(f"/api/audio/jobs/{long_save.job_id}/cancel")
                        assert resp.status_code in (200, 202), resp.text
                        quick = save_request(sources, "flac")
                        await events.request_job(quick)
                        resp = await client.post(f"/api/audio/jobs/{quick.job_id}/cancel")
                        assert resp.status_code in (200, 202), resp.text
                        # A stray event of a job that was never requested: no key may appear.
                        await events.append(JobProgressed(job_id=new_job_id(), kind="save"))
                        ids += sub.accepted + [r.job_id for r in [*saves, long_save, quick]]
                        unfinished = await wait_terminal(events, ids, timeout=90)
                        assert not unfinished
                last = await wait_caught_up(nc)
            finally:
                stop.set()
                await asyncio.wait_for(asyncio.gather(*services), timeout=60)

            history = by_job(await read_stream(js))
            counts = tally(ids, history)
            retried = sum(
                1 for j in ids if any(type(s.event).__name__ == "JobRetrying" for s in history[j])
            )
            print(counts.line("rebuild-mixed", retried=retried, events=last))
            assert counts.completed >= 6 and counts.failed >= 4 and counts.cancelled >= 1
            assert retried >= 2 and counts.duplicates == counts.lost == 0

            # 1. The live view equals the fold of the whole stream, key for key.
            live = await bucket_values(nc)
            folded, _ = await fold_stream(js, Names(), start_seq=1, end_seq=last)
            assert set(live) == set(folded) == set(ids)  # the stray event made no key
            assert all(live[k] == encode_view(v) for k, v in folded.items())

            # 2. Damage the bucket, rebuild with the CLI, get the live view back.
            kv = await js.key_value(NAMES.jobs_bucket)
            keys = sorted(live)
            for key in keys[:3]:
                await kv.delete(key)
            for key in keys[3:6]:
                await kv.put(key, b'{"jobId":"garbage"}')
            await kv.put(new_job_id(), live[keys[0]])
            result = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "audioprep.services.cli.main", "projection", "rebuild"],
                cwd=REPO_ROOT,
                env=service_env(settings),
                capture_output=True,
                text=True,
                timeout=60,
            )
            print(result.stderr.strip().splitlines()[-1:], result.stdout.strip())
            assert result.returncode == 0, result.stderr
            assert "6 written" in result.stdout and "1 deleted" in result.stdout
            assert await bucket_values(nc) == live
