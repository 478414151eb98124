"""Cost as the work grows: the same rows on a nearly empty stream and after preloading a
service's 30-day history (300k jobs, ~2M realistic events), side by side in one run.

Per-request rows (enqueue, poll, SSE first event, dispatch, event→KV lag, `jobs ls` first page)
are measured in both states; the target is loaded ≤ 1.1× small. Full scans (`projection
rebuild`, `storage gc`) run at three sizes (small, 10 %, 100 %) in their own processes: events/s
and peak RSS show whether they are linear in time and bounded in memory.

python -m bench.growth [--jobs 300000] [--small-jobs 200]  → bench/results/growth.json

Preloading runs with fsync off (a copy of deploy/nats.conf without `sync_interval`), only to save
time; every timed row runs on deploy/nats.conf. After a preload the worker and notifier
consumers are recreated after the last sequence (a service whose history is all acknowledged),
so a worker started for the dispatch row has no backlog.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
from nats.js.api import DeliverPolicy

from audioprep.domain import kinds
from audioprep.domain.events import (
    Event,
    JobCompleted,
    JobProgressed,
    JobRequested,
    JobResult,
    JobStarted,
    encode_event,
)
from audioprep.services.worker.dispatch.dispatcher import Checkpoint
from audioprep.shared import provision as prov
from audioprep.shared.ids import new_job_id
from audioprep.shared.names import SCHEDULER_CHECKPOINT_KEY, Names
from audioprep.shared.nats_conn import connect
from bench import api as bench_api
from bench import projector as bench_projector
from bench import workers as bench_workers
from bench.common import (
    Env,
    bench_env,
    fast_nats_conf,
    http_load,
    log,
    peak_rss_mib,
    provision_env,
    row,
    start_http_app,
    summary_ms,
    write_result,
)

NAMES = Names()
SAVE_PATH = "/api/audio/edit/save"


# --- the history ---------------------------------------------------------------------------------


def job_events(job_id: str, save: bool) -> list[Event]:
    """An ingest (5 events) or a save (8 events: 5 progress steps): ~6.5 events a job."""
    if save:
        src = f"sources/{job_id}/a.wav"
        first: Event = JobRequested(
            job_id=job_id, kind="save", source_key=src, recipe={"gainDb": -3.0}, format="mp3"
        )
        steps = [10, 30, 50, 70, 90]
        result = JobResult(
            prepared_key=f"prepared/{job_id}/a.mp3", format="mp3", size_bytes=100_000
        )
    else:
        first = JobRequested(
            job_id=job_id, kind="ingest", source="upload", upload_key=f"u/{job_id}"
        )
        steps = [40, 80]
        result = JobResult(source_key=f"sources/{job_id}/a.wav", duration_ms=180_000)
    kind = first.kind
    out: list[Event] = [first, JobStarted(job_id=job_id, kind=kind, attempt=1, worker="bench")]
    out += [JobProgressed(job_id=job_id, kind=kind, progress=p, stage="rendering") for p in steps]
    out.append(JobCompleted(job_id=job_id, kind=kind, result=result))
    return out


async def preload(env: Env, jobs: int, interleave: int = 200) -> tuple[list[str], int]:
    """Publish `jobs` jobs' events, `interleave` jobs at a time; (job ids, last sequence)."""
    nc = await connect(env.settings, "bench-preload")
    js = nc.jetstream()
    ids: list[str] = []
    pending: list[Any] = []
    last = 0
    try:
        for first in range(0, jobs, interleave):
            group = []
            for i in range(min(interleave, jobs - first)):
                job_id = new_job_id()
                ids.append(job_id)
                group.append(job_events(job_id, save=(first + i) % 2 == 1))
            for step in range(max(len(g) for g in group)):
                for events in group:
                    if step < len(events):
                        ev = events[step]
                        subject = NAMES.event_subject(ev.kind, ev.job_id, ev.name)
                        pending.append(await js.publish_async(subject, encode_event(ev)))
            if len(pending) >= 4000:
                last = max(last, max(a.seq for a in await asyncio.gather(*pending)))
                pending.clear()
        if pending:
            last = max(last, max(a.seq for a in await asyncio.gather(*pending)))
    finally:
        await nc.close()
    return ids, last


