"""Fault-test harness: a private nats-server, worker processes we can SIGKILL, stream audits.

Every fault test gets its own nats-server (own store dir and port), so killing or restarting
it disturbs nobody else; workers are real `python -m audioprep.services.cli.main worker`
processes in their own process group (SIGKILL takes their media children with them).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from litestar.testing import AsyncTestClient
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from audioprep.domain.events import JobCompleted, JobRequested, decode_event
from audioprep.services.worker.job_runner import sweep_dead_scratch
from audioprep.shared import keys, names
from audioprep.shared.event_store import EventStore, StoredEvent
from audioprep.shared.ids import new_job_id
from audioprep.shared.names import Names
from audioprep.shared.nats_conn import connect
from audioprep.shared.nats_server import REPO_ROOT, NatsServer
from audioprep.shared.provision import provision
from audioprep.shared.settings import Settings
from audioprep.shared.storage import Storage, open_storage
from tests.media import write_tone
from tests.services import service_env
from tests.waiting import close_clients, wait_until

NAMES = Names()  # the default prefix: what `audioprep up` uses

TERMINAL_TYPES = ("JobCompleted", "JobFailed", "JobCancelled")


def fault_settings(nats_url: str, data_dir: Path, **changes: object) -> Settings:
    """Short ack_wait so a killed worker's jobs come back in seconds, not a minute."""
    settings = Settings(
        nats_url=nats_url,
        data_dir=data_dir,
        storage_url=(data_dir / "storage").resolve().as_uri(),
        signing_secret="fault-secret",
        signing_secret_is_ephemeral=False,
        worker_concurrency=2,
        log_format="console",
        ack_wait_s=3.0,
        max_deliver=5,
        url_allow_hosts=frozenset({"127.0.0.1", "localhost"}),
    )
    return settings.with_(**changes)


