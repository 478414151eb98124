"""Issue 20 scenario 2: a lost or repeated MAX_DELIVERIES advisory.

Two poison jobs (whichever worker process starts one is SIGKILLed) use up `max_deliver`
while JOBS_DLQ cannot capture advisories (its subjects point elsewhere: what a DLQ stream
without a leader amounts to), so JetStream's advisory is lost:

- the first while no worker, hence no dead-letter failer, is running: the reconciler of the
  next worker to start ends it at start;
- the second while a worker that never had it keeps running: its periodic pass ends it.

Both end `max_deliveries` exactly once with one JOBS_DLQ entry each. The lost advisory,
fired again twice once JOBS_DLQ captures again, ends nothing and adds no entry. Normal jobs
in between complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from audioprep.domain.events import (
    JobCompleted,
    JobFailed,
    JobRequested,
    JobResult,
    JobStarted,
    decode_event,
)
from audioprep.services.worker.dead_letters import DeadLetterReconciler, decode_advisory
from audioprep.shared import names
from audioprep.shared.event_store import EventStore
from audioprep.shared.ids import new_job_id
from audioprep.shared.provision import dlq_stream_config
from audioprep.shared.settings import Settings
from tests.faults.harness import (
    NAMES,
    Workers,
    audit,
    by_job,
    connected,
    fault_settings,
    ingest_request,
    make_sources,
    private_server,
    read_stream,
    wait_terminal,
)
from tests.media import write_noise

pytestmark = pytest.mark.slow

MAX_DELIVER = 2
ACK_WAIT_S = 1.5
NOWHERE = "audioprep.test.dlq-capture-off"


async def _until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def _until_recorded(js: JetStreamContext, stream_seq: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while stream_seq not in await _dlq_entries(js):
        assert time.monotonic() < deadline, f"no JOBS_DLQ record for stream seq {stream_seq}"
        await asyncio.sleep(0.05)


async def _capture(js: JetStreamContext, settings: Settings, *, on: bool) -> None:
    """JOBS_DLQ captures advisories (on) or nothing at all (off: the advisory is lost)."""
    config = dlq_stream_config(settings)
    if not on:
        config.subjects = [NOWHERE]
    await js.update_stream(config)


async def _dlq_entries(js: JetStreamContext) -> dict[int, list[dict[str, object]]]:
    """JOBS_DLQ's entries by the JOBS stream sequence they name."""
    info = await js.stream_info(NAMES.dlq_stream)
    out: dict[int, list[dict[str, object]]] = {}
    for seq in range(info.state.first_seq or 1, (info.state.last_seq or 0) + 1):
        try:
            raw = await js.get_msg(NAMES.dlq_stream, seq, direct=True)
        except Exception:
            continue  # removed (a repeat)
        if raw.data:
            entry = json.loads(raw.data)
            out.setdefault(int(entry["stream_seq"]), []).append(entry)
    return out


