"""`audioprep up`: nats-server + provisioning + API + projector + N workers, one command."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from services.cli.common import metrics_env, metrics_note
from services.cli.run_services import provision_all
from shared.nats_cluster import NatsCluster, default_ports, wait_for_jetstream
from shared.nats_server import NatsServer, wait_for_port
from shared.settings import Settings


def _spawn(
    role: str, env: dict[str, str], extra: list[str] | None = None
) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "services.cli.main", role, *(extra or [])]
    return subprocess.Popen(cmd, env=env)


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


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _up(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops everything, like Ctrl-C
    data_dir = Path(args.data_dir or os.environ.get("AUDIOPREP_DATA_DIR", "./data")).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
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
    server: NatsServer | NatsCluster | None = None
    if args.nats_url:
        env["AUDIOPREP_NATS_URL"] = args.nats_url
    elif args.cluster:
        clients, routes = default_ports(args.nats_port)
        server = NatsCluster(data_dir / "cluster", client_ports=clients, route_ports=routes)
        server.start()
        env["AUDIOPREP_NATS_URL"] = server.url
        env["AUDIOPREP_STREAM_REPLICAS"] = "3"
        asyncio.run(wait_for_jetstream(server.url))
        print(f"nats cluster  {server.url}  (3 nodes, stream replicas 3, {data_dir / 'cluster'})")
    else:
        server = NatsServer(
            data_dir / "nats", port=args.nats_port, log_file=data_dir / "nats-server.log"
        )
        server.start()
        env["AUDIOPREP_NATS_URL"] = server.url
        print(f"nats-server   {server.url}  (store {data_dir / 'nats'}, log {server.log_file})")
    settings = Settings.from_env(env)
    asyncio.run(_provision_with_retry(settings))
    print("provisioned   stream JOBS, consumers workers-*, KV buckets jobs/render_cache")
    procs: list[tuple[str, subprocess.Popen[bytes]]] = [
        ("projector", _spawn("projector", metrics_env(env, 0))),
        ("api", _spawn("api", env)),
    ]
    for i in range(args.workers):
        procs.append((f"worker-{i + 1}", _spawn("worker", metrics_env(env, i + 1))))
    try:
        wait_for_port(settings.api_host, settings.api_port, timeout=30)
        print(f"api           http://{settings.api_host}:{settings.api_port}  (OpenAPI: /schema)")
        print(f"workers       {args.workers} process(es); storage {settings.storage}")
        print(metrics_note(env, args.workers))
        print("ready — press Ctrl-C to stop")
        while all(p.poll() is None for _, p in procs):
            time.sleep(0.5)
        dead = [name for name, p in procs if p.poll() is not None]
        print(f"stopping: {', '.join(dead)} exited", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping…")
        return 0
    finally:
        for _, p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for _, p in procs:
            try:
                p.wait(timeout=40)
            except subprocess.TimeoutExpired:
                p.kill()
        if server is not None:
            server.stop()


def register(commands: Any) -> None:
    p = commands.add_parser(
        "up",
        help="run everything locally: nats-server, API, projector and workers",
        description="Start nats-server (unless --nats-url), provision, then the API, the "
        "projector and N workers. Ctrl-C stops them all.",
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
