"""`audioprep api|worker|projector|provision`: run one part against an existing NATS."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from audioprep.shared.logs import setup_logging
from audioprep.shared.settings import Settings


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env()
    if getattr(args, "nats_url", None):
        settings = settings.with_(nats_url=args.nats_url)
    if getattr(args, "port", None):
        settings = settings.with_(api_port=args.port)
    if getattr(args, "concurrency", None):
        settings = settings.with_(worker_concurrency=args.concurrency)
    if getattr(args, "replicas", None):
        settings = settings.with_(stream_replicas=args.replicas)
    setup_logging(settings.log_format, settings.log_level)
    return settings


def run_api(settings: Settings) -> None:
    import uvicorn

    from audioprep.services.api.app import create_app

    uvicorn.run(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        access_log=False,
        loop="uvloop",
        http="httptools",
        timeout_graceful_shutdown=10,
    )


def _api(args: argparse.Namespace) -> int:
    run_api(_settings(args))
    return 0


def _worker(args: argparse.Namespace) -> int:
    from audioprep.services.worker.main import main

    asyncio.run(main(_settings(args)))
    return 0


def _dispatcher(args: argparse.Namespace) -> int:
    from audioprep.services.worker.main import dispatcher_main

    asyncio.run(dispatcher_main(_settings(args)))
    return 0


def _projector(args: argparse.Namespace) -> int:
    import uvloop  # like the API: ~15 % less CPU per event than asyncio's loop (bench/RESULTS.md)

    from audioprep.services.projector.main import main

    uvloop.run(main(_settings(args)))
    return 0


async def provision_all(settings: Settings) -> None:
    from audioprep.shared.nats_conn import connect
    from audioprep.shared.provision import provision

    nc = await connect(settings, "provision")
    try:
        await provision(nc.jetstream(), settings)
    finally:
        await nc.close()


def _provision(args: argparse.Namespace) -> int:
    settings = _settings(args)
    asyncio.run(provision_all(settings))
    from audioprep.shared.nats_conn import redact_url

    print(f"provisioned stream JOBS, consumers and KV buckets on {redact_url(settings.nats_url)}")
    return 0


def register(commands: Any) -> None:
    for name, func, help_text in (
        ("api", _api, "run the HTTP API (Litestar) against AUDIOPREP_NATS_URL"),
        ("worker", _worker, "run one worker process (ingest, preview and save jobs)"),
        ("projector", _projector, "run the projector (stream JOBS → KV bucket jobs)"),
        (
            "dispatcher",
            _dispatcher,
            "run only the fair dispatcher (every worker runs one too; one leads at a time)",
        ),
        ("provision", _provision, "create/update the stream, consumers and KV buckets"),
    ):
        p = commands.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--nats-url", help="NATS server URL (default: AUDIOPREP_NATS_URL)")
        if name == "api":
            p.add_argument("--port", type=int, help="HTTP port (default: AUDIOPREP_API_PORT)")
        if name == "worker":
            p.add_argument("--concurrency", type=int, help="jobs at once (default: CPU cores)")
        if name == "provision":
            p.add_argument("--replicas", type=int, help="stream replicas (3 in a cluster)")
        p.set_defaults(func=func)
