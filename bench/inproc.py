"""CPU per request of the API's ASGI app driven in-process (no sockets, no HTTP server), next to
the bare baseline app, on its own nats-server: the figure the profiles in bench/RESULTS.md are
about, free of the load generator and the server. Optionally a cProfile by CPU time.

python -m bench.inproc [--requests 9600] [--concurrency 32] [--profile save|poll|publish|const]
    [--only save|publish] [--reps 5]
(`--tmpfs` puts the nats store in /dev/shm, so fsync waits don't shape the batching)

python -m bench.inproc --before REV [--after REV2] [--reps 5]: save's CPU per request for the
API of git revision REV and of this tree (or REV2), alternating run by run (each run its own
process and nats-server, driven by this tree's bench code), next to the bare publish of the
same runs.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import logging
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop

from bench import api as bench_api
from bench.common import ROOT, Env, bench_env, cpu_seconds, log, provision_env

ASGIApp = Callable[..., Awaitable[None]]
NATS_PID: list[int] = []  # the run's nats-server: its CPU per request is reported too


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
    n0 = cpu_seconds(NATS_PID[0]) if NATS_PID else 0.0
    c0, t0 = time.process_time(), time.perf_counter()
    if profile is not None:
        profile.enable()
    await asyncio.gather(*(worker(k, per) for k in range(concurrency)))
    if profile is not None:
        profile.disable()
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    nats_cpu = cpu_seconds(NATS_PID[0]) - n0 if NATS_PID else 0.0
    await q_in.put({"type": "lifespan.shutdown"})
    await q_out.get()
    await life
    done = per * concurrency
    return {"requests": done, "cpu_us_per_req": round(cpu / done * 1e6, 1),
            "nats_cpu_us_per_req": round(nats_cpu / done * 1e6, 1),
            "rps_wall": round(done / wall), "statuses": statuses}  # fmt: skip


def _repeat(
    name: str, app: ASGIApp, reqs: list[tuple[str, str, bytes]], n: int, concurrency: int,
    reps: int, profile: str | None,
) -> dict[str, Any]:  # fmt: skip
    """`reps` runs of one case (each its own lifespan); the median run, with the CPU range."""
    runs = []
    for _ in range(reps):
        prof = cProfile.Profile(time.process_time) if profile == name else None
        runs.append(uvloop.run(drive(app, reqs, n, concurrency, prof)))
        log(f"{name}: {runs[-1]}")
        if prof is not None:
            pstats.Stats(prof).sort_stats("tottime").print_stats(40)
    cpu = sorted(r["cpu_us_per_req"] for r in runs)
    return runs[[r["cpu_us_per_req"] for r in runs].index(cpu[len(cpu) // 2])] | {
        "cpu_us_range": [cpu[0], cpu[-1]]
    }


def run(
    env: Env, n: int, concurrency: int, profile: str | None, only: str | None = None,
    reps: int = 1,
) -> dict[str, Any]:  # fmt: skip
    os.environ.update({k: v for k, v in env.env().items() if k.startswith("AUDIOPREP_")})
    from audioprep.services.api.app import create_app
    from audioprep.shared.logs import setup_logging
    from audioprep.shared.settings import Settings
    from bench.baseline_app import app as baseline

    if env.server.proc is not None:
        NATS_PID[:] = [env.server.proc.pid]
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
    names = ("publish", "save") if only in (None, "enqueue") else (only,)
    # Sides alternate rep by rep, so drift on the shared box hits both.
    raw: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for _ in range(reps):
        for name in names:
            app, reqs = cases[name]
            raw[name].append(_repeat(name, app, reqs, n, concurrency, 1, profile))
    for name, runs in raw.items():
        cpu = sorted(r["cpu_us_per_req"] for r in runs)
        median_run = next(r for r in runs if r["cpu_us_per_req"] == cpu[len(cpu) // 2])
        out[name] = median_run | {"cpu_us_range": [cpu[0], cpu[-1]]}
    if only is not None:
        return out
    env.audioprep("projector")
    asyncio.run(bench_api._wait_projected(env, timeout=120))
    ids = asyncio.run(bench_api._job_ids(env, 1000))
    cases["poll"] = (create_app(settings), [("GET", f"/api/audio/jobs/{i}", b"") for i in ids])
    for name in ("const", "poll"):
        app, reqs = cases[name]
        out[name] = _repeat(name, app, reqs, n, concurrency, reps, profile)
    return out


def _one_run(tree: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.inproc", "--requests", str(args.requests),
           "--concurrency", str(args.concurrency), "--reps", "1"]  # fmt: skip
    cmd += ["--tmpfs"] if args.tmpfs else []
    env = os.environ | {"PYTHONPATH": str(tree)}
    done = subprocess.run(cmd, cwd=tree, env=env, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def before_after(args: argparse.Namespace) -> dict[str, Any]:
    """Save (and the bare publish) for revision `args.before` and this tree, alternating."""
    from bench.ab import export_tree

    with tempfile.TemporaryDirectory(prefix="audioprep-inproc-ab-") as tmp:
        trees = {"before": Path(tmp) / "before", "after": Path(tmp) / "after"}
        for side, rev in (("before", args.before), ("after", args.after)):
            if rev is None:
                trees[side] = ROOT
                continue
            export_tree(rev, trees[side])
            shutil.rmtree(trees[side] / "bench")
            ignore = shutil.ignore_patterns("results", "__pycache__")
            shutil.copytree(ROOT / "bench", trees[side] / "bench", ignore=ignore)
        runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
        for _ in range(args.reps):
            for side, tree in trees.items():
                runs[side].append(_one_run(tree, args))
                r = runs[side][-1]
                log(f"{side}: save {r['save']['cpu_us_per_req']} µs, "
                    f"bare publish {r['publish']['cpu_us_per_req']} µs")  # fmt: skip
    out: dict[str, Any] = {"before": args.before, "after": args.after or "this tree"}
    for side, rs in runs.items():
        for case in ("save", "publish"):
            cpu = sorted(r[case]["cpu_us_per_req"] for r in rs)
            out[f"{side}_{case}_cpu_us"] = {
                "median": cpu[len(cpu) // 2],
                "range": [cpu[0], cpu[-1]],
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=9600)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--profile", choices=["save", "poll", "publish", "const"])
    parser.add_argument("--tmpfs", action="store_true")
    parser.add_argument(
        "--only", choices=["save", "publish", "enqueue"], help="just this case (enqueue: both)"
    )
    parser.add_argument("--reps", type=int, default=1, help="runs of each case (median, range)")
    parser.add_argument("--before", help="git revision: save before (that revision) vs after")
    parser.add_argument("--after", help="git revision for the after side (default: this tree)")
    args = parser.parse_args()
    if args.before:
        print(json.dumps(before_after(args), indent=1))
        return
    if args.tmpfs:
        os.makedirs("/dev/shm/audioprep-bench", exist_ok=True)
        os.environ["TMPDIR"] = "/dev/shm/audioprep-bench"
        import tempfile

        tempfile.tempdir = None
    with bench_env("inproc") as env:
        asyncio.run(provision_env(env))
        result = run(env, args.requests, args.concurrency, args.profile, args.only, args.reps)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
