"""`projection rebuild` in bounded memory: with a cache of 3 views every job's view is pushed
out and read back between its events, and the bucket still ends up equal, key for key, to the
live projector's view and to the all-in-memory fold, after a mixed history (retries,
failures, cancels, late events, a duplicate request, strays) and a damaged bucket; `--check`
finds exactly the damaged keys."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError

from audioprep.domain.events import (
    ErrorInfo,
    Event,
    JobCancelled,
    JobCancelRequested,
    JobCompleted,
    JobFailed,
    JobProgressed,
    JobRequested,
    JobResult,
    JobRetrying,
    JobStarted,
    encode_event,
)
from audioprep.domain.views import encode_view
from audioprep.services.projector.main import run_projector
from audioprep.services.projector.rebuild import fold_stream, read_bucket, rebuild
from audioprep.shared import names
from audioprep.shared.event_store import EventStore
from audioprep.shared.ids import new_job_id
from audioprep.shared.names import Names
from tests.faults.harness import connected, fault_settings, private_server

NAMES = Names()
BOOM = ErrorInfo(code="x", message="boom")


def history(job_id: str, i: int) -> list[Event]:
    """One of six shapes of a job's life; every one starts with its request."""
    req = JobRequested(job_id=job_id, kind="ingest", source="upload", upload_key=f"u/{job_id}")
    started = JobStarted(job_id=job_id, kind="ingest", attempt=1, worker="t:1")
    done = JobCompleted(job_id=job_id, kind="ingest", result=JobResult(duration_ms=i))
    match i % 6:
        case 0:  # completed, then a late progress event (only the view's seq moves)
            return [req, started, JobProgressed(job_id=job_id, kind="ingest", progress=50),
                    done, JobProgressed(job_id=job_id, kind="ingest", progress=70)]  # fmt: skip
        case 1:  # retried, then completed on attempt 2
            return [req, started,
                    JobRetrying(job_id=job_id, kind="ingest", attempt=1, error=BOOM),
                    JobStarted(job_id=job_id, kind="ingest", attempt=2, worker="t:2"),
                    JobCompleted(job_id=job_id, kind="ingest", attempt=2, result=JobResult(
                        duration_ms=i))]  # fmt: skip
        case 2:  # failed
            return [req, started, JobFailed(job_id=job_id, kind="ingest", error=BOOM)]
        case 3:  # cancelled before anyone started it
            return [req, JobCancelRequested(job_id=job_id, kind="ingest")]
        case 4:  # cancelled while running
            return [req, started, JobCancelRequested(job_id=job_id, kind="ingest"),
                    JobCancelled(job_id=job_id, kind="ingest", attempt=1)]  # fmt: skip
        case _:  # still running; its request comes again (must not reset the view)
            return [req, started, JobProgressed(job_id=job_id, kind="ingest", progress=30), req]


async def publish_interleaved(nc: Client, jobs: list[str]) -> None:
    """Step k of every job, then step k+1 of every job: dozens of other jobs' events between
    two events of one job. Published raw (no Nats-Msg-Id: the repeated request is stored)."""
    js = nc.jetstream()
    lives = [history(j, i) for i, j in enumerate(jobs)]
    for step in range(max(len(h) for h in lives)):
        for life in lives:
            if step < len(life):
                ev = life[step]
                await js.publish(NAMES.event_subject(ev.kind, ev.job_id, ev.name), encode_event(ev))


async def bucket(nc: Client) -> dict[str, bytes]:
    current = await read_bucket(nc, NAMES.jobs_bucket)
    return {k: c.value for k, c in current.items() if c.value is not None}


async def caught_up(nc: Client, timeout: float = 30.0) -> None:
    js = nc.jetstream()
    state = await js.key_value(NAMES.projector_state_bucket)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last = (await js.stream_info(NAMES.stream)).state.last_seq or 0
        with contextlib.suppress(KeyNotFoundError):
            if int((await state.get(names.PROJECTOR_CHECKPOINT_KEY)).value or b"0") >= last:
                return
        await asyncio.sleep(0.05)
    raise AssertionError("projector did not catch up")


async def test_bounded_rebuild_reads_views_back_and_equals_the_live_view(tmp_path: Path) -> None:
    with private_server(tmp_path / "nats") as server:
        settings = fault_settings(server.url, tmp_path / "data")
        async with connected(settings) as nc:
            js = nc.jetstream()
            events = EventStore(nc, js, NAMES)
            jobs = [new_job_id() for _ in range(36)]
            await publish_interleaved(nc, jobs)
            stray = new_job_id()  # events of a job never requested make no key
            await events.append(JobStarted(job_id=stray, kind="ingest", attempt=1, worker="t"))
            stop = asyncio.Event()
            projector = asyncio.create_task(run_projector(settings, stop))
            try:
                await caught_up(nc)
            finally:
                stop.set()
                await asyncio.wait_for(projector, timeout=30)
            live = await bucket(nc)
            last = (await js.stream_info(NAMES.stream)).state.last_seq or 0
            folded, _ = await fold_stream(js, NAMES, start_seq=1, end_seq=last)
            assert set(live) == set(folded) == set(jobs)
            assert all(live[k] == encode_view(v) for k, v in folded.items())

            expected = {k: encode_view(v) for k, v in folded.items()}

            # Damage the bucket: deleted keys, garbage, a key no job has.
            kv = await js.key_value(NAMES.jobs_bucket)
            for key in jobs[:2]:
                await kv.delete(key)
            for key in jobs[2:4]:
                await kv.put(key, b'{"jobId":"garbage"}')
            extra = new_job_id()
            await kv.put(extra, live[jobs[8]])
            await kv.put(stray, live[jobs[9]])  # its events are strays: no view

            check = await rebuild(js, events, check_only=True, cache=3)
            assert check.differences == sorted([*jobs[:4], stray, extra])
            assert check.different == 6 and check.read_back > 0

            report = await rebuild(js, events, cache=3)
            print(
                f"[rebuild-bounded] jobs={report.jobs} events={report.events} cache=3 "
                f"read_back={report.read_back} spilled={report.spilled} "
                f"written={report.written} deleted={report.deleted}"
            )
            # every event of a job after its request comes after dozens of other jobs' events
            lives = [history(j, i) for i, j in enumerate(jobs)]
            assert report.read_back == sum(len(life) - 1 for life in lives)
            assert (report.written, report.deleted, report.jobs) == (4, 2, len(jobs))
            assert await bucket(nc) == expected

            again = await rebuild(js, events, check_only=True, cache=3)
            assert (again.different, again.differences) == (0, [])
            roomy = await rebuild(js, events, cache=10_000)  # all in memory: nothing to do
            assert (roomy.read_back, roomy.written, roomy.unchanged) == (0, 0, len(jobs))
            assert await bucket(nc) == expected