class Workers:
    """Worker processes started by a test; SIGKILL one, SIGTERM the rest at the end."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.killed = 0

    def start(self, prefix: list[str] | None = None) -> subprocess.Popen[bytes]:
        """A new worker process; `prefix` runs it through a wrapper (`ip netns exec NS`)."""
        n = len(self.procs) + 1
        log = (self.log_dir / f"worker-{n}.log").open("ab")
        proc = subprocess.Popen(
            [*(prefix or []), sys.executable, "-m", "audioprep.services.cli.main", "worker"],
            cwd=REPO_ROOT,
            env=service_env(self.settings),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: SIGKILL reaches the media children
        )
        log.close()
        self.procs.append(proc)
        return proc

    def alive(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.procs if p.poll() is None]

    def by_pid(self, pid: int) -> subprocess.Popen[bytes] | None:
        return next((p for p in self.procs if p.pid == pid), None)

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL the worker and everything it started (a crashed machine, an OOM kill)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        self.killed += 1

    def stop_all(self, timeout: float = 20.0) -> None:
        for proc in self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            # reap anything left in its group (media children of a killed worker)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        sweep_dead_scratch()  # scratch dirs of the workers we SIGKILLed

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
            for p in sorted(self.log_dir.glob("worker-*.log"))
        )


@contextlib.contextmanager
def private_server(store: Path, *, port: int | None = None) -> Iterator[NatsServer]:
    server = NatsServer(store, port=port, log_file=store.parent / "nats-server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def connected(settings: Settings, *, provision_it: bool = True) -> AsyncIterator[Client]:
    nc = await connect(settings, "fault-test")
    try:
        if provision_it:
            await provision(nc.jetstream(), settings)
        yield nc
    finally:
        await close_clients(settings.nats_url)  # tests.waiting's wake-ups on this server
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), timeout=5)


# ---- jobs ---------------------------------------------------------------------------------------


@dataclass
class Sources:
    """Small generated media already in storage, to build jobs from."""

    storage: Storage
    tone: Path
    source_key: str


async def make_sources(settings: Settings, media_dir: Path, *, seconds: float = 1.0) -> Sources:
    storage = open_storage(settings.storage)
    tone = write_tone(media_dir / "tone.wav", seconds=seconds, freq=440.0)
    source_key = keys.source_key("default", new_job_id(), "tone.wav")
    await storage.put_file(source_key, tone)
    return Sources(storage=storage, tone=tone, source_key=source_key)


async def ingest_request(sources: Sources, *, path: Path | None = None) -> JobRequested:
    """An upload ingest, as the API would publish it (the upload already in storage)."""
    job_id = new_job_id()
    src = path or sources.tone
    upload = keys.upload_key("default", job_id, src.name)
    await sources.storage.put_file(upload, src)
    return JobRequested(
        job_id=job_id, kind="ingest", source="upload", upload_key=upload, filename=src.name
    )


def save_request(sources: Sources, fmt: str = "wav") -> JobRequested:
    return JobRequested(
        job_id=new_job_id(),
        kind="save",
        source_key=sources.source_key,
        recipe={"fadeInMs": 100, "gainDb": -3.0},
        format=fmt,
        filename="out",
    )


class Submitter:
    """POSTs uploads; remembers which were acknowledged (202) and what else came back."""

    def __init__(self, client: AsyncTestClient[Any], tone: Path) -> None:
        self.client = client
        self.tone = tone
        self.accepted: list[str] = []
        self.rejected: list[str] = []

    async def post(self) -> None:
        try:
            with self.tone.open("rb") as f:
                resp = await self.client.post(
                    "/api/audio/ingest", files={"file": ("tone.wav", f, "audio/wav")}
                )
        except Exception as exc:  # the client gave up: not acknowledged, the caller retries
            self.rejected.append(type(exc).__name__)
            return
        if resp.status_code == 202:
            self.accepted.append(resp.json()["jobId"])
        else:
            self.rejected.append(str(resp.status_code))

    async def burst(self, n: int) -> None:
        await asyncio.gather(*(self.post() for _ in range(n)))


# ---- a flaky HTTP source -----------------------------------------------------------------------


@contextlib.contextmanager
def flaky_http(body: bytes, failures: int = 1) -> Iterator[tuple[str, dict[str, int]]]:
    """A loopback HTTP source for URL ingests: `/flaky…` answers 503 to its first `failures`
    GETs, then `body`; `/down.wav` always 503; anything else 404. Yields the base URL and the
    GETs seen per path."""
    seen: dict[str, int] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen[self.path] = seen.get(self.path, 0) + 1
            flaky = self.path.startswith("/flaky")
            if self.path == "/down.wav" or (flaky and seen[self.path] <= failures):
                self._empty(503)
            elif not flaky:
                self._empty(404)
            else:
                self.send_response(200)
                self.send_header("Content-Type", "audio/wav")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        def _empty(self, status: int) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    finally:
        httpd.shutdown()
        httpd.server_close()


# ---- audits -------------------------------------------------------------------------------------


async def read_stream(js: JetStreamContext) -> list[StoredEvent]:
    """Every event in stream JOBS, in order (ordered consumer up to the current last seq)."""
    info = await js.stream_info(NAMES.stream)
    last = info.state.last_seq or 0
    out: dict[int, StoredEvent] = {}  # by seq: a retried create may deliver twice
    if last == 0:
        return []
    done = asyncio.Event()

    async def on_msg(msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        if seq <= last:
            out[seq] = StoredEvent(seq=seq, subject=msg.subject, event=decode_event(msg.data))
        if seq >= last:
            done.set()

    # Right after a node was killed the cluster may still be electing (a meta or stream
    # leader): the consumer create then times out, and is asked again.
    deadline = time.monotonic() + 30
    while True:
        try:
            sub = await js.subscribe(
                NAMES.stream_subjects,
                stream=NAMES.stream,
                ordered_consumer=True,
                cb=on_msg,
                config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
            )
            break
        except (TimeoutError, NatsError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
    try:
        await asyncio.wait_for(done.wait(), timeout=60)
    finally:
        await sub.unsubscribe()
    return [out[seq] for seq in sorted(out)]


def by_job(events: Iterable[StoredEvent]) -> dict[str, list[StoredEvent]]:
    out: dict[str, list[StoredEvent]] = {}
    for stored in events:
        out.setdefault(stored.event.job_id, []).append(stored)
    return out


@dataclass
class Tally:
    submitted: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    lost: int = 0
    duplicates: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    lost_ids: list[str] = field(default_factory=list)

    def line(self, name: str, **extra: object) -> str:
        more = " ".join(f"{k}={v}" for k, v in extra.items())
        codes = ",".join(f"{k}:{v}" for k, v in sorted(self.codes.items()))
        return (
            f"[{name}] submitted={self.submitted} completed={self.completed} "
            f"failed={self.failed} cancelled={self.cancelled} lost={self.lost} "
            f"duplicates={self.duplicates}"
            + (f" codes={codes}" if codes else "")
            + (f" {more}" if more else "")
        )


def tally(job_ids: Iterable[str], events: dict[str, list[StoredEvent]]) -> Tally:
    """Count outcomes; `duplicates` = terminal events beyond the first, over all jobs."""
    t = Tally()
    for job_id in job_ids:
        t.submitted += 1
        history = events.get(job_id, [])
        ends = [s.event for s in history if type(s.event).__name__ in TERMINAL_TYPES]
        completions = [e for e in ends if isinstance(e, JobCompleted)]
        t.duplicates += max(0, len(ends) - 1) + max(0, len(completions) - 1)
        if not ends:
            t.lost += 1
            t.lost_ids.append(job_id)
            continue
        first = type(ends[0]).__name__
        if first == "JobCompleted":
            t.completed += 1
        elif first == "JobFailed":
            t.failed += 1
            code = getattr(ends[0], "error").code  # noqa: B009
            t.codes[code] = t.codes.get(code, 0) + 1
        else:
            t.cancelled += 1
    return t


async def wait_terminal(events: EventStore, job_ids: Iterable[str], *, timeout: float) -> set[str]:
    """Wait until every job has a terminal event (or the deadline), looking again after each
    terminal event on the stream (tests.waiting); returns the unfinished."""
    waiting = list(job_ids)

    async def check() -> bool | None:
        nonlocal waiting
        found = await asyncio.gather(
            *(events.terminal_event(j) for j in waiting), return_exceptions=True
        )
        waiting = [j for j, f in zip(waiting, found, strict=True) if not isinstance(f, StoredEvent)]
        return True if not waiting else None

    with contextlib.suppress(AssertionError):  # the deadline: report who is left
        subjects = events.names.terminal_filters()
        await wait_until(events.nc, subjects, check, timeout=timeout, what="terminal events")
    return set(waiting)


# ---- issue 20: volumes, audits with lost/stuck/server errors ------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, size_mb: int) -> Iterator[Path]:
    """A small tmpfs at `path` (root only: skipped loudly otherwise); unmounted afterwards."""
    import pytest

    if os.geteuid() != 0:
        pytest.skip(f"SKIPPED LOUDLY: mounting a {size_mb} MB tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)], check=True
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill_volume(path: Path) -> int:
    """Write one file at `path` until the volume answers ENOSPC; returns the bytes written."""
    written = 0
    with path.open("wb", buffering=0) as out:
        for size in (1024 * 1024, 4096, 1):
            block = b"\0" * size
            while True:
                try:
                    written += out.write(block) or 0
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    return written


@dataclass
class Audit:
    """What a fault test prints: every figure that must be zero, and the outcomes.

    lost — acknowledged (202) jobs whose JobRequested is not in the stream;
    stuck — requested jobs without a terminal event after the wait;
    duplicates — JobRequested, terminal events and JobCompleted beyond the first, per job;
    server_errors — HTTP answers that were 500 (or any 5xx not in the expected set).
    """

    accepted: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    lost: int = 0
    stuck: int = 0
    duplicates: int = 0
    server_errors: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    lost_ids: list[str] = field(default_factory=list)
    stuck_ids: list[str] = field(default_factory=list)

    def line(self, name: str, **extra: object) -> str:
        codes = ",".join(f"{k}:{v}" for k, v in sorted(self.codes.items()))
        more = " ".join(f"{k}={v}" for k, v in extra.items())
        return (
            f"[{name}] accepted={self.accepted} completed={self.completed} failed={self.failed}"
            + (f" codes={codes}" if codes else "")
            + f" lost={self.lost} duplicates={self.duplicates} stuck={self.stuck}"
            f" server_errors={self.server_errors}" + (f" {more}" if more else "")
        )

    def assert_clean(self) -> None:
        assert self.lost == 0, f"lost: {self.lost_ids}"
        assert self.stuck == 0, f"stuck: {self.stuck_ids}"
        assert self.duplicates == 0, self
        assert self.server_errors == 0, self


def audit(
    accepted: Iterable[str], events: dict[str, list[StoredEvent]], *, server_errors: int = 0
) -> Audit:
    a = Audit(server_errors=server_errors)
    for job_id in dict.fromkeys(accepted):
        a.accepted += 1
        history = [s.event for s in events.get(job_id, [])]
        requested = [e for e in history if isinstance(e, JobRequested)]
        ends = [e for e in history if type(e).__name__ in TERMINAL_TYPES]
        completions = [e for e in ends if isinstance(e, JobCompleted)]
        a.duplicates += max(0, len(requested) - 1) + max(0, len(ends) - 1)
        a.duplicates += max(0, len(completions) - 1)
        if not requested:
            a.lost += 1
            a.lost_ids.append(job_id)
        elif not ends:
            a.stuck += 1
            a.stuck_ids.append(job_id)
        elif isinstance(ends[0], JobCompleted):
            a.completed += 1
        elif type(ends[0]).__name__ == "JobFailed":
            a.failed += 1
            code = getattr(ends[0], "error").code  # noqa: B009
            a.codes[code] = a.codes.get(code, 0) + 1
        else:
            a.cancelled += 1
    return a


async def provision_when_ready(settings: Settings, timeout: float = 30.0) -> None:
    """A fresh cluster can refuse R3 assets for a moment (peers still joining): retry."""
    nc = await connect(settings, "fault-test")
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                await provision(nc.jetstream(), settings)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
    finally:
        await nc.close()


async def retrying(call: Any, *, timeout: float = 30.0, pause: float = 0.25) -> Any:
    """`await call()` until it succeeds (a test's own admin request during an election)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await call()
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(pause)


class ApiProcess:
    """`audioprep api` as its own process (uvicorn), for tests that need concurrent requests
    or an API on another "host". `prefix` runs it through a wrapper (`ip netns exec NS`)."""

    def __init__(
        self,
        settings: Settings,
        log_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        prefix: list[str] | None = None,
        name: str = "api",
    ) -> None:
        from audioprep.shared.nats_server import free_port

        self.settings = settings
        self.host = host
        self.port = port or free_port()
        self.log = log_dir / f"{name}.log"
        self.prefix = prefix or []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> ApiProcess:
        env = service_env(self.settings)
        env.update(AUDIOPREP_API_HOST=self.host, AUDIOPREP_API_PORT=str(self.port))
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*self.prefix, sys.executable, "-m", "audioprep.services.cli.main", "api"],
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    async def ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=2) as client:
            while True:
                assert self.proc is not None and self.proc.poll() is None, self.logs()
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.url}/healthz")).status_code == 200:
                        return
                assert time.monotonic() < deadline, f"API not up\n{self.logs()}"
                await asyncio.sleep(0.1)

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


