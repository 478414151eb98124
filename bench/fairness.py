"""Fair sharing between tenants (docs/fairness.md): another tenant's previews under a flood,
FIFO against fair dispatch, with one and two worker processes; weights; what the dispatcher
costs (requested → started, and throughput on many tiny jobs).

Every run has its own nats-server and real processes (`audioprep api`, `projector`,
`worker` × N) started with AUDIOPREP_DISPATCH=fifo|fair and two API keys (tenants A, B):

- (a) idle: B posts 10 previews of its 30-s source on an idle system;
- (b)/(c) flood: A posts `--saves` saves (flac) of its 30-s source; 2 s later B posts 10
  previews and 10 saves; FIFO (b) against fair (c): B's POST → completed, A's total time;
- 2 workers, weights A=3 B=1: A and B flood saves together; the share of starts while both
  wait, and B's previews under the flood;
- dispatch: JobRequested → JobStarted with one idle worker (one tenant), FIFO vs fair;
- throughput: 2 worker processes (concurrency 1) on `--batch` tiny ingests, FIFO vs fair.

python -m bench.fairness [--saves 300] [--previews 10] [--batch 48] [--dispatches 50]
→ bench/results/fairness.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from nats.aio.client import Client
from nats.aio.msg import Msg

from audioprep.domain.events import decode_event
from audioprep.shared.names import Names
from audioprep.shared.nats_conn import connect
from audioprep.shared.nats_server import free_port
from bench.all import table
from bench.common import (
    Env,
    bench_env,
    log,
    provision_env,
    row,
    summary_ms,
    wait_http,
    write_result,
)
from bench.workers import Outcomes
from tests import media

NAMES = Names()
KEYS = {"A": "bench-key-tenant-a", "B": "bench-key-tenant-b"}
SOURCE_S = 30.0
TERMINAL = ("completed", "failed", "cancelled")


def service_env(mode: str, weights: str = "") -> dict[str, str]:
    extra = {
        "AUDIOPREP_DISPATCH": mode,
        "AUDIOPREP_API_KEYS": ",".join(f"{key}={tenant}" for tenant, key in KEYS.items()),
    }
    if weights:
        extra["AUDIOPREP_TENANT_WEIGHTS"] = weights
    return extra


def headers(tenant: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[tenant]}"}


@dataclass
class Tracker:
    """When each job started and ended, from the events themselves (core subscription)."""

    started: dict[str, float] = field(default_factory=dict)
    ended: dict[str, tuple[float, str]] = field(default_factory=dict)
    start_order: list[tuple[str, str, float]] = field(default_factory=list)  # tenant, kind, t
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def subscribe(self, nc: Client) -> None:
        async def on_msg(msg: Msg) -> None:
            now = time.perf_counter()
            kind, job_id, name = NAMES.parse_subject(msg.subject)
            if name == "started":
                if job_id not in self.started:
                    self.started[job_id] = now
                    self.start_order.append((decode_event(msg.data).tenant, kind, now))
            else:
                self.ended.setdefault(job_id, (now, name))
            self.changed.set()

        for name in ("started", *TERMINAL):
            await nc.subscribe(f"jobs.*.*.{name}", cb=on_msg)

    async def wait(self, ids: Iterable[str], timeout: float) -> None:
        wanted = set(ids)
        deadline = time.perf_counter() + timeout
        while not wanted <= self.ended.keys():
            self.changed.clear()
            left = deadline - time.perf_counter()
            if left <= 0:
                missing = len(wanted - self.ended.keys())
                raise TimeoutError(f"{missing} jobs did not end in {timeout:.0f}s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout=min(left, 1.0))
        bad = [self.ended[j][1] for j in wanted if self.ended[j][1] != "completed"]
        if bad:
            raise RuntimeError(f"{len(bad)} jobs did not complete: {Counter(bad)}")


@contextlib.asynccontextmanager
async def stack(
    env: Env, mode: str, workers: int, *, weights: str = "", concurrency: int | None = None
) -> AsyncIterator[str]:
    """API, projector and `workers` worker processes in `mode`; yields the API's base URL."""
    await provision_env_mode(env, mode)
    extra = service_env(mode, weights)
    port = free_port()
    procs = [
        env.audioprep("projector", log_name=f"projector-{mode}", **extra),
        env.audioprep("api", "--port", str(port), log_name=f"api-{mode}", **extra),
    ]
    args = ("--concurrency", str(concurrency)) if concurrency else ()
    procs += [
        env.audioprep("worker", *args, log_name=f"worker-{mode}-{i}", **extra)
        for i in range(workers)
    ]
    base = f"http://127.0.0.1:{port}"
    await asyncio.to_thread(wait_http, base + "/readyz", 60)
    try:
        yield base
    finally:
        for proc in procs:
            await asyncio.to_thread(env.stop, proc)


