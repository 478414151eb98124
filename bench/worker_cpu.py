"""CPU per ingest job, by process: the worker's own (event loop: NATS, storage, dispatcher,
logging), its media children (through the forkserver) and nats-server's — the figure the shared
box moves least (throughput here depends on whatever else runs).

python -m bench.worker_cpu [--jobs 48] [--reps 3] [--seconds 3] [--workers 1]
python bench/worker_cpu.py --tree /path/to/old/checkout   (the same measurement of another
revision: only `bench.common` and `bench.workers` of that tree are used, which every revision
since 2026-11-25 has)
→ bench/results/worker_cpu.json (this tree only)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import inspect
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __name__ == "__main__" and "--tree" in sys.argv:  # import the other tree's bench helpers
    sys.path.insert(0, sys.argv[sys.argv.index("--tree") + 1])
    sys.path.remove(str(Path(__file__).resolve().parent))

from bench.common import bench_env, log, provision_env, start_http_app
from bench.workers import fresh_uploads, put_upload, run_batch, warm_up

TICK = os.sysconf("SC_CLK_TCK")
NOT_CPU = ("wall_ms", "jobs_per_s", "idle_share", "_span_s")
OURS = ("worker", "media", "nats", "dispatcher", "api", "projector", "client")  # all we run


def proc_cpu(pid: int) -> tuple[float, float]:
    """(own, descendants) CPU seconds: own = utime + stime; descendants = reaped children
    (cutime + cstime) plus every live descendant's own and reaped time."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        children = []
        for task in os.listdir(f"/proc/{pid}/task"):  # a thread's children are listed by it
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children += [int(c) for c in f.read().split()]
    except OSError:
        return 0.0, 0.0
    own = (int(fields[11]) + int(fields[12])) / TICK
    reaped = (int(fields[13]) + int(fields[14])) / TICK
    live = sum(sum(proc_cpu(c)) for c in children)
    return own, reaped + live


def machine_cpu() -> tuple[float, float]:
    """(busy, idle) CPU seconds of the whole machine so far, from /proc/stat (idle includes
    iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / TICK, idle / TICK


def snapshot(workers: list[int], server: int, extras: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far: workers (own, media children), nats-server, each extra process
    (dispatcher, api, projector), this process, and the machine."""
    own = desc = 0.0
    for pid in workers:
        o, d = proc_cpu(pid)
        own, desc = own + o, desc + d
    out = {"worker": own, "media": desc, "nats": sum(proc_cpu(server))}
    for name, pid in extras.items():
        out[name] = sum(proc_cpu(pid))
    # The bench's own process: it publishes the requests and follows the events.
    times = os.times()
    out["client"] = times.user + times.system
    out["machine"], out["_idle"] = machine_cpu()
    return out


def measure(
    jobs: int,
    reps: int,
    seconds: float,
    workers: int,
    env_extra: dict[str, str],
    profile: str | None = None,
    cprofile: str | None = None,
    dispatcher_apart: bool = False,
    stack: bool = False,
) -> Any:
    with bench_env("worker-cpu") as env:
        if "AUDIOPREP_DISPATCH" in env_extra:  # the consumers' filter follows the mode
            mode = env_extra["AUDIOPREP_DISPATCH"]
            env.settings = dataclasses.replace(env.settings, dispatch=mode)
        asyncio.run(provision_env(env))
        upload_key = asyncio.run(put_upload(env, seconds))
        names = [f"worker-cpu-{i}" for i in range(workers)]
        extras: dict[str, int] = {}
        if dispatcher_apart:  # leads before any worker starts: its CPU is counted on its own
            extras["dispatcher"] = env.audioprep(
                "dispatcher", log_name="dispatcher", **env_extra
            ).pid
            time.sleep(3.0)
        api = ""
        if stack:  # as deployed: uploads POSTed to the API, a projector folding every event
            extras["projector"] = env.audioprep("projector", **env_extra).pid
            api, api_proc = start_http_app(env, "api", "/healthz")
            extras["api"] = api_proc.pid
            wav = (env.tmp / "upload.wav").read_bytes()
        if cprofile:  # the worker's own process under cProfile with a CPU clock
            cmd = [sys.executable, "-m", "bench.worker_cpu", "--profiled-worker", cprofile]
            procs = [
                env.spawn([*cmd, str(i)], log_name=n, **env_extra) for i, n in enumerate(names)
            ]
        else:
            procs = [
                env.audioprep("worker", "--concurrency", "1", log_name=n, **env_extra)
                for n in names
            ]
        warm_up(env, upload_key, names, per_worker=3)
        server = env.server.proc.pid if env.server.proc else 0
        pids = [p.pid for p in procs]
        # What the processes burn with nothing to do (fetch loops, leases, reconciler).
        s0 = snapshot(pids, server, extras)
        time.sleep(3.0)
        s1 = snapshot(pids, server, extras)
        idle_per_s = {k: (s1[k] - s0[k]) / 3.0 for k in s0 if not k.startswith("_")}
        spies = []
        if profile:  # py-spy on each worker's own process, CPU samples only (not idle waits)
            spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
            for i, pid in enumerate(pids):
                out = Path(profile) / f"worker-{i}.txt"
                cmd = [spy, "record", "--gil", "-p", str(pid), "-r", "500", "-f", "raw"]
                cmd += ["-o", str(out)]
                quiet = subprocess.DEVNULL
                spies.append(subprocess.Popen(cmd, stdout=quiet, stderr=quiet))
            time.sleep(1.0)
        if stack:
            asyncio.run(upload_batch(env, api, wav, 4))  # the API's first requests
        runs = []
        for _ in range(reps):
            uploads = [] if stack else asyncio.run(fresh_uploads(env, upload_key, jobs))
            a = snapshot(pids, server, extras)
            t0 = time.perf_counter()
            if stack:
                elapsed = asyncio.run(upload_batch(env, api, wav, jobs))
            elif "uploads" in inspect.signature(run_batch).parameters:
                elapsed = asyncio.run(run_batch(env, upload_key, jobs, uploads))
            else:  # an older tree's bench (--tree): it copies its uploads inside the batch
                elapsed = asyncio.run(run_batch(env, upload_key, jobs))
            wall = time.perf_counter() - t0
            b = snapshot(pids, server, extras)
            per_job = {k: (b[k] - a[k]) / jobs * 1000 for k in a if not k.startswith("_")}
            ours = sum(v for k, v in per_job.items() if k != "machine")
            # Whatever else ran meanwhile (kernel threads, other engineers' processes).
            per_job["other"] = per_job["machine"] - ours
            per_job["wall_ms"] = elapsed / jobs * 1000
            per_job["jobs_per_s"] = jobs / elapsed
            busy, idle = b["machine"] - a["machine"], b["_idle"] - a["_idle"]
            per_job["idle_share"] = idle / max(1e-9, busy + idle)
            per_job["_span_s"] = wall
            runs.append(per_job)
            cpu = [k for k in per_job if k not in NOT_CPU]
            log(
                "CPU per job: "
                + ", ".join(f"{k} {per_job[k]:.1f}" for k in cpu)
                + f" ms; wall {per_job['wall_ms']:.1f} ms/job = {per_job['jobs_per_s']:.1f} jobs/s,"
                f" cores {per_job['idle_share']:.0%} idle"
            )
        for spy_proc in spies:
            spy_proc.send_signal(2)
            spy_proc.wait(30)
    keys = [k for k in runs[0] if not k.startswith("_")]
    med = {k: statistics.median(r[k] for r in runs) for k in keys}
    spread = {k: (min(r[k] for r in runs), max(r[k] for r in runs)) for k in keys}
    return {
        "jobs": jobs,
        "reps": reps,
        "workers": workers,
        "per_job_ms": {k: round(v, 2) for k, v in med.items()},
        "spread_ms": {k: [round(x, 2) for x in v] for k, v in spread.items()},
        "total_ms": round(med["worker"] + med["media"] + med.get("dispatcher", 0), 2),
        "ours_ms": round(sum(med[k] for k in med if k in OURS), 2),
        "idle_ms_per_s": {k: round(v * 1000, 2) for k, v in idle_per_s.items()},
        "runs": runs,
    }