async def skip_backlog(env: Env) -> None:
    """Worker and notifier consumers recreated after the stream's last sequence, and the
    dispatcher's checkpoint put there: everything before counts as done (as in a service whose
    history is acknowledged). Without the checkpoint, the enqueue rows' saves (never run)
    would pin the dispatcher's floor, and the dispatch row's worker would first re-read
    every event since the first of them (2M on the loaded stream: ~80 s)."""
    nc = await connect(env.settings, "bench")
    js = nc.jetstream()
    try:
        last = (await js.stream_info(NAMES.stream)).state.last_seq
        checkpoints = await js.key_value(NAMES.scheduler_bucket)
        checkpoint = Checkpoint(floor=last + 1, applied_seq=last)
        await checkpoints.put(SCHEDULER_CHECKPOINT_KEY, msgspec.json.encode(checkpoint))
        configs = [prov.worker_consumer_config(k, env.settings) for k in kinds.KINDS]
        configs.append(prov.notifier_jobs_consumer_config(env.settings))
        for config in configs:
            await js.delete_consumer(NAMES.stream, config.durable_name or "")
            config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
            config.opt_start_seq = last + 1
            await js.add_consumer(NAMES.stream, config)
    finally:
        await nc.close()


def write_objects(env: Env, ids: list[str], share: float = 0.1) -> int:
    """A small upload for a share of the jobs, in local storage (what `storage gc` scans)."""
    root = Path(env.settings.storage.removeprefix("file://"))
    n = 0
    for job_id in ids[: max(1, int(len(ids) * share))]:
        d = root / "uploads" / job_id
        d.mkdir(parents=True, exist_ok=True)
        (d / "a.wav").write_bytes(b"RIFF")
        n += 1
    return n


# --- the rows ------------------------------------------------------------------------------


def run_cli(env: Env, *args: str) -> tuple[float, float]:
    """`audioprep <args>` in its own process: (seconds, peak RSS in MiB, from VmHWM)."""
    cmd = [sys.executable, "-m", "audioprep.services.cli.main", *args]
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env.env(), cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    peak_mib = peak_rss_mib(proc)
    code = proc.wait()
    elapsed = time.perf_counter() - started
    err = proc.stderr.read().decode() if proc.stderr else ""
    if code not in (0, 1):
        raise RuntimeError(f"{' '.join(args)} failed: {err[-2000:]}")
    return elapsed, peak_mib


async def sse_first_event(api: str, job_ids: list[str], n: int = 40) -> list[float]:
    """Request → first `data:` line of a (completed) job's event stream."""
    out = []
    async with httpx.AsyncClient(base_url=api, timeout=10) as client:
        for job_id in random.Random(1).sample(job_ids, min(n, len(job_ids))) + job_ids[:3]:
            t0 = time.perf_counter()
            async with client.stream("GET", f"/api/audio/jobs/{job_id}/events") as resp:
                async for line in resp.aiter_lines():
                    if line.startswith("data:"):
                        out.append(time.perf_counter() - t0)
                        break
    return out[3:]


async def jobs_ls_first_page(env: Env, runs: int = 10) -> list[float]:
    from audioprep.services.cli.common import nats_session
    from audioprep.services.cli.jobs import list_jobs

    out = []
    async with nats_session(env.settings) as session:
        for _ in range(runs + 1):
            t0 = time.perf_counter()
            shown, _ = await list_jobs(session, limit=20)
            out.append(time.perf_counter() - t0)
            assert len(shown) == 20
    return out[1:]


async def dispatch_latencies(env: Env, wav_key: str, count: int) -> list[float]:
    """JobRequested → JobStarted of an idle worker, one ingest at a time (each its own upload:
    an ingest moves its upload into sources/)."""
    from audioprep.shared.event_store import EventStore
    from audioprep.shared.storage import open_storage

    storage = open_storage(env.settings.storage)
    nc = await connect(env.settings, "bench-dispatch")
    try:
        store = EventStore(nc, nc.jetstream(), NAMES)
        outcomes = bench_workers.Outcomes()
        await outcomes.subscribe(nc)
        out = []
        for i in range(count + 3):
            req = bench_workers.ingest_request(f"uploads/{new_job_id()}/tone.wav")
            await storage.copy(wav_key, req.upload_key or "")
            t0 = time.perf_counter()
            await store.request_job(req)
            await outcomes.wait(lambda r=req: r.job_id in outcomes.ended, timeout=60)
            if outcomes.ended[req.job_id][1] != "completed":
                raise RuntimeError(f"dispatch job {req.job_id}: {outcomes.ended[req.job_id]}")
            if i >= 3:  # the first ones warm the worker's media process up
                out.append(outcomes.started[req.job_id] - t0)
            await asyncio.sleep(random.uniform(0.02, 0.06))
        return out
    finally:
        await nc.close()


def median_load(env: Env, url: str, reps: int, duration: float, **kw: Any) -> dict[str, Any]:
    http_load(env.tmp, url, duration=1, **kw)
    runs = [http_load(env.tmp, url, duration=duration, **kw) for _ in range(reps)]
    return bench_api.median(runs)