async def provision_env_mode(env: Env, mode: str) -> None:
    saved = env.settings
    env.settings = saved.with_(dispatch=mode)
    try:
        await provision_env(env)  # the worker consumers take requests (fifo) or releases (fair)
    finally:
        env.settings = saved


async def ingest(client: httpx.AsyncClient, tracker: Tracker, tenant: str, data: bytes) -> str:
    resp = await client.post(
        "/api/audio/ingest",
        files={"file": ("source.wav", data, "audio/wav")},
        headers=headers(tenant),
    )
    resp.raise_for_status()
    job_id = str(resp.json()["jobId"])
    await tracker.wait([job_id], 120)
    for _ in range(200):  # the view follows the event within milliseconds
        view = (await client.get(f"/api/audio/jobs/{job_id}", headers=headers(tenant))).json()
        if view.get("result"):
            return str(view["result"]["sourceKey"])
        await asyncio.sleep(0.05)
    raise RuntimeError(f"ingest {job_id} has no result in its view")


async def post(
    client: httpx.AsyncClient, tenant: str, path: str, body: dict[str, Any]
) -> tuple[str, float]:
    """(job id, when the POST was sent)."""
    t0 = time.perf_counter()
    resp = await client.post(path, json=body, headers=headers(tenant))
    if resp.status_code != 202:
        raise RuntimeError(f"{path} answered {resp.status_code}: {resp.text[:300]}")
    return str(resp.json()["jobId"]), t0


async def post_many(
    client: httpx.AsyncClient, tenant: str, path: str, bodies: list[dict[str, Any]], width: int = 8
) -> list[tuple[str, float]]:
    gate = asyncio.Semaphore(width)

    async def one(body: dict[str, Any]) -> tuple[str, float]:
        async with gate:
            return await post(client, tenant, path, body)

    return list(await asyncio.gather(*(one(b) for b in bodies)))


def preview_bodies(source: str, n: int, salt: int) -> list[dict[str, Any]]:
    """Distinct recipes: every preview is a render, never a cache hit."""
    return [
        {"sourceKey": source, "recipe": {"gainDb": -round(salt + 0.01 * (i + 1), 2)}}
        for i in range(n)
    ]


def save_bodies(source: str, n: int) -> list[dict[str, Any]]:
    return [{"sourceKey": source, "format": "flac", "recipe": {"fadeInMs": 100}} for _ in range(n)]


def latencies(posted: list[tuple[str, float]], tracker: Tracker) -> list[float]:
    return [tracker.ended[job_id][0] - t0 for job_id, t0 in posted]