async def upload_batch(env: Any, api: str, wav: bytes, size: int, in_flight: int = 8) -> float:
    """`size` ingest uploads POSTed to the API (`in_flight` at a time); seconds until the last
    one completed (its terminal event)."""
    import httpx

    from audioprep.shared.nats_conn import connect
    from bench.workers import Outcomes

    nc = await connect(env.settings, "bench-upload")
    try:
        outcomes = Outcomes()
        await outcomes.subscribe(nc)
        ids: set[str] = set()
        gate = asyncio.Semaphore(in_flight)
        async with httpx.AsyncClient(base_url=api, timeout=60) as client:

            async def post() -> None:
                async with gate:
                    files = {"file": ("tone.wav", wav, "audio/wav")}
                    resp = await client.post("/api/audio/ingest", files=files)
                    if resp.status_code != 202:
                        raise RuntimeError(f"upload answered {resp.status_code}: {resp.text}")
                    ids.add(resp.json()["jobId"])

            t0 = time.perf_counter()
            await asyncio.gather(*(post() for _ in range(size)))
            await outcomes.wait(lambda: ids <= outcomes.ended.keys(), timeout=300)
        bad = [outcomes.ended[i][1] for i in ids if outcomes.ended[i][1] != "completed"]
        if bad:
            raise RuntimeError(f"{len(bad)} uploads did not complete: {bad[:3]}")
        return max(outcomes.ended[i][0] for i in ids) - t0
    finally:
        await nc.close()


def profiled_worker(out: str, index: str) -> None:
    """`audioprep worker --concurrency 1` under cProfile (CPU clock); stats written at exit."""
    import cProfile

    from audioprep.services.cli.main import main as cli

    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    try:
        cli(["worker", "--concurrency", "1"])
    finally:
        profiler.disable()
        profiler.dump_stats(str(Path(out) / f"worker-{index}.prof"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=48)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--tree", help="measure another checkout (see the docstring)")
    parser.add_argument("--profile", metavar="DIR", help="py-spy raw profiles of the workers")
    parser.add_argument("--cprofile", metavar="DIR", help="cProfile stats of the workers")
    parser.add_argument(
        "--dispatcher-apart", action="store_true", help="the dispatcher in its own process"
    )
    parser.add_argument(
        "--stack", action="store_true", help="uploads through the API, a projector running"
    )
    parser.add_argument("--profiled-worker", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the workers")
    args = parser.parse_args()
    if args.profiled_worker:
        profiled_worker(*args.profiled_worker)
        return
    extra = dict(e.split("=", 1) for e in args.env)
    result = measure(
        args.jobs,
        args.reps,
        args.seconds,
        args.workers,
        extra,
        args.profile,
        args.cprofile,
        args.dispatcher_apart,
        args.stack,
    )
    if not args.tree:
        from bench.common import write_result

        write_result("worker_cpu", result)
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))


if __name__ == "__main__":
    main()