async def test_missed_and_repeated_advisories_end_a_poison_job_once(tmp_path: Path) -> None:
    with private_server(tmp_path / "nats") as server:
        settings = fault_settings(
            server.url,
            tmp_path / "data",
            ack_wait_s=ACK_WAIT_S,
            max_deliver=MAX_DELIVER,
            worker_concurrency=1,
        )
        async with connected(settings) as nc:
            js = nc.jetstream()
            events = EventStore(nc, js, NAMES)
            media = tmp_path / "media"
            media.mkdir()
            sources = await make_sources(settings, media, seconds=1.0)
            long_file = write_noise(media / "poison.wav", seconds=60.0)
            workers = Workers(settings, tmp_path)
            poison: dict[str, int] = {}  # job id → its request's stream seq
            fired: list[bytes] = []  # advisories JetStream published (seen on core NATS)
            kills: asyncio.Queue[int] = asyncio.Queue()

            async def on_event(msg: Msg) -> None:
                event = decode_event(msg.data)
                if isinstance(event, JobStarted) and event.job_id in poison:
                    await kills.put(int(event.worker.rsplit(":", 1)[1]))

            async def on_advisory(msg: Msg) -> None:
                fired.append(msg.data)

            async def killer() -> None:
                while True:
                    victim = workers.by_pid(await kills.get())
                    if victim is not None and victim.poll() is None:
                        workers.kill(victim)

            await nc.subscribe("jobs.*.*.started", cb=on_event)
            await nc.subscribe(NAMES.max_deliveries_advisory, cb=on_advisory)
            kill_task = asyncio.create_task(killer())

            async def poison_job() -> str:
                request = await ingest_request(sources, path=long_file)
                poison[request.job_id] = 0
                poison[request.job_id] = await events.request_job(request)
                return request.job_id

            async def normal_jobs(n: int) -> list[str]:
                out = []
                for _ in range(n):
                    request: JobRequested = await ingest_request(sources)
                    await events.request_job(request)
                    out.append(request.job_id)
                return out

            try:
                # 1. Lost while no failer runs: both workers die on the job, then the
                #    advisory fires into a JOBS_DLQ that can't capture it.
                await _capture(js, settings, on=False)
                first = await poison_job()
                workers.start()
                workers.start()
                await _until(lambda: workers.killed == MAX_DELIVER, 30, "two kills")
                assert not workers.alive()
                await _until(lambda: _fired_for(fired, poison[first]), 30, "the first advisory")
                await _capture(js, settings, on=True)
                assert await _dlq_entries(js) == {}  # lost
                workers.start()  # its reconciler, at start
                assert not await wait_terminal(events, [first], timeout=30), workers.logs()
                # the reconciler ends the job, then records it in JOBS_DLQ: wait for the record
                # (a re-fired advisory that came first would be the entry kept instead)
                await _until_recorded(js, poison[first])

                # JetStream fires the lost advisory again, twice: nothing more happens.
                for _ in range(2):
                    await js.publish(_advisory_subject(fired[0]), fired[0])
                ids = await normal_jobs(3)
                assert not await wait_terminal(events, ids, timeout=60), workers.logs()
                await _until_failer_idle(js)

                # 2. Lost while a failer runs (a worker that never had the job lives on).
                await _capture(js, settings, on=False)
                workers.start()
                workers.start()
                second = await poison_job()
                await _until(lambda: workers.killed == 2 * MAX_DELIVER, 30, "two more kills")
                assert len(workers.alive()) == 1
                await _until(lambda: _fired_for(fired, poison[second]), 30, "the advisory")
                await _capture(js, settings, on=True)
                # the survivor's periodic pass (every max(2 s, 2 × ack_wait))
                assert not await wait_terminal(events, [second], timeout=30), workers.logs()
                ids += await normal_jobs(2)
                unfinished = await wait_terminal(events, ids, timeout=60)
                await _until_failer_idle(js)
            finally:
                kill_task.cancel()
                workers.stop_all()

            history = by_job(await read_stream(js))
            counts = audit([first, second, *ids], history)
            entries = await _dlq_entries(js)
            reconciled = workers.logs().count("dead letter reconciled")
            print(
                "\n"
                + counts.line(
                    "dlq-advisory-lost",
                    advisories_lost=2,
                    reconciled=reconciled,
                    refired=2,
                    dlq_entries_per_job=",".join(str(len(entries[s])) for s in poison.values()),
                    kills=workers.killed,
                )
            )
            assert not unfinished, workers.logs()
            counts.assert_clean()
            assert counts.codes == {"max_deliveries": 2} and counts.completed == len(ids)
            for job_id in (first, second):
                ends = [s.event for s in history[job_id] if isinstance(s.event, JobFailed)]
                assert len(ends) == 1 and ends[0].attempt == MAX_DELIVER, ends
                starts = [s for s in history[job_id] if isinstance(s.event, JobStarted)]
                assert len(starts) == MAX_DELIVER
                assert [e.get("reconciled") for e in entries[poison[job_id]]] == [True]
            assert set(entries) == set(poison.values())
            assert decode_advisory(fired[0]).stream_seq == poison[first]
            assert reconciled == 2