async def scenario(
    base: str,
    nc: Client,
    data: bytes,
    *,
    saves: int,
    previews: int,
    b_saves: int,
    salt: int,
    weighted_flood: int = 0,
) -> dict[str, Any]:
    """A floods `saves`; 2 s later B posts `previews` previews and `b_saves` saves (with
    `weighted_flood`, B also floods that many saves at the start)."""
    tracker = Tracker()
    await tracker.subscribe(nc)
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
        source = {t: await ingest(client, tracker, t, data) for t in ("A", "B")}
        warm = await post_many(
            client, "B", "/api/audio/edit/preview", preview_bodies(source["B"], 2, salt + 10)
        )
        await tracker.wait([j for j, _ in warm], 120)  # every worker's media child is up
        tracker.start_order.clear()
        t0 = time.perf_counter()
        flood_a = asyncio.create_task(
            post_many(client, "A", "/api/audio/edit/save", save_bodies(source["A"], saves))
        )
        flood_b = (
            asyncio.create_task(
                post_many(
                    client, "B", "/api/audio/edit/save", save_bodies(source["B"], weighted_flood)
                )
            )
            if weighted_flood
            else None
        )
        if saves:
            await asyncio.sleep(2.0)
        b_prev_task = asyncio.create_task(
            post_many(
                client,
                "B",
                "/api/audio/edit/preview",
                preview_bodies(source["B"], previews, salt),
                width=previews,
            )
        )
        b_save = await post_many(
            client, "B", "/api/audio/edit/save", save_bodies(source["B"], b_saves)
        )
        b_prev = await b_prev_task
        a_posted = await flood_a
        b_flood = await flood_b if flood_b else []
        all_posted = time.perf_counter()
        ids = [j for j, _ in (*a_posted, *b_prev, *b_save, *b_flood)]
        await tracker.wait(ids, 1800)
    out: dict[str, Any] = {"b_preview": summary_ms(latencies(b_prev, tracker))}
    if b_save:
        out["b_save"] = summary_ms(latencies(b_save, tracker))
    if a_posted:
        out["a_total_s"] = round(max(tracker.ended[j][0] for j, _ in a_posted) - t0, 3)
    if weighted_flood:
        out["share"] = contested_share(tracker.start_order, saves, weighted_flood, all_posted)
    return out


def contested_share(
    order: list[tuple[str, str, float]], a_jobs: int, b_jobs: int, since: float
) -> dict[str, Any]:
    """Save starts per tenant once both floods were in, while both still had saves waiting."""
    left = {"A": a_jobs, "B": b_jobs}
    counted: Counter[str] = Counter()
    for tenant, kind, at in order:
        if kind != "save" or tenant not in left:
            continue
        if at >= since:
            if min(left.values()) <= 0:
                break
            counted[tenant] += 1
        left[tenant] -= 1
    a, b = counted["A"], counted["B"]
    return {"a_starts": a, "b_starts": b, "ratio": round(a / b, 2) if b else None}


# ---- dispatch overhead and throughput (each ingest moves its upload: one upload per job) ------


async def uploads(env: Env, count: int) -> list[str]:
    from audioprep.shared.ids import new_job_id
    from audioprep.shared.storage import open_storage

    path = media.write_tone(env.tmp / "tiny.wav", seconds=3.0)
    storage = open_storage(env.settings.storage)
    out = []
    for _ in range(count):
        key = f"uploads/{new_job_id()}/tiny.wav"
        await storage.put_file(key, path)
        out.append(key)
    return out


def tiny_request(upload_key: str) -> Any:
    from audioprep.domain.events import JobRequested
    from audioprep.shared.ids import new_job_id

    return JobRequested(
        job_id=new_job_id(), kind="ingest", source="upload", upload_key=upload_key,
        filename="tiny.wav",
    )  # fmt: skip


async def dispatch_latencies(env: Env, keys: list[str], warm: int = 3) -> list[float]:
    """JobRequested published → JobStarted seen, one job at a time, idle worker."""
    from audioprep.shared.event_store import EventStore

    nc = await connect(env.settings, "bench-dispatch")
    try:
        store = EventStore(nc, nc.jetstream(), NAMES)
        outcomes = Outcomes()
        await outcomes.subscribe(nc)
        out = []
        for i, key in enumerate(keys):
            req = tiny_request(key)
            t0 = time.perf_counter()
            await store.request_job(req)
            await outcomes.wait(lambda j=req.job_id: j in outcomes.ended, timeout=60)  # type: ignore[misc]
            if outcomes.ended[req.job_id][1] != "completed":
                raise RuntimeError(f"dispatch job {req.job_id}: {outcomes.ended[req.job_id]}")
            if i >= warm:
                out.append(outcomes.started[req.job_id] - t0)
            await asyncio.sleep(0.03)  # idle again
        return out
    finally:
        await nc.close()


