"""Rows 3 and 5: dispatch latency (JobRequested published → JobStarted by an idle worker) and
ingest scale-out over 1, 2 and 4 worker processes on a fixed batch of upload jobs.

python -m bench.workers [--dispatches 50] [--batch 48] [--seconds 3]
→ bench/results/workers.json
The dispatch baseline is a bare pull consumer (`--bare-worker`): fetch(1), publish, ack.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig
from nats.js.errors import FetchTimeoutError

from audioprep.domain.events import JobRequested
from audioprep.shared.event_store import EventStore
from audioprep.shared.ids import new_job_id
from audioprep.shared.names import Names
from audioprep.shared.nats_conn import connect
from bench.common import Env, bench_env, log, provision_env, row, summary_ms, write_result

NAMES = Names()  # the default prefix: what `audioprep up` uses

BARE_STREAM = "BENCH_DISPATCH"
BARE_DURABLE = "bench-bare"
SCALE_WORKERS = (1, 2, 4)


# --- the bare baseline worker (runs as its own process) -------------------------------------


async def bare_worker(url: str) -> None:
    import nats

    nc = await nats.connect(url)
    js = nc.jetstream()
    sub = await js.pull_subscribe_bind(durable=BARE_DURABLE, stream=BARE_STREAM)
    while True:
        try:
            msgs = await sub.fetch(1, timeout=5)
        except (FetchTimeoutError, TimeoutError):
            continue
        for msg in msgs:
            job = msg.subject.split(".")[1]
            await js.publish(f"benchd.{job}.started", b'{"type":"JobStarted"}')
            await msg.ack_sync()


# --- helpers ---------------------------------------------------------------------------------


async def put_upload(env: Env, seconds: float) -> str:
    """One WAV of `seconds` in storage that every ingest job of the run points at."""
    from audioprep.shared.storage import open_storage
    from tests import media

    path = media.write_tone(env.tmp / "upload.wav", seconds=seconds)
    key = f"uploads/{new_job_id()}/tone.wav"
    await open_storage(env.settings.storage).put_file(key, path)
    return key


async def fresh_uploads(env: Env, wav_key: str, n: int) -> list[str]:
    """`n` copies of the stored WAV under new upload keys: an ingest moves its upload into
    sources/, so every job needs its own (copied before anything is timed)."""
    from audioprep.shared.storage import open_storage

    storage = open_storage(env.settings.storage)
    keys = [f"uploads/{new_job_id()}/tone.wav" for _ in range(n)]
    for key in keys:
        await storage.copy(wav_key, key)
    return keys


def ingest_request(upload_key: str) -> JobRequested:
    return JobRequested(
        job_id=new_job_id(),
        kind="ingest",
        source="upload",
        upload_key=upload_key,
        filename="tone.wav",
    )


class Outcomes:
    """Core subscription to JobStarted / terminal events: when each job reached them."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.ended: dict[str, tuple[float, str]] = {}
        self.changed = asyncio.Event()

    async def subscribe(self, nc: Client) -> None:
        async def on_msg(msg: Msg) -> None:
            now = time.perf_counter()
            _, job_id, name = NAMES.parse_subject(msg.subject)
            if name == "started":
                self.started.setdefault(job_id, now)
            else:
                self.ended.setdefault(job_id, (now, name))
            self.changed.set()

        for name in ("started", "completed", "failed", "cancelled"):
            await nc.subscribe(f"jobs.ingest.*.{name}", cb=on_msg)

    async def wait(self, done: Any, timeout: float) -> None:
        deadline = time.perf_counter() + timeout
        while not done():
            self.changed.clear()
            left = deadline - time.perf_counter()
            if left <= 0:
                raise TimeoutError("jobs did not finish in time")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout=left)


# --- row 3 -------------------------------------------------------------------------------------