def per_request_rows(
    env: Env, api: str, poll_ids: list[str], sse_ids: list[str], upload_key: str, dur: float
) -> dict[str, float]:
    """The per-request figures of one state of the stream."""
    out: dict[str, float] = {}
    save_body = json.dumps(
        {"sourceKey": asyncio.run(bench_api._put_source(env)), "recipe": {"gainDb": -3},
         "format": "wav"}
    )  # fmt: skip
    enq = median_load(env, api + SAVE_PATH, 3, dur, method="POST", body=save_body)
    out |= {"enqueue_rps": enq["rps"], "enqueue_p99_ms": enq["p99_ms"]}
    paths = [f"/api/audio/jobs/{i}" for i in poll_ids]
    poll = median_load(env, api + "/api/audio/jobs/x", 3, dur, paths=paths)
    out |= {"poll_rps": poll["rps"], "poll_p99_ms": poll["p99_ms"]}
    sse = summary_ms(asyncio.run(sse_first_event(api, sse_ids)))
    out |= {"sse_old_p50_ms": sse["p50_ms"], "sse_old_p99_ms": sse["p99_ms"]}
    new_ids = asyncio.run(bench_api._job_ids_newest(env, 60))
    sse = summary_ms(asyncio.run(sse_first_event(api, new_ids)))
    out |= {"sse_first_p50_ms": sse["p50_ms"], "sse_first_p99_ms": sse["p99_ms"]}
    ls = summary_ms(asyncio.run(jobs_ls_first_page(env)))
    out |= {"jobs_ls_p50_ms": ls["p50_ms"]}
    lag = bench_projector._in_loop(
        lambda e, r, s: bench_projector.steady_lag(e, r, s, bare=False), env, 500, 3.0
    )
    out |= {"lag_p50_ms": lag["lag"]["p50_ms"], "lag_p99_ms": lag["lag"]["p99_ms"]}
    asyncio.run(skip_backlog(env))  # the saves just enqueued are not the worker's business
    worker = env.audioprep("worker", "--concurrency", "1", log_name="worker-growth")
    try:
        d = summary_ms(asyncio.run(dispatch_latencies(env, upload_key, 20)))
    finally:
        env.stop(worker)
    out |= {"dispatch_p50_ms": d["p50_ms"]}
    log("  " + json.dumps({k: round(v, 2) for k, v in out.items()}))
    return out


def full_scans(env: Env, label: str, events: int, jobs: int) -> dict[str, Any]:
    """`projection rebuild` (writes the views) and `storage gc` (dry run) at this size."""
    rb_s, rb_mib = run_cli(env, "projection", "rebuild", "--quiet")
    gc_s, gc_mib = run_cli(env, "storage", "gc")
    r = {"label": label, "events": events, "jobs": jobs, "rebuild_s": round(rb_s, 2),
         "rebuild_events_per_s": round(events / rb_s), "rebuild_peak_mib": round(rb_mib, 1),
         "gc_s": round(gc_s, 2), "gc_peak_mib": round(gc_mib, 1)}  # fmt: skip
    log(f"  full scans at {label}: {json.dumps(r)}")
    return r


def with_services(env: Env, body: Callable[[str], Awaitable[Any] | Any]) -> Any:
    """API + projector processes up for `body(api_url)`, stopped after."""
    projector = env.audioprep("projector")
    api, api_proc = start_http_app(env, "api", "/healthz")
    try:
        return body(api)
    finally:
        env.stop(api_proc)
        env.stop(projector)