async def batch_seconds(env: Env, keys: list[str]) -> float:
    """All at once; seconds until the last completed."""
    from audioprep.shared.event_store import EventStore

    nc = await connect(env.settings, "bench-batch")
    try:
        store = EventStore(nc, nc.jetstream(), NAMES)
        outcomes = Outcomes()
        await outcomes.subscribe(nc)
        reqs = [tiny_request(k) for k in keys]
        ids = {r.job_id for r in reqs}
        t0 = time.perf_counter()
        await asyncio.gather(*(store.request_job(r) for r in reqs))
        await outcomes.wait(lambda: ids <= outcomes.ended.keys(), timeout=300)
        bad = [i for i in ids if outcomes.ended[i][1] != "completed"]
        if bad:
            raise RuntimeError(f"{len(bad)} tiny jobs did not complete")
        return max(outcomes.ended[i][0] for i in ids) - t0
    finally:
        await nc.close()


def mode_runs(mode: str, args: argparse.Namespace, data: bytes) -> dict[str, Any]:
    with bench_env(f"fairness-{mode}") as env:

        async def go() -> dict[str, Any]:
            nc = await connect(env.settings, "bench-fairness")
            try:
                result: dict[str, Any] = {}
                async with stack(env, mode, 1) as base:
                    if mode == "fair":
                        log("idle: B's previews alone")
                        result["idle"] = await scenario(
                            base, nc, data, saves=0, previews=args.previews, b_saves=0, salt=1
                        )
                    log(f"{mode}: A floods {args.saves} saves, B posts previews and saves")
                    result["flood"] = await scenario(
                        base, nc, data, saves=args.saves, previews=args.previews,
                        b_saves=args.previews, salt=2,
                    )  # fmt: skip
                weights = "A=3,B=1" if mode == "fair" else ""
                async with stack(env, mode, 2, weights=weights) as base:
                    log(f"{mode}, 2 workers{', weights A=3 B=1' if weights else ''}: both flood")
                    result["two_workers"] = await scenario(
                        base, nc, data, saves=args.saves // 2, previews=args.previews,
                        b_saves=0, salt=3, weighted_flood=args.saves // 2,
                    )  # fmt: skip
                return result
            finally:
                await nc.close()

        result = asyncio.run(go())
        # dispatch overhead and throughput
        env.settings = env.settings.with_(dispatch=mode)
        asyncio.run(provision_env(env))
        extra = {"AUDIOPREP_DISPATCH": mode}
        worker = env.audioprep("worker", log_name=f"dispatch-{mode}", **extra)
        keys = asyncio.run(uploads(env, args.dispatches + 3))
        result["dispatch"] = summary_ms(asyncio.run(dispatch_latencies(env, keys)))
        env.stop(worker)
        procs = [
            env.audioprep("worker", "--concurrency", "1", log_name=f"tiny-{mode}-{i}", **extra)
            for i in range(2)
        ]
        asyncio.run(batch_seconds(env, asyncio.run(uploads(env, 8))))  # both media children up
        runs = [
            asyncio.run(batch_seconds(env, asyncio.run(uploads(env, args.batch)))) for _ in range(2)
        ]
        result["tiny_jobs_per_s"] = round(args.batch / min(runs), 2)
        for proc in procs:
            env.stop(proc)
        log(f"{mode}: {json.dumps(result)}")
        return result