def _fired_for(fired: list[bytes], seq: int) -> bool:
    return any(decode_advisory(data).stream_seq == seq for data in fired)


def _advisory_subject(data: bytes) -> str:
    return NAMES.max_deliveries_advisory_of(decode_advisory(data).consumer)


async def _until_failer_idle(js: JetStreamContext, timeout: float = 20.0) -> None:
    """The dead-letter failer has handled every JOBS_DLQ entry."""
    deadline = time.monotonic() + timeout
    while True:
        info = await js.consumer_info(NAMES.dlq_stream, names.DLQ_CONSUMER)
        if not info.num_pending and not info.num_ack_pending:
            return
        assert time.monotonic() < deadline, info
        await asyncio.sleep(0.1)


async def test_reconciler_leaves_jobs_in_flight_or_waiting_for_a_retry(tmp_path: Path) -> None:
    """Held by a worker, or naked with a backoff: pending on the consumer, never a dead letter;
    given up by JetStream (max_deliver reached, advisory lost): failed once."""
    with private_server(tmp_path / "nats") as server:
        settings = fault_settings(server.url, tmp_path / "data", ack_wait_s=1.0, max_deliver=2)
        async with connected(settings) as nc:
            js = nc.jetstream()
            events = EventStore(nc, js, NAMES)
            await _capture(js, settings, on=False)
            reconciler = DeadLetterReconciler(events=events, js=js, settings=settings)
            jobs = [
                JobRequested(job_id=new_job_id(), kind="ingest", source="upload") for _ in "abc"
            ]
            for job in jobs:
                await events.request_job(job)
            sub = await js.pull_subscribe_bind(
                durable=names.worker_consumer("ingest"), stream=NAMES.stream
            )
            held, naked, dropped = await sub.fetch(3, timeout=5)
            await naked.nak(delay=60)

            async def heartbeat() -> None:  # `held` is kept by a live "worker" all along
                while True:
                    await held.in_progress()
                    await asyncio.sleep(0.2)

            beating = asyncio.create_task(heartbeat())
            try:
                assert await reconciler.reconcile() == []
                # `dropped` is delivered again and dropped by its "worker" each time; past its
                # last ack_wait, the next fetch makes JetStream give up on it.
                again = await sub.fetch(1, timeout=10)
                assert again[0].metadata.sequence.stream == dropped.metadata.sequence.stream
                with contextlib.suppress(TimeoutError):
                    assert await sub.fetch(1, timeout=3 * settings.ack_wait_s) == []
            finally:
                beating.cancel()
            info = await js.consumer_info(NAMES.stream, names.worker_consumer("ingest"))
            assert info.num_ack_pending == 2  # `dropped` is given up, the others are pending
            # Older deliveries are still pending, so the consumer has not settled past it: it
            # waits for them (docs/reliability.md, "Dead letters").
            assert await reconciler.reconcile() == []
            for msg, job in ((held, jobs[0]), (naked, jobs[1])):  # they finish, as workers do
                await events.append(
                    JobCompleted(job_id=job.job_id, kind="ingest", result=JobResult(), attempt=1)
                )
                # (nats-py counts the nak as an answer already: ack by the reply subject)
                await nc.request(msg.reply, b"+ACK", timeout=5)
            assert await reconciler.reconcile() == [jobs[2].job_id]
            assert await reconciler.reconcile() == []
            for job, ended in zip(jobs, ("JobCompleted", "JobCompleted", "JobFailed"), strict=True):
                history = [type(s.event).__name__ for s in await events.history(job.job_id)]
                assert history[1:] == [ended], history
