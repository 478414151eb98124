"""CPU per request of the API's ASGI app driven in-process (no sockets, no HTTP server), next to
the bare baseline app, on its own nats-server: the figure the profiles in bench/RESULTS.md are
about, free of the load generator and the server. Optionally a cProfile by CPU time.

python -m bench.inproc [--requests 9600] [--concurrency 32] [--profile save|poll|publish|const]
(`--tmpfs` puts the nats store in /dev/shm, so fsync waits don't shape the batching)
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import logging
import os
import pstats
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

from bench import api as bench_api
from bench.common import Env, bench_env, log, provision_env

ASGIApp = Callable[..., Awaitable[None]]


def _scope(method: str, path: str, body: bytes) -> dict[str, Any]:
    headers = [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"bench")]
    if body:
        headers += [(b"content-type", b"application/json")]
        headers += [(b"content-length", str(len(body)).encode())]
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1", "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5555),
        "scheme": "http", "method": method, "root_path": "", "path": path,
        "raw_path": path.encode(), "query_string": b"", "headers": headers, "state": {},
    }  # fmt: skip


async def _one(app: ASGIApp, method: str, path: str, body: bytes, statuses: dict[int, int]) -> None:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(msg: dict[str, Any]) -> None:
        if msg["type"] == "http.response.start":
            statuses[msg["status"]] = statuses.get(msg["status"], 0) + 1

    await app(_scope(method, path, body), receive, send)


async def drive(
    app: ASGIApp, requests: list[tuple[str, str, bytes]], n: int, concurrency: int,
    profile: cProfile.Profile | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Lifespan up, warm-up, then `n` requests `concurrency` at a time: CPU µs per request."""
    q_in: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    q_out: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await q_in.put({"type": "lifespan.startup"})
    life = asyncio.create_task(app({"type": "lifespan", "state": {}}, q_in.get, q_out.put))
    await q_out.get()
    statuses: dict[int, int] = {}

    async def worker(k: int, count: int) -> None:
        for i in range(count):
            method, path, body = requests[(k * count + i) % len(requests)]
            await _one(app, method, path, body, statuses)

    await asyncio.gather(*(worker(k, 30) for k in range(concurrency)))
    statuses.clear()
    per = n // concurrency
    c0, t0 = time.process_time(), time.perf_counter()
    if profile is not None:
        profile.enable()
    await asyncio.gather(*(worker(k, per) for k in range(concurrency)))
    if profile is not None:
        profile.disable()
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    await q_in.put({"type": "lifespan.shutdown"})
    await q_out.get()
    await life
    done = per * concurrency
    return {"requests": done, "cpu_us_per_req": round(cpu / done * 1e6, 1),
            "rps_wall": round(done / wall), "statuses": statuses}  # fmt: skip


def run(env: Env, n: int, concurrency: int, profile: str | None) -> dict[str, Any]:
    os.environ.update({k: v for k, v in env.env().items() if k.startswith("AUDIOPREP_")})
    from audioprep.services.api.app import create_app
    from audioprep.shared.logs import setup_logging
    from audioprep.shared.settings import Settings
    from bench.baseline_app import app as baseline

    settings = Settings.from_env()
    setup_logging("json", "INFO")
    logging.getLogger().handlers[0].setStream(open(os.devnull, "w"))  # noqa: SIM115
    source = asyncio.run(bench_api._put_source(env))
    body = json.dumps({"sourceKey": source, "recipe": {"gainDb": -3}, "format": "wav"}).encode()
    cases: dict[str, tuple[ASGIApp, list[tuple[str, str, bytes]]]] = {
        "save": (create_app(settings), [("POST", bench_api.SAVE_PATH, body)]),
        "publish": (baseline, [("POST", "/publish", body)]),
        "const": (baseline, [("GET", "/const", b"")]),
    }
    out: dict[str, Any] = {}
    for name in ("publish", "save"):
        app, reqs = cases[name]
        prof = cProfile.Profile(time.process_time) if profile == name else None
        out[name] = uvloop.run(drive(app, reqs, n, concurrency, prof))
        log(f"{name}: {out[name]}")
        if prof is not None:
            pstats.Stats(prof).sort_stats("tottime").print_stats(40)
    env.audioprep("projector")
    asyncio.run(bench_api._wait_projected(env, timeout=120))
    ids = asyncio.run(bench_api._job_ids(env, 1000))
    cases["poll"] = (create_app(settings), [("GET", f"/api/audio/jobs/{i}", b"") for i in ids])
    for name in ("const", "poll"):
        app, reqs = cases[name]
        prof = cProfile.Profile(time.process_time) if profile == name else None
        out[name] = uvloop.run(drive(app, reqs, n, concurrency, prof))
        log(f"{name}: {out[name]}")
        if prof is not None:
            pstats.Stats(prof).sort_stats("tottime").print_stats(40)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=9600)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--profile", choices=["save", "poll", "publish", "const"])
    parser.add_argument("--tmpfs", action="store_true")
    args = parser.parse_args()
    if args.tmpfs:
        os.makedirs("/dev/shm/audioprep-bench", exist_ok=True)
        os.environ["TMPDIR"] = "/dev/shm/audioprep-bench"
        import tempfile

        tempfile.tempdir = None
    with bench_env("inproc") as env:
        asyncio.run(provision_env(env))
        result = run(env, args.requests, args.concurrency, args.profile)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
