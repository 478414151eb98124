"""`audioprep up`: nats-server + provisioning + API + projector + N workers, one command.

Every child runs in its own session, so the terminal's Ctrl-C (SIGINT to the whole foreground
process group) reaches only `up`, which then stops the children in order: the API stops
accepting requests (and the periodic storage gc stops), workers drain (in-flight jobs finish
within AUDIOPREP_DRAIN_GRACE_S or are handed back), then the projector, and nats-server last,
so nobody loses its NATS connection while it still has something to say.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from audioprep.services.cli.common import metrics_env, metrics_note
from audioprep.services.cli.run_services import provision_all
from audioprep.shared.nats_cluster import NatsCluster, default_ports, wait_for_jetstream
from audioprep.shared.nats_server import NatsServer, port_open
from audioprep.shared.settings import Settings

# SIGHUP too: the children are not in the terminal's process group any more, so a closed
# terminal only tells `up`.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
READY_TIMEOUT_S = 30.0
API_STOP_S = 15.0  # uvicorn's own graceful shutdown gives open connections 10 s
SERVICE_STOP_S = 15.0
WORKER_STOP_MARGIN_S = 15.0  # past the drain grace: the last fetch, the hand-back, a flush


class StopRequested(Exception):
    """A stop signal arrived while `up` was starting or waiting."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """INT, TERM and HUP handlers, installed explicitly (a background `up` inherits SIGINT as
    ignored). The first signal raises StopRequested where `up` is (starting or waiting); once
    the ordered stop has begun, a further signal calls `on_again` instead of interrupting it."""

    def __init__(self) -> None:
        self.stopping = False
        self.on_again: Callable[[], None] | None = None

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if not self.stopping:
            self.stopping = True
            raise StopRequested(signum)
        if self.on_again is not None:
            self.on_again()


@dataclass
class Child:
    role: str
    proc: subprocess.Popen[bytes]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int = signal.SIGTERM) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def wait(self, timeout: float) -> bool:
        """Wait for the exit; past the timeout kill its whole process group (media children
        included). True when it exited cleanly on its own."""
        try:
            code = self.proc.wait(timeout=max(0.0, timeout))
        except subprocess.TimeoutExpired:
            print(f"{self.role} did not stop within {timeout:.0f} s: killed", file=sys.stderr)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            return False
        # uvicorn re-raises the SIGTERM it handled once it has shut down: that is clean too.
        if code not in (0, -signal.SIGTERM):
            print(f"{self.role} exited with status {code}", file=sys.stderr)
            return False
        return True


def _spawn(role: str, env: dict[str, str], command: list[str] | None = None) -> Child:
    cmd = [sys.executable, "-m", "audioprep.services.cli.main", *(command or [role])]
    # Its own session: the terminal's SIGINT is not for it; `up` stops it at its turn.
    return Child(role, subprocess.Popen(cmd, env=env, start_new_session=True))


async def _provision_with_retry(settings: Settings, deadline_s: float = 30.0) -> None:
    """A fresh cluster may still be placing its meta leader: retry for a while."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + deadline_s
    while True:
        try:
            await provision_all(settings)
            return
        except Exception as exc:
            if loop.time() > give_up:
                raise
            print(f"provisioning not possible yet ({type(exc).__name__}); retrying…")
            await asyncio.sleep(1.0)


