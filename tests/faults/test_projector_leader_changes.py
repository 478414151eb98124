"""Issue 20 scenario 3: two projectors under leader changes.

A 3-node cluster (replicas 3 for stream JOBS and every KV bucket), two `audioprep projector`
processes at once, and 500 jobs whose lifecycles go through the stream as the API, the
dispatcher and the workers write them (EventStore: create-once request, release, started,
progress, retrying, end-once completed / failed / cancelled), from three client connections.
Meanwhile, every 2 s, the leader of JOBS or of KV_jobs (the view's stream) steps down, and
twice the leader node is frozen (SIGSTOP): once shortly (a stall, no election), once past the
raft election timeout (a new leader is elected while the old one sleeps, then it wakes up).

Afterwards the view equals the stream's fold key for key (`audioprep projection rebuild
--check` exits 0), every job's view shows its one terminal event, no view was ever replaced by
an older one (a watch on KV_jobs saw each key's applied sequence only grow), both projectors
applied the whole stream, and their checkpoint is the stream's last sequence.

The load is generated rather than run by real workers: 500 media jobs would cost minutes on
two cores, and the projector sees only events (the worker's own fault tests run real workers).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx
import msgspec
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError

from audioprep.domain.events import (
    ErrorInfo,
    Event,
    JobCancelled,
    JobCancelRequested,
    JobCompleted,
    JobFailed,
    JobProgressed,
    JobReleased,
    JobRequested,
    JobResult,
    JobRetrying,
    JobStarted,
)
from audioprep.domain.kinds import Kind
from audioprep.domain.views import decode_view
from audioprep.services.projector.rebuild import read_bucket, rebuild
from audioprep.shared import names
from audioprep.shared.event_store import EventStore, JobAlreadyExists
from audioprep.shared.ids import new_job_id
from audioprep.shared.nats_cluster import NatsCluster, wait_for_jetstream
from audioprep.shared.nats_conn import connect, is_transient
from audioprep.shared.nats_server import REPO_ROOT, free_port
from audioprep.shared.settings import Settings
from tests.faults.harness import (
    NAMES,
    TERMINAL_TYPES,
    by_job,
    fault_settings,
    provision_when_ready,
    read_stream,
    retrying,
)
from tests.services import service_env
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

T = TypeVar("T")

JOBS = 500
LOAD_S = 17.0  # the jobs' starts are spread over this long: the faults' time
SHORT_PAUSE_S = 2.0  # a stall: shorter than the clients' 5 s request timeouts
LONG_PAUSE_S = 5.5  # past them (a KV write or publish times out, then may land after all),
# and into raft's 4-9 s election timeout: the others may elect a leader while it sleeps
CONNECTIONS = 3  # the load's clients (an API and two workers)
SEED = 20

JOBS_STREAM = NAMES.stream
VIEW_STREAM = names.kv_stream(NAMES.jobs_bucket)
# What happens while the load runs: (seconds after the previous fault ended, fault, whose
# leader). About every 2 s a leader change: a step-down, or a frozen leader node.
FAULTS: list[tuple[float, str, str, float]] = [
    (1.5, "stepdown", JOBS_STREAM, 0.0),
    (2.0, "stepdown", VIEW_STREAM, 0.0),
    (2.0, "pause", JOBS_STREAM, SHORT_PAUSE_S),
    (1.5, "stepdown", VIEW_STREAM, 0.0),
    (1.5, "pause", VIEW_STREAM, LONG_PAUSE_S),
    (1.5, "stepdown", JOBS_STREAM, 0.0),
]

STATUS_OF = {"JobCompleted": "completed", "JobFailed": "failed", "JobCancelled": "cancelled"}


# ---- the projectors -----------------------------------------------------------------------------


class ProjectorProcess:
    """`audioprep projector` as its own process, with its own metrics port (applied seq)."""

    def __init__(self, settings: Settings, log_dir: Path, n: int) -> None:
        self.settings = settings
        self.port = free_port()
        self.log = log_dir / f"projector-{n}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ProjectorProcess:
        env = service_env(self.settings, AUDIOPREP_METRICS_PORT=str(self.port))
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "audioprep.services.cli.main", "projector"],
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def applied_seq(self, client: httpx.AsyncClient) -> int:
        """The last stream sequence it applied (its /metrics), -1 when it doesn't answer."""
        try:
            resp = await client.get(f"http://127.0.0.1:{self.port}/metrics", timeout=3)
        except httpx.HTTPError:
            return -1
        for line in resp.text.splitlines():
            if line.startswith("audioprep_projector_applied_seq "):
                return int(float(line.split()[1]))
        return -1

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait()

    def count(self, text: str) -> int:
        return self.log.read_text(errors="replace").count(text) if self.log.exists() else 0

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