class KeyedClient:
    """POSTs one upload under one Idempotency-Key until a 202, honouring Retry-After: the
    client issue 20 asks for (a 503 is retried with the same key; anything else fails)."""

    def __init__(self, client: Any, tone: bytes, *, retry_for_s: float = 45.0) -> None:
        self.client = client
        self.tone = tone
        self.retry_for_s = retry_for_s
        self.statuses: Counter[int] = Counter()
        self.codes: Counter[str] = Counter()
        self.retry_after_missing = 0
        self.answers: dict[str, list[str]] = {}  # key → job ids of its 202s
        self.accepted_at: list[float] = []  # time.monotonic() of each 202

    def longest_gap_s(self, since: float) -> float:
        """The longest time without a 202 after `since` (until the last one)."""
        times = [since, *sorted(t for t in self.accepted_at if t > since)]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    async def post(self, key: str, *, pause_s: float = 0.25) -> None:
        deadline = time.monotonic() + self.retry_for_s
        while True:
            try:
                resp = await self.client.post(
                    "/api/audio/ingest",
                    files={"file": (f"{key}.wav", self.tone, "audio/wav")},
                    headers={"Idempotency-Key": key},
                )
            except httpx.HTTPError as exc:  # the connection gave up: not acknowledged, retry
                self.codes[type(exc).__name__] += 1
                assert time.monotonic() < deadline, f"{key}: no 202 within {self.retry_for_s}s"
                await asyncio.sleep(pause_s)
                continue
            self.statuses[resp.status_code] += 1
            if resp.status_code == 202:
                self.answers.setdefault(key, []).append(resp.json()["jobId"])
                self.accepted_at.append(time.monotonic())
                return
            self.codes[resp.json().get("code", "?")] += 1
            assert resp.status_code == 503, resp.text  # never a 500, never a 4xx
            retry_after = resp.headers.get("retry-after")
            if retry_after is None or int(retry_after) < 1:
                self.retry_after_missing += 1
            assert time.monotonic() < deadline, f"{key}: no 202 within {self.retry_for_s}s"
            # A real client sleeps Retry-After (1 s); the test retries sooner to press on.
            await asyncio.sleep(pause_s)


async def step_down(nc: Client, stream: str, *, timeout: float = 10.0) -> int:
    """Ask a clustered stream's leader to hand over (`nats stream cluster step-down`), asking
    again while an election still runs (the server declines then); returns the refusals."""
    deadline = time.monotonic() + timeout
    refused = 0
    while True:
        try:
            reply = await nc.request(names.stream_leader_stepdown_subject(stream), b"", timeout=2)
            if json.loads(reply.data or b"{}").get("success"):
                return refused
        except NatsError:
            pass
        refused += 1
        assert time.monotonic() < deadline, f"{stream}: no step-down for {timeout} s"
        await asyncio.sleep(0.1)