def _wait_ready(settings: Settings, children: list[Child]) -> list[Child]:
    """Poll until the API listens; the children that exited meanwhile (none = ready)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not port_open(settings.api_host, settings.api_port):
        dead = [c for c in children if not c.alive()]
        if dead:
            return dead
        if time.monotonic() > deadline:
            raise TimeoutError(f"the API did not listen on port {settings.api_port} in time")
        time.sleep(0.05)
    return []


def stop_in_order(children: list[Child], drain_grace_s: float) -> bool:
    """API (and gc) stop accepting → workers drain → projector → (the caller: nats-server).

    True when every child exited cleanly on its own."""
    by_role: dict[str, list[Child]] = {}
    for child in children:
        by_role.setdefault(child.role, []).append(child)
    front = by_role.get("api", []) + by_role.get("gc", [])
    workers = by_role.get("worker", [])
    back = by_role.get("projector", []) + by_role.get("notifier", [])  # webhooks
    for child in front + workers:
        child.signal()
    clean = True
    deadline = time.monotonic() + drain_grace_s + WORKER_STOP_MARGIN_S
    for child in workers:
        clean = child.wait(deadline - time.monotonic()) and clean
    deadline = time.monotonic() + API_STOP_S
    for child in front:
        clean = child.wait(deadline - time.monotonic()) and clean
    for child in back:
        child.signal()
    deadline = time.monotonic() + SERVICE_STOP_S
    for child in back:
        clean = child.wait(deadline - time.monotonic()) and clean
    return clean


def _hurry_workers(children: list[Child]) -> Callable[[], None]:
    def again() -> None:  # runs in a signal handler: os.write, not print (not reentrant)
        os.write(2, b"\nstop signal again: workers hand back their running jobs now\n")
        for child in children:
            if child.role == "worker":
                child.signal()

    return again


def _env(args: argparse.Namespace, data_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["AUDIOPREP_DATA_DIR"] = str(data_dir)
    env.setdefault("AUDIOPREP_LOG_FORMAT", "console")
    if args.port:
        env["AUDIOPREP_API_PORT"] = str(args.port)
    if not env.get("AUDIOPREP_SIGNING_SECRET"):
        # One secret shared by every process of this run; links die when `up` restarts.
        import secrets

        env["AUDIOPREP_SIGNING_SECRET"] = secrets.token_urlsafe(32)
        print("note: AUDIOPREP_SIGNING_SECRET not set; download links last only for this run")
    return env


def _nats(args: argparse.Namespace, data_dir: Path) -> NatsServer | NatsCluster | None:
    """The nats-server(s) to start (not started yet), or None with --nats-url."""
    if args.nats_url:
        return None
    if args.cluster:
        clients, routes = default_ports(args.nats_port)
        return NatsCluster(data_dir / "cluster", client_ports=clients, route_ports=routes)
    return NatsServer(data_dir / "nats", port=args.nats_port, log_file=data_dir / "nats-server.log")


def _start_nats(
    server: NatsServer | NatsCluster | None, args: argparse.Namespace, env: dict[str, str]
) -> None:
    if server is None:
        env["AUDIOPREP_NATS_URL"] = args.nats_url
        return
    server.start()
    env["AUDIOPREP_NATS_URL"] = server.url
    if isinstance(server, NatsCluster):
        env["AUDIOPREP_STREAM_REPLICAS"] = "3"
        asyncio.run(wait_for_jetstream(server.url))
        print(f"nats cluster  {server.url}  (3 nodes, stream replicas 3, {server.root})")
    else:
        print(f"nats-server   {server.url}  (store {server.store_dir}, log {server.log_file})")


def _busy_ports(settings: Settings, server: NatsServer | NatsCluster | None) -> str:
    """Ports we are about to listen on that something else holds (its answers would pass for
    ours), as a sentence; empty when all are free."""
    wanted = [("API", settings.api_host, settings.api_port)]
    nodes = server.nodes if isinstance(server, NatsCluster) else [server] if server else []
    wanted += [("nats-server", "127.0.0.1", node.port) for node in nodes]
    busy = [f"{what} port {port}" for what, host, port in wanted if port_open(host, port)]
    return f"{', '.join(busy)} already in use" if busy else ""


def _duration_arg(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds == int(seconds) else f"{seconds:.3f}s"


def _start_services(
    args: argparse.Namespace, env: dict[str, str], settings: Settings
) -> list[Child]:
    children = [_spawn("projector", metrics_env(env, 0)), _spawn("api", env)]
    for i in range(args.workers):
        children.append(_spawn("worker", metrics_env(env, i + 1)))
    children.append(_spawn("notifier", metrics_env(env, args.workers + 1)))  # webhooks
    if settings.gc_interval_s > 0:
        every = _duration_arg(settings.gc_interval_s)
        children.append(_spawn("gc", env, ["storage", "gc", "--yes", "--every", every]))
    return children


def _print_ready(args: argparse.Namespace, env: dict[str, str], settings: Settings) -> None:
    print(f"api           http://{settings.api_host}:{settings.api_port}  (OpenAPI: /schema)")
    print(f"workers       {args.workers} process(es); storage {settings.storage}")
    print(
        f"dispatch      {settings.dispatch} (AUDIOPREP_DISPATCH); one worker leads the dispatcher"
    )
    if settings.gc_interval_s > 0:
        print(
            f"storage gc    every {settings.gc_interval_s:g} s (AUDIOPREP_GC_INTERVAL_S; 0 = off)"
        )
    print(metrics_note(env, args.workers))
    print("ready — press Ctrl-C to stop", flush=True)


def _up(args: argparse.Namespace) -> int:
    signals = StopSignals()
    signals.install()
    data_dir = Path(args.data_dir or os.environ.get("AUDIOPREP_DATA_DIR", "./data")).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = _env(args, data_dir)
    planned = Settings.from_env(env)
    grace = planned.drain_grace_s
    server = _nats(args, data_dir)
    busy = _busy_ports(planned, server)
    if busy:
        print(f"audioprep up: {busy}; stop whatever uses it or pick other ports", file=sys.stderr)
        return 1
    children: list[Child] = []
    try:
        _start_nats(server, args, env)
        settings = Settings.from_env(env)
        asyncio.run(_provision_with_retry(settings))
        print(
            "provisioned   streams JOBS/WEBHOOKS, consumers workers-*/notifier-*, "
            "KV buckets jobs/render_cache/presets/webhook_endpoints/usage/scheduler"
        )
        children = _start_services(args, env, settings)
        dead = _wait_ready(settings, children)
        if not dead:
            _print_ready(args, env, settings)
        while not dead:
            time.sleep(0.5)
            dead = [c for c in children if not c.alive()]
        signals.stopping = True
        print(f"stopping: {', '.join(c.role for c in dead)} exited", file=sys.stderr)
        stop_in_order(children, grace)
        return 1
    except StopRequested:
        print(
            f"\nstopping: the API stops accepting, workers drain (up to {grace:g} s), "
            "then the projector and nats-server stop",
            flush=True,
        )
        signals.on_again = _hurry_workers(children)
        clean = stop_in_order(children, grace)
        print("stopped" if clean else "stopped (not every part stopped cleanly)", flush=True)
        return 0 if clean else 1
    except Exception as exc:  # startup failed: one line saying why, then stop what started
        signals.stopping = True
        print(f"audioprep up: {type(exc).__name__}: {exc}", file=sys.stderr)
        stop_in_order(children, grace)
        return 1
    finally:
        signals.stopping = True
        if server is not None:
            server.stop()  # last: everyone else is done with NATS


def register(commands: Any) -> None:
    p = commands.add_parser(
        "up",
        help="run everything locally: nats-server, API, projector and workers",
        description="Start nats-server (unless --nats-url), provision, then the API, the "
        "projector, N workers and a periodic storage gc (AUDIOPREP_GC_INTERVAL_S). Ctrl-C, "
        "SIGTERM or SIGHUP stops them in order: the API stops accepting, workers drain "
        "(AUDIOPREP_DRAIN_GRACE_S; a second Ctrl-C hands running jobs back at once), then the "
        "projector and nats-server.",
    )
    p.add_argument("--port", type=int, help="API port (default 8000)")
    p.add_argument("--data-dir", help="data dir: storage and NATS store (default ./data)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (0 = none)")
    p.add_argument("--nats-port", type=int, default=4222, help="port for the nats-server we start")
    p.add_argument("--nats-url", help="use a running NATS instead of starting one")
    p.add_argument(
        "--cluster",
        action="store_true",
        help="start a 3-node JetStream cluster (ports nats-port..+2, routes 6222..) with "
        "stream replicas 3 instead of one server",
    )
    p.set_defaults(func=_up)
