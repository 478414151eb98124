"""Webhook test kit: a real receiver on loopback that verifies every delivery with the PyPI
`standardwebhooks` library, settings with short retry schedules, the notifier in-process or
as a real `audioprep notifier` process, and job ends published through the event store."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import standardwebhooks
from litestar.testing import AsyncTestClient
from nats.aio.client import Client

from audioprep.domain.events import (
    ErrorInfo,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobRequested,
    JobResult,
)
from audioprep.shared.event_store import EventStore
from audioprep.shared.ids import new_job_id
from audioprep.shared.names import Names
from audioprep.shared.nats_server import free_port
from audioprep.shared.provision import provision
from audioprep.shared.settings import Settings
from tests.services import service_env
from tests.waiting import client_for, wait_until

# The webhooks suite has its own names on the shared nats-server (tests/services.py).
NAMES = Names("wh")

WEBHOOK_KEY = "webhook-test-key-0123456789abcdef0123"
_tenants = itertools.count(1)


# ---- the receiver ------------------------------------------------------------------------------


@dataclass
class Received:
    """One request as it arrived: raw body and headers, what the library said, what we answered."""

    body: bytes
    headers: dict[str, str]
    path: str
    status: int
    verified: bool
    error: str | None
    at: float

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A ThreadingHTTPServer on 127.0.0.1. `script` lists the statuses to answer, in order
    (then `default`); `secret` set: each request is verified with standardwebhooks."""

    port: int
    secret: str | None = None
    script: list[int] = field(default_factory=list)
    default: int = 200
    location: str | None = None  # sent with 3xx answers
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None
    thread: threading.Thread | None = None
    in_flight: int = 0
    last_arrival: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                with receiver.lock:
                    receiver.in_flight += 1
                    receiver.last_arrival = time.monotonic()
                try:
                    self._serve()
                finally:
                    with receiver.lock:
                        receiver.in_flight -= 1

            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                if len(body) < length:
                    return  # the sender died mid-request (a killed notifier): nobody to answer
                headers = {k.lower(): v for k, v in self.headers.items()}
                verified, error = receiver.verify(body, headers)
                with receiver.lock:
                    status = receiver.script.pop(0) if receiver.script else receiver.default
                    receiver.received.append(
                        Received(body, headers, self.path, status, verified, error, time.time())
                    )
                self.send_response(status)
                if receiver.location and 300 <= status < 400:
                    self.send_header("location", receiver.location)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    async def quiesce(self, settle_s: float = 0.3, timeout_s: float = 10.0) -> None:
        """Until every request that reached us is answered and none arrived for `settle_s`:
        after a notifier is killed, what it sent before dying is served with the status of
        that time, not with the one the test switches to next."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                idle = self.in_flight == 0 and time.monotonic() - self.last_arrival >= settle_s
            if idle:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"receiver still busy after {timeout_s} s")

    def verify(self, body: bytes, headers: dict[str, str]) -> tuple[bool, str | None]:
        if self.secret is None:
            return False, "no secret"
        try:
            standardwebhooks.Webhook(self.secret).verify(body, headers)
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"
        return True, None

    def snapshot(self) -> list[Received]:
        with self.lock:
            return list(self.received)

    def ok(self) -> list[Received]:
        return [r for r in self.snapshot() if 200 <= r.status < 300]

    async def wait_for(
        self, count: int, *, timeout: float = 15.0, ok: bool = False
    ) -> list[Received]:
        """Wait until `count` requests (or 2xx answers) arrived; every wait has a deadline."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.ok() if ok else self.snapshot()
            if len(got) >= count:
                return got
            await asyncio.sleep(0.02)
        raise AssertionError(f"receiver got {len(self.snapshot())} requests, wanted {count}")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(port=free_port()).start()
    yield r
    r.stop()


# ---- settings, API, notifier -------------------------------------------------------------------


def webhook_settings(base: Settings, **changes: Any) -> Settings:
    """One fresh tenant (its own API key) and short retry timings."""
    tenant = f"wh{next(_tenants)}x{os.getpid()}"
    settings = base.with_(
        names=NAMES,
        api_keys={f"key-{tenant}": tenant, f"other-{tenant}": f"{tenant}o"},
        webhook_secret_key=WEBHOOK_KEY,
        webhook_retry_schedule_s=(0.3, 0.3, 0.5),
        webhook_retry_for_s=60.0,
        webhook_ack_wait_s=2.0,
        webhook_timeout_s=1.0,
        log_level="WARNING",
    )
    return settings.with_(**changes) if changes else settings


def tenant_of(settings: Settings) -> str:
    return next(t for t in settings.api_keys.values() if not t.endswith("o"))