# ---- the load: job lifecycles as the API, the dispatcher and the workers write them -------------


@dataclass
class Load:
    """Runs JOBS lifecycles; remembers each job's planned ending and the publishes retried."""

    stores: list[EventStore]
    rng: random.Random = field(default_factory=lambda: random.Random(SEED))
    planned: dict[str, str] = field(default_factory=dict)  # job id -> terminal event type
    requested: set[str] = field(default_factory=set)  # acknowledged JobRequested
    retried: int = 0

    async def _patiently(self, call: Callable[[], Awaitable[T]], timeout: float = 60.0) -> T:
        """A service's publish: retried through elections and a frozen leader (as the worker
        and the dispatcher do), given up on only if it never goes through."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return await call()
            except Exception as exc:
                if not is_transient(exc) or time.monotonic() > deadline:
                    raise
                self.retried += 1
                await asyncio.sleep(0.1)

    async def _pace(self) -> None:
        await asyncio.sleep(self.rng.uniform(0.02, 0.12))

    async def _request(self, store: EventStore, request: JobRequested) -> int:
        try:
            return await self._patiently(lambda: store.request_job(request))
        except JobAlreadyExists:
            # our own earlier try landed although its answer was lost: find it
            async def first() -> int:
                found = await store.first_event(request.job_id)
                if found is None:
                    raise TimeoutError("request not readable yet")  # a replica behind
                return found.seq

            return await self._patiently(first)

    async def job(self, i: int) -> None:
        store = self.stores[i % len(self.stores)]
        job_id = new_job_id()
        kind: Kind = ("ingest", "preview", "save")[i % 3]
        request = JobRequested(
            job_id=job_id,
            kind=kind,
            source="upload" if kind == "ingest" else None,
            upload_key=f"uploads/{job_id}/take.wav" if kind == "ingest" else None,
            source_key=None if kind == "ingest" else f"sources/{job_id}/take.wav",
            recipe=None if kind == "ingest" else {"gainDb": -3.0},
            format=None if kind == "ingest" else "opus",
        )
        shape = i % 20  # 60 % complete, 15 % fail, 10 % retry then complete, 15 % cancelled
        ending = (
            "JobCompleted"
            if shape < 12 or shape in (15, 16)
            else "JobFailed"
            if shape < 15
            else "JobCancelled"
        )
        self.planned[job_id] = ending
        seq = await self._request(store, request)
        self.requested.add(job_id)
        await self._pace()

        def append(event: Event) -> Awaitable[int]:
            return self._patiently(lambda: store.append(event))

        def end(event: Event) -> Awaitable[int | None]:
            return self._patiently(lambda: store.append_terminal(event))

        if shape == 19:  # cancelled while waiting: the dispatcher ends it
            await append(JobCancelRequested(job_id=job_id, kind=kind, reason="user"))
            await self._pace()
            await end(JobCancelled(job_id=job_id, kind=kind, attempt=0))
            return
        release = JobReleased(job_id=job_id, kind=kind, request_seq=seq)
        await self._patiently(lambda: store.append_expecting(release, seq))
        await self._pace()
        worker = f"load:{i % CONNECTIONS}"
        await append(JobStarted(job_id=job_id, kind=kind, attempt=1, worker=worker))
        await self._pace()
        await append(JobProgressed(job_id=job_id, kind=kind, progress=30, stage="decoding"))
        attempt = 1
        if shape in (15, 16):  # a retryable error, then the next delivery completes it
            error = ErrorInfo(code="storage_timeout", message="slow storage", retryable=True)
            await append(
                JobRetrying(job_id=job_id, kind=kind, attempt=1, error=error, delay_ms=100)
            )
            await self._pace()
            attempt = 2
            await append(JobStarted(job_id=job_id, kind=kind, attempt=2, worker=worker))
        await self._pace()
        await append(
            JobProgressed(job_id=job_id, kind=kind, progress=70, stage="rendering", attempt=attempt)
        )
        await self._pace()
        if ending == "JobCompleted":
            result = JobResult(duration_ms=1000 + i, sample_rate=48000, channels=2)
            await end(JobCompleted(job_id=job_id, kind=kind, result=result, attempt=attempt))
        elif ending == "JobFailed":
            error = ErrorInfo(code="unsupported_media", message="not audio")
            await end(JobFailed(job_id=job_id, kind=kind, error=error, attempt=attempt))
        else:  # cancelled while running: the API asks, the worker stops and ends it
            await append(JobCancelRequested(job_id=job_id, kind=kind, reason="user"))
            await self._pace()
            await end(JobCancelled(job_id=job_id, kind=kind, attempt=attempt))

    async def run(self) -> None:
        """JOBS jobs, their starts spread evenly over LOAD_S."""
        started = time.monotonic()
        tasks = []
        for i in range(JOBS):
            delay = started + i * LOAD_S / JOBS - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self.job(i)))
        await asyncio.gather(*tasks)


# ---- faults: leader step-downs and a frozen leader node ----------------------------------------


async def leader_of(js: JetStreamContext, stream: str) -> str:
    cluster = (await js.stream_info(stream)).cluster
    if cluster is None or not cluster.leader:
        raise TimeoutError(f"{stream} has no leader yet")
    return str(cluster.leader)


async def step_down(nc: Client, stream: str, faults: Faults) -> None:
    """Ask the stream's leader to hand over (`nats stream cluster step-down`); while an
    election is still going on the server declines, and the request is made again."""
    deadline = time.monotonic() + 10
    while True:
        try:
            reply = await nc.request(names.stream_leader_stepdown_subject(stream), b"", timeout=2)
            if json.loads(reply.data or b"{}").get("success"):
                faults.stepdowns[stream] += 1
                return
        except NatsError:
            pass
        faults.refused += 1
        assert time.monotonic() < deadline, f"{stream}: no step-down for 10 s"
        await asyncio.sleep(0.25)


async def leader_after(js: JetStreamContext, stream: str, old: str, wait_s: float) -> str:
    """The stream's leader, waiting up to `wait_s` for it to be another than `old`."""
    deadline = time.monotonic() + wait_s
    while True:
        with contextlib.suppress(NatsError, TimeoutError):
            now = await leader_of(js, stream)
            if now != old or time.monotonic() > deadline:
                return now
        assert time.monotonic() < deadline + 20, f"{stream} has no leader"
        await asyncio.sleep(0.1)