async def measure_dispatch(env: Env, upload_key: str, count: int) -> list[float]:
    nc = await connect(env.settings, "bench-dispatch")
    try:
        js = nc.jetstream()
        store = EventStore(nc, js, NAMES)
        outcomes = Outcomes()
        await outcomes.subscribe(nc)
        latencies: list[float] = []
        for i in range(count + 3):
            req = ingest_request((await fresh_uploads(env, upload_key, 1))[0])
            t0 = time.perf_counter()
            await store.request_job(req)
            job_id = req.job_id
            await outcomes.wait(lambda: job_id in outcomes.ended, timeout=60)  # noqa: B023
            if outcomes.ended[req.job_id][1] != "completed":
                raise RuntimeError(f"dispatch job {req.job_id} {outcomes.ended[req.job_id]}")
            if i >= 3:  # the first few warm up the worker's forkserver
                latencies.append(outcomes.started[req.job_id] - t0)
            await asyncio.sleep(random.uniform(0.02, 0.06))  # the worker is idle again
        return latencies
    finally:
        await nc.close()


async def measure_bare_dispatch(env: Env, count: int) -> list[float]:
    nc = await connect(env.settings, "bench-dispatch")
    try:
        js = nc.jetstream()
        started: dict[str, float] = {}
        got = asyncio.Event()

        async def on_started(msg: Msg) -> None:
            started[msg.subject.split(".")[1]] = time.perf_counter()
            got.set()

        await nc.subscribe("benchd.*.started", cb=on_started)
        latencies: list[float] = []
        for i in range(count + 3):
            job = new_job_id()
            got.clear()
            t0 = time.perf_counter()
            await js.publish(f"benchd.{job}.requested", b'{"type":"JobRequested"}')
            while job not in started:
                await asyncio.wait_for(got.wait(), timeout=10)
                got.clear()
            if i >= 3:
                latencies.append(started[job] - t0)
            await asyncio.sleep(random.uniform(0.02, 0.06))
        return latencies
    finally:
        await nc.close()


async def provision_bare(env: Env) -> None:
    nc = await connect(env.settings, "bench")
    try:
        js = nc.jetstream()
        await js.add_stream(
            StreamConfig(name=BARE_STREAM, subjects=["benchd.>"], storage=StorageType.FILE)
        )
        await js.add_consumer(
            BARE_STREAM,
            ConsumerConfig(
                durable_name=BARE_DURABLE,
                filter_subject="benchd.*.requested",
                ack_policy=AckPolicy.EXPLICIT,
                max_ack_pending=256,
            ),
        )
    finally:
        await nc.close()


# --- row 5 -------------------------------------------------------------------------------------