def rows(
    fifo: dict[str, Any], fair: dict[str, Any], args: argparse.Namespace
) -> list[dict[str, Any]]:
    idle = fair["idle"]["b_preview"]
    ff, fa = fifo["flood"], fair["flood"]
    share = fair["two_workers"].get("share") or {}
    out = [
        row("10 fairness", "(a) B preview POST → completed p50, idle", idle["p50_ms"], None,
            "ms", higher_is_better=False,
            notes=f"p99 {idle['p99_ms']:.0f} ms; {args.previews} previews at once"),
        row("10 fairness", "(c) fair vs (b) FIFO: B preview p50 under A's flood",
            fa["b_preview"]["p50_ms"], ff["b_preview"]["p50_ms"], "ms", higher_is_better=False,
            target="(c) ≤ 2× (a)", met=fa["b_preview"]["p50_ms"] <= 2 * idle["p50_ms"],
            notes=f"A: {args.saves} flac saves of a 30-s source; (a) = {idle['p50_ms']:.0f} ms"),
        row("10 fairness", "(c) vs (b): B preview p99 under A's flood",
            fa["b_preview"]["p99_ms"], ff["b_preview"]["p99_ms"], "ms", higher_is_better=False),
        row("10 fairness", "(c) vs (b): B save p50 under A's flood (same kind)",
            fa["b_save"]["p50_ms"], ff["b_save"]["p50_ms"], "ms", higher_is_better=False,
            notes="FIFO queues B's saves behind A's whole backlog"),
        row("10 fairness", "(c) vs (b): A's total time", fa["a_total_s"], ff["a_total_s"], "s",
            higher_is_better=False, target="< 1.10× FIFO",
            met=fa["a_total_s"] < 1.10 * ff["a_total_s"]),
        row("10 fairness", "2 workers, fair vs FIFO: B preview p50 under the floods",
            fair["two_workers"]["b_preview"]["p50_ms"], fifo["two_workers"]["b_preview"]["p50_ms"],
            "ms", higher_is_better=False, notes="A and B both flood saves (weights A=3 B=1)"),
        row("10 fairness", "2 workers, A:B save starts while both wait: fair A=3 B=1 vs FIFO",
            share.get("ratio") or 0.0, (fifo["two_workers"].get("share") or {}).get("ratio"),
            ":1", higher_is_better=True, target="≈ 3 (the weights)",
            met=share.get("ratio") is not None and 2.5 <= share["ratio"] <= 3.5,
            notes=f"{share.get('a_starts')} A : {share.get('b_starts')} B"),
        row("10 fairness", "dispatch: requested → started p50, idle, fair vs FIFO",
            fair["dispatch"]["p50_ms"], fifo["dispatch"]["p50_ms"], "ms", higher_is_better=False,
            target="< 5 ms", met=fair["dispatch"]["p50_ms"] < 5,
            notes=f"p99 {fair['dispatch']['p99_ms']:.1f} vs {fifo['dispatch']['p99_ms']:.1f} ms"),
        row("10 fairness", "2 worker processes, tiny ingests, fair vs FIFO",
            fair["tiny_jobs_per_s"], fifo["tiny_jobs_per_s"], "jobs/s", higher_is_better=True,
            target="≥ 0.95× FIFO", met=fair["tiny_jobs_per_s"] >= 0.95 * fifo["tiny_jobs_per_s"],
            notes=f"batch of {args.batch} 3-s WAVs, concurrency 1 per process, best of 2"),
    ]  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--saves", type=int, default=300)
    parser.add_argument("--previews", type=int, default=10)
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--dispatches", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = media.write_tone(Path(tmp) / "source.wav", seconds=SOURCE_S).read_bytes()
    fifo = mode_runs("fifo", args, data)
    fair = mode_runs("fair", args, data)
    result = {"rows": rows(fifo, fair, args), "fifo": fifo, "fair": fair, "saves": args.saves}
    path = write_result("fairness", result)
    print(table(result["rows"]))
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