def auth(settings: Settings, *, other: bool = False) -> dict[str, str]:
    for key, tenant in settings.api_keys.items():
        if tenant.endswith("o") == other:
            return {"Authorization": f"Bearer {key}"}
    raise AssertionError("no key")


@pytest.fixture
async def wh(base_settings: Settings, nc: Client) -> Settings:
    settings = webhook_settings(base_settings)
    await provision(nc.jetstream(), settings)  # the suite's names; short ack_wait on consumers
    return settings


@contextlib.asynccontextmanager
async def api_client(settings: Settings) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    from audioprep.services.api.app import create_app

    async with AsyncTestClient(app=create_app(settings), timeout=30) as client:
        yield client


@contextlib.asynccontextmanager
async def notifier_task(settings: Settings) -> AsyncIterator[None]:
    """The notifier in this process (for tests that replace its DNS resolver)."""
    from audioprep.services.notifier.main import run_notifier

    stop = asyncio.Event()
    task = asyncio.create_task(run_notifier(settings, stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=20)


class NotifierProcess:
    """A real `audioprep notifier` in its own process group; its log goes to a file."""

    def __init__(self, settings: Settings, log_path: Path, extra_env: dict[str, str] | None = None):
        self.settings = settings
        self.log_path = log_path
        extra = {"AUDIOPREP_LOG_FORMAT": "json", "AUDIOPREP_METRICS_PORT": "0", **(extra_env or {})}
        self.env = service_env(settings, **extra)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> NotifierProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "audioprep.services.cli.main", "notifier"],
            env=self.env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if '"notifier ready"' in self.log_path.read_text()[offset:]:
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"notifier exited: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.02)
        raise AssertionError(f"notifier not ready: {self.log_path.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL, no goodbye."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            raise

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out


@pytest.fixture
def notifier_proc(wh: Settings, tmp_path: Path) -> Iterator[NotifierProcess]:
    proc = NotifierProcess(wh, tmp_path / "notifier.log").start()
    yield proc
    proc.stop()


# ---- job ends ----------------------------------------------------------------------------------


async def end_job(
    nc: Client,
    tenant: str,
    *,
    kind: str = "save",
    outcome: str = "completed",
    prepared_key: str | None = None,
) -> str:
    """A job that ends at once (JobRequested + its terminal event, as the API does for a
    render-cache hit), for tests about deliveries rather than media."""
    events = EventStore(nc, nc.jetstream(), NAMES)
    job_id = new_job_id()
    await events.request_job(
        # from_cache: a worker of this suite (test_delivery's stack) leaves it to this helper
        JobRequested(  # type: ignore[arg-type]
            job_id=job_id, kind=kind, tenant=tenant, source_key="x", format="wav", from_cache=True
        )
    )
    terminal: JobCompleted | JobFailed | JobCancelled
    if outcome == "completed":
        result = JobResult(prepared_key=prepared_key, format="wav", duration_ms=1000)
        terminal = JobCompleted(job_id=job_id, kind=kind, tenant=tenant, result=result)  # type: ignore[arg-type]
    elif outcome == "failed":
        error = ErrorInfo(code="corrupt_media", message="bad bytes")
        terminal = JobFailed(job_id=job_id, kind=kind, tenant=tenant, error=error)  # type: ignore[arg-type]
    else:
        terminal = JobCancelled(job_id=job_id, kind=kind, tenant=tenant)  # type: ignore[arg-type]
    assert await events.append_terminal(terminal) is not None
    return job_id


async def register(
    client: AsyncTestClient,  # type: ignore[type-arg]
    settings: Settings,
    url: str,
    **body: Any,
) -> dict[str, Any]:
    resp = await client.post("/api/webhooks", json={"url": url, **body}, headers=auth(settings))
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


async def wait_delivery(
    client: AsyncTestClient,  # type: ignore[type-arg]
    settings: Settings,
    webhook_id: str,
    *,
    status: str,
    count: int = 1,
    timeout: float = 15.0,
) -> list[dict[str, Any]]:
    """List the deliveries until `count` of them have `status`, again after each delivery event
    of the endpoint (tests.waiting)."""
    last: list[dict[str, Any]] = []

    async def check() -> list[dict[str, Any]] | None:
        nonlocal last
        resp = await client.get(f"/api/webhooks/{webhook_id}/deliveries", headers=auth(settings))
        assert resp.status_code == 200, resp.text
        last = resp.json()["deliveries"]
        matching = [d for d in last if d["status"] == status]
        return matching if len(matching) >= count else None

    subjects = [settings.names.endpoint_delivery_subjects(webhook_id)]
    try:
        nc = await client_for(settings)
        return await wait_until(nc, subjects, check, timeout=timeout, what="deliveries")
    except AssertionError:
        raise AssertionError(f"deliveries never reached {count}x {status}: {last}") from None