def run(jobs: int, small_jobs: int, duration: float) -> dict[str, Any]:
    with bench_env("growth") as env:
        asyncio.run(provision_env(env))
        upload_key = asyncio.run(bench_workers.put_upload(env, 3.0))

        # 1. a nearly empty stream: a few hundred jobs to read
        ids, last = asyncio.run(preload(env, small_jobs))
        asyncio.run(skip_backlog(env))
        scans = [full_scans(env, "small", last, len(ids))]
        write_objects(env, ids)
        small = with_services(
            env, lambda api: per_request_rows(env, api, ids, ids, upload_key, duration)
        )
        small_last = asyncio.run(_last_seq(env))

        # 2. 10 %, then all of the history (fsync off while loading)
        sizes = [("10 %", jobs // 10 - small_jobs), ("loaded", jobs - jobs // 10)]
        for label, n in sizes:
            env.restart_server(fast_nats_conf(env.tmp))
            t0 = time.perf_counter()
            more, last = asyncio.run(preload(env, n))
            log(f"preloaded {n} jobs (to seq {last}) in {time.perf_counter() - t0:.0f}s")
            ids += more
            env.restart_server()
            asyncio.run(skip_backlog(env))
            write_objects(env, more)
            scans.append(full_scans(env, label, last, len(ids)))
        poll_ids = random.Random(2).sample(ids, 1000)
        loaded = with_services(
            env, lambda api: per_request_rows(env, api, poll_ids, poll_ids, upload_key, duration)
        )
    return {"small": small, "small_events": small_last, "loaded": loaded, "events": last,
            "jobs": len(ids), "scans": scans}  # fmt: skip


async def _last_seq(env: Env) -> int:
    nc = await connect(env.settings, "bench")
    try:
        return int((await nc.jetstream().stream_info(NAMES.stream)).state.last_seq)
    finally:
        await nc.close()


ROWS = [  # key, metric, unit, higher is better
    ("enqueue_rps", "enqueue POST /api/audio/edit/save", "req/s", True),
    ("enqueue_p99_ms", "enqueue p99", "ms", False),
    ("poll_rps", "poll GET /api/audio/jobs/{id}", "req/s", True),
    ("poll_p99_ms", "poll p99", "ms", False),
    ("sse_first_p50_ms", "SSE first event p50 (a job just requested)", "ms", False),
    ("sse_old_p50_ms", "SSE first event p50 (a random job of the history)", "ms", False),
    ("dispatch_p50_ms", "dispatch JobRequested → JobStarted p50", "ms", False),
    ("lag_p99_ms", "event→KV lag p99 at 500/s", "ms", False),
    ("jobs_ls_p50_ms", "`jobs ls` first page (20) p50", "ms", False),
]


def table_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    s, big = result["small"], result["loaded"]
    note = f"loaded: {result['jobs']:,} jobs / {result['events']:,} events; small: "
    note += f"{result['small_events']:,} events"
    out = []
    for key, metric, unit, higher in ROWS:
        ratio = s[key] / big[key] if higher else big[key] / s[key]  # ≤ 1.1 is the target
        target, met = "within 1.1×", ratio <= 1.1
        if key == "jobs_ls_p50_ms":
            target, met = "within 1.1×, < 100 ms", met and big[key] < 100
        out.append(
            row("10 growth", f"{metric}, loaded vs small", big[key], s[key], unit,
                higher_is_better=higher, target=target, met=met, notes=note)
        )  # fmt: skip
    scans = {x["label"]: x for x in result["scans"]}
    mid, full = scans["10 %"], scans["loaded"]
    rss = f"peak RSS {mid['rebuild_peak_mib']} → {full['rebuild_peak_mib']} MiB"
    mid_rate, full_rate = mid["rebuild_events_per_s"], full["rebuild_events_per_s"]
    out.append(
        row("10 growth", f"rebuild events/s at {full['events']:,} vs {mid['events']:,}",
            full_rate, mid_rate, "events/s", higher_is_better=True, target="linear (≥ 0.9×)",
            met=full_rate >= 0.9 * mid_rate, notes=rss)
    )  # fmt: skip
    out.append(
        row("10 growth", "rebuild peak RSS, loaded vs 10 %", full["rebuild_peak_mib"],
            mid["rebuild_peak_mib"], "MiB", higher_is_better=False, target="bounded",
            met=full["rebuild_peak_mib"] <= 1.5 * mid["rebuild_peak_mib"],
            notes="an LRU cache of 10,000 views, the rest in a scratch SQLite file")
    )  # fmt: skip
    objects = f"{full['jobs'] // 10:,} vs {mid['jobs'] // 10:,} objects"
    out.append(
        row("10 growth", f"storage gc (dry run), {objects}", full["gc_s"], mid["gc_s"], "s",
            higher_is_better=False, target="linear (≤ 11×)", met=full["gc_s"] <= 11 * mid["gc_s"],
            notes="10× the objects and jobs")
    )  # fmt: skip
    out.append(
        row("10 growth", "storage gc peak RSS, loaded vs 10 %", full["gc_peak_mib"],
            mid["gc_peak_mib"], "MiB", higher_is_better=False, target="bounded",
            met=full["gc_peak_mib"] <= 1.5 * mid["gc_peak_mib"])
    )  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=300_000, help="jobs in the loaded history")
    parser.add_argument("--small-jobs", type=int, default=200)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per HTTP run")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    result = run(args.jobs, args.small_jobs, args.duration)
    result["rows"] = table_rows(result)
    path = write_result("growth", result)
    print(json.dumps(result["rows"], indent=1))
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