async def run_batch(
    env: Env, upload_key: str, size: int, uploads: list[str] | None = None
) -> float:
    """Publish `size` ingest jobs at once; seconds until the last one completed. `uploads`:
    keys made beforehand by `fresh_uploads` (else copied here, before the clock starts)."""
    nc = await connect(env.settings, "bench-scale")
    try:
        js = nc.jetstream()
        store = EventStore(nc, js, NAMES)
        outcomes = Outcomes()
        await outcomes.subscribe(nc)
        keys = uploads if uploads is not None else await fresh_uploads(env, upload_key, size)
        reqs = [ingest_request(k) for k in keys]
        ids = {r.job_id for r in reqs}
        t0 = time.perf_counter()
        await asyncio.gather(*(store.request_job(r) for r in reqs))
        await outcomes.wait(lambda: ids <= outcomes.ended.keys(), timeout=300)
        elapsed = max(outcomes.ended[i][0] for i in ids) - t0
        bad = [outcomes.ended[i][1] for i in ids if outcomes.ended[i][1] != "completed"]
        if bad:
            raise RuntimeError(f"{len(bad)} scale-out jobs did not complete: {bad[:3]}")
        return elapsed
    finally:
        await nc.close()


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [float(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def warm_up(env: Env, upload_key: str, logs: list[str], per_worker: int = 2) -> None:
    """Batches until every worker has finished `per_worker` jobs (its log says so), so no
    forkserver start (~0.5 s) lands in a timed batch."""
    for _ in range(20):
        asyncio.run(run_batch(env, upload_key, 2 * len(logs)))
        done = [(env.tmp / f"{name}.log").read_text().count('"job completed"') for name in logs]
        if min(done) >= per_worker:
            return
    raise RuntimeError(f"workers did not all take jobs while warming up: {done}")


def scale_out(env: Env, upload_key: str, batch: int) -> tuple[dict[int, float], dict[int, float]]:
    """Jobs/s with N worker processes of concurrency 1 (one job at a time each), best of two
    batches; and how busy the machine's cores were meanwhile (0..1)."""
    rates: dict[int, float] = {}
    busy: dict[int, float] = {}
    for n in SCALE_WORKERS:
        procs = [
            env.audioprep("worker", "--concurrency", "1", log_name=f"worker-scale-{n}-{i}")
            for i in range(n)
        ]
        warm_up(env, upload_key, [f"worker-scale-{n}-{i}" for i in range(n)])
        best = float("inf")
        for _ in range(2):
            b0, t0 = cpu_times()
            elapsed = asyncio.run(run_batch(env, upload_key, batch))
            b1, t1 = cpu_times()
            if elapsed < best:
                best, busy[n] = elapsed, (b1 - b0) / max(1.0, t1 - t0)
        rates[n] = batch / best
        log(
            f"scale-out: {n} worker(s): {batch} jobs in {best:.2f}s = {rates[n]:.1f} jobs/s, "
            f"cores {busy[n]:.0%} busy"
        )
        for p in procs:
            env.stop(p)
    return rates, busy


def run(dispatches: int, batch: int, seconds: float) -> dict[str, Any]:
    with bench_env("workers") as env:
        asyncio.run(provision_env(env))
        asyncio.run(provision_bare(env))
        upload_key = asyncio.run(put_upload(env, seconds))

        bare = env.spawn(
            [sys.executable, "-m", "bench.workers", "--bare-worker", env.settings.nats_url],
            log_name="bare-worker",
        )
        bare_lat = asyncio.run(measure_bare_dispatch(env, dispatches))
        env.stop(bare)
        worker = env.audioprep("worker", log_name="worker-dispatch")
        lat = asyncio.run(measure_dispatch(env, upload_key, dispatches))
        env.stop(worker)
        d, b = summary_ms(lat), summary_ms(bare_lat)
        log(f"dispatch: worker {d}, bare {b}")

        rates, busy = scale_out(env, upload_key, batch)

    rows = [
        row(
            "3 dispatch",
            "JobRequested → JobStarted p50",
            d["p50_ms"],
            b["p50_ms"],
            "ms",
            higher_is_better=False,
            target="< 5 ms",
            met=d["p50_ms"] < 5,
            notes=f"idle worker, {dispatches} jobs one at a time; p99 {d['p99_ms']:.1f} ms; "
            "baseline = bare pull consumer: fetch(1) → publish → ack",
        ),
    ]
    for n in SCALE_WORKERS[1:]:
        rows.append(
            row(
                "5 scale-out",
                f"ingest throughput, {n} worker processes",
                rates[n],
                rates[1],
                "jobs/s",
                higher_is_better=True,
                target="≥ 1.9× one" if n == 2 else "",
                met=rates[n] >= 1.9 * rates[1] if n == 2 else None,
                notes=f"batch of {batch} {seconds:g}-s WAV uploads, concurrency 1 per process; "
                f"baseline = 1 process; cores busy {busy[1]:.0%} (1) vs {busy[n]:.0%} ({n})",
            )
        )
    return {
        "rows": rows,
        "dispatch": d,
        "bare_dispatch": b,
        "scale_out_jobs_per_s": {str(k): round(v, 2) for k, v in rates.items()},
        "scale_out_cores_busy": {str(k): round(v, 3) for k, v in busy.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dispatches", type=int, default=50)
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each upload")
    parser.add_argument("--bare-worker", metavar="NATS_URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_worker:
        import uvloop

        uvloop.run(bare_worker(args.bare_worker))
        return
    result = run(args.dispatches, args.batch, args.seconds)
    path = write_result("workers", result)
    print(json.dumps(result["rows"], indent=1))
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