@dataclass
class Faults:
    stepdowns: Counter[str] = field(default_factory=Counter)
    pauses: list[str] = field(default_factory=list)
    leader_changes: int = 0
    refused: int = 0  # step-downs the server declined (an election still going on)


async def make_faults(nc: Client, cluster: NatsCluster, faults: Faults) -> None:
    js = nc.jetstream(timeout=1)
    for gap, action, stream, pause_s in FAULTS:
        await asyncio.sleep(gap)
        leader = await retrying(lambda s=stream: leader_of(js, s), timeout=20)
        if action == "pause":
            node = cluster.node(leader)
            assert node.proc is not None
            os.kill(node.proc.pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(pause_s)
            finally:
                os.kill(node.proc.pid, signal.SIGCONT)
            faults.pauses.append(f"{stream}@{leader}:{pause_s}s")
            now = await leader_after(js, stream, leader, 0.0)  # whoever leads once it woke
        else:
            await step_down(nc, stream, faults)
            now = await leader_after(js, stream, leader, 5.0)
        faults.leader_changes += int(now != leader)


# ---- watching the view: no key ever goes back to an older fold ----------------------------------


@dataclass
class ViewWatch:
    """Every revision of KV_jobs as it is stored: per key, the applied sequence must grow."""

    last_seq: dict[str, int] = field(default_factory=dict)
    revisions: int = 0
    backwards: list[str] = field(default_factory=list)

    async def on_msg(self, msg: Msg) -> None:
        key = msg.subject.rsplit(".", 1)[1]
        self.revisions += 1
        if not msg.data:
            return  # a delete marker (nothing deletes views here)
        try:
            seq = decode_view(msg.data).seq
        except msgspec.DecodeError:
            self.backwards.append(f"{key}: undecodable view")
            return
        before = self.last_seq.get(key, 0)
        if seq < before:
            self.backwards.append(f"{key}: view of seq {seq} after {before}")
        self.last_seq[key] = max(seq, before)


async def watch_views(js: JetStreamContext, watch: ViewWatch) -> JetStreamContext.PushSubscription:
    return await js.subscribe(
        names.kv_subject(NAMES.jobs_bucket, ">"),
        stream=VIEW_STREAM,
        ordered_consumer=True,
        idle_heartbeat=1.0,  # noticed and recreated quickly after a step-down of KV_jobs
        cb=watch.on_msg,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
    )


# ---- the test -----------------------------------------------------------------------------------


async def _checkpoint(js: JetStreamContext) -> int:
    state = await js.key_value(NAMES.projector_state_bucket)
    try:
        return int((await state.get(names.PROJECTOR_CHECKPOINT_KEY)).value or b"0")
    except KeyNotFoundError:
        return 0


async def test_two_projectors_under_leader_changes(tmp_path: Path) -> None:
    started = time.monotonic()
    cluster = NatsCluster(tmp_path / "cluster").start()
    projectors: list[ProjectorProcess] = []
    conns: list[Client] = []
    try:
        await wait_for_jetstream(cluster.url)
        settings = fault_settings(cluster.url, tmp_path / "data", stream_replicas=3)
        await provision_when_ready(settings)
        projectors = [ProjectorProcess(settings, tmp_path, n).start() for n in (1, 2)]
        conns = [await connect(settings, f"load-{n}") for n in range(CONNECTIONS + 1)]
        nc, load_conns = conns[0], conns[1:]
        js = nc.jetstream(timeout=5)
        for stream in (JOBS_STREAM, VIEW_STREAM):
            assert (await js.stream_info(stream)).config.num_replicas == 3
        watch = ViewWatch()
        watcher = await watch_views(js, watch)
        load = Load([EventStore(c, c.jetstream(), NAMES) for c in load_conns])
        faults = Faults()
        load_started = time.monotonic()
        chaos = asyncio.create_task(make_faults(nc, cluster, faults))
        try:
            await load.run()
        finally:
            await chaos  # the plan ends with every node awake
        load_s = time.monotonic() - load_started

        # Both projectors apply the whole stream; their checkpoint says so.
        events = EventStore(nc, js, NAMES)
        last_seq = 0
        async with httpx.AsyncClient() as http:

            async def caught_up() -> list[int] | None:
                nonlocal last_seq
                dead = [p.logs() for p in projectors if not p.alive()]
                assert not dead, "a projector died:\n" + "\n".join(dead)
                last_seq = (await retrying(lambda: js.stream_info(JOBS_STREAM))).state.last_seq
                applied = [await p.applied_seq(http) for p in projectors]
                if min(applied) < last_seq or await retrying(lambda: _checkpoint(js)) < last_seq:
                    return None
                return applied

            try:
                applied = await wait_until(
                    None, [], caught_up, timeout=45, what="both projectors at the stream's end"
                )
            except AssertionError as exc:
                seen = [await p.applied_seq(http) for p in projectors]
                raise AssertionError(
                    f"{exc}: stream at {last_seq}, projectors at {seen}, checkpoint at "
                    f"{await _checkpoint(js)}\n" + "\n".join(p.logs() for p in projectors)
                ) from None
        await watcher.unsubscribe()

        # `audioprep projection rebuild --check`: the view equals the fold, key for key.
        check = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "audioprep.services.cli.main",
            "projection",
            "rebuild",
            "--check",
            "--quiet",
            cwd=REPO_ROOT,
            env=service_env(settings),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        check_out = (await asyncio.wait_for(check.communicate(), timeout=60))[0].decode()
        report = await rebuild(js, events, check_only=True)

        history = by_job(await read_stream(js))
        views = await read_bucket(nc, NAMES.jobs_bucket)
        lost, duplicates, mismatches, behind = [], [], [], []
        for job_id, planned in load.planned.items():
            stored = history.get(job_id, [])
            ends = [s for s in stored if type(s.event).__name__ in TERMINAL_TYPES]
            requests = [s for s in stored if isinstance(s.event, JobRequested)]
            current = views.get(job_id)
            if job_id not in load.requested or not requests or not ends or current is None:
                lost.append(job_id)
                continue
            if len(ends) > 1 or len(requests) > 1:
                duplicates.append(job_id)
            view = decode_view(current.value or b"")
            last_end = type(ends[-1].event).__name__
            if last_end != planned or view.status != STATUS_OF[last_end]:
                mismatches.append(f"{job_id}: planned {planned}, ended {last_end}, {view.status}")
            if view.seq != stored[-1].seq:
                behind.append(f"{job_id}: view at {view.seq}, last event {stored[-1].seq}")
        outcomes = Counter(STATUS_OF[p] for p in load.planned.values())
        alive = sum(p.alive() for p in projectors)
        print(
            f"\n[projector-leader-changes] jobs={len(load.planned)} events={last_seq} "
            f"stepdowns={sum(faults.stepdowns.values())} "
            f"(JOBS={faults.stepdowns[JOBS_STREAM]} KV_jobs={faults.stepdowns[VIEW_STREAM]}) "
            f"pauses={len(faults.pauses)} ({','.join(faults.pauses)}) "
            f"leader_changes={faults.leader_changes} refused={faults.refused} "
            f"mismatches={len(mismatches)} "
            f"diffs={len(report.differences)} lost={len(lost)} duplicates={len(duplicates)} "
            f"behind={len(behind)} backwards={len(watch.backwards)} "
            f"completed={outcomes['completed']} failed={outcomes['failed']} "
            f"cancelled={outcomes['cancelled']} view_revisions={watch.revisions} "
            f"publish_retries={load.retried} projectors_alive={alive} "
            f"applied={','.join(map(str, applied))} "
            f"write_retries={sum(p.count('view not written') for p in projectors)} "
            f"resubscribes={sum(p.count('resubscribing') for p in projectors)} "
            f"check_exit={check.returncode} setup_s={load_started - started:.1f} "
            f"load_s={load_s:.1f} "
            f"wall_s={time.monotonic() - started:.1f}"
        )
        logs = "\n".join(p.logs() for p in projectors)
        assert check.returncode == 0, f"{check_out}\n{logs}"
        assert f"view matches the stream: {JOBS} jobs" in check_out, check_out
        assert report.differences == [] and report.jobs == JOBS
        assert lost == [] and duplicates == [] and mismatches == [], (lost, duplicates, mismatches)
        assert behind == [] and watch.backwards == [], (behind, watch.backwards)
        assert alive == 2, logs
        assert faults.stepdowns[JOBS_STREAM] >= 2 and faults.stepdowns[VIEW_STREAM] >= 2, faults
        assert len(faults.pauses) == 2 and faults.leader_changes >= 4, faults
    finally:
        for node in cluster.nodes:  # never leave a frozen node behind
            if node.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(node.proc.pid, signal.SIGCONT)
        for p in projectors:
            p.stop()
        for c in conns:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(c.close(), timeout=5)
        cluster.stop()
