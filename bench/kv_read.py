"""Benchmark: ways to list a KV bucket's keys, how often each answers incompletely right after
leader changes, and what one listing costs (shared/kv_read.py chose the last two rows).

Run: python -m bench.kv_read [--keys 100] [--new 600] [--seconds 20] [--rounds 100]
A 3-node cluster (replicas 3). Part 1, correctness: two writers keep creating keys under the
listed filter (up to --new, then new revisions of them) while the bucket stream's leader
steps down every 0.7 s; every strategy lists again and again on its own connection, and an
answer is wrong when it lacks a key whose write was acknowledged before the listing began.
Part 2, cost: 100 listings each of --keys keys in the quiet cluster afterwards (wall time,
this process's CPU, wrong answers, consumers still on the stream 3.5 s later). Writes
bench/results/kv_read.json. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nats.aio.client import Client  # noqa: E402
from nats.aio.msg import Msg  # noqa: E402
from nats.js.api import ConsumerConfig, DeliverPolicy  # noqa: E402

from audioprep.shared import direct_get, kv_read, names  # noqa: E402
from audioprep.shared.nats_cluster import NatsCluster, wait_for_jetstream  # noqa: E402
from audioprep.shared.nats_conn import connect  # noqa: E402
from audioprep.shared.provision import provision  # noqa: E402
from audioprep.shared.settings import Settings  # noqa: E402
from bench.common import machine, pct, write_result  # noqa: E402

BUCKET = Settings().names.presets_bucket
STREAM = names.kv_stream(BUCKET)
PREFIX = names.kv_subject(BUCKET, "")
Strategy = Callable[[Client, str], Awaitable[set[str]]]


def _live(msg: Msg) -> bool:
    return (msg.headers or {}).get("KV-Operation") is None


async def watch_marker(nc: Client, keys: str) -> set[str]:
    """nats-py's KV watch up to its "caught up" marker (presets and usage before)."""
    kv = await nc.jetstream().key_value(BUCKET)
    watcher = await kv.watch(keys, ignore_deletes=True, meta_only=True)
    found = set()
    try:
        async for entry in watcher:
            if entry is None:
                break
            found.add(entry.key)
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]
    return found


async def _consume(
    nc: Client, keys: str, done_at: Callable[[Msg, dict[str, bool]], bool]
) -> set[str]:
    out: dict[str, bool] = {}
    done = asyncio.Event()

    async def on_msg(msg: Msg) -> None:
        out[msg.subject.removeprefix(PREFIX)] = _live(msg)
        if done_at(msg, out):
            done.set()

    sub = await nc.jetstream().subscribe(
        PREFIX + keys,
        stream=STREAM,
        ordered_consumer=True,
        idle_heartbeat=1.0,
        cb=on_msg,
        inactive_threshold=2.0,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.LAST_PER_SUBJECT, headers_only=True),
    )
    try:
        await asyncio.wait_for(done.wait(), timeout=10)
    finally:
        await sub.unsubscribe()
    return {k for k, live in out.items() if live}


async def pending_zero(nc: Client, keys: str) -> set[str]:
    """An ordered consumer until a message says nothing is pending (num_pending 0), after a
    STREAM.INFO with subjects_filter for the empty case."""
    info = await nc.jetstream().stream_info(STREAM, subjects_filter=PREFIX + keys)
    if not info.state.subjects:
        return set()
    return await _consume(nc, keys, lambda msg, _: msg.metadata.num_pending == 0)


async def subject_count(nc: Client, keys: str) -> set[str]:
    """STREAM.INFO with subjects_filter counts the keys; an ordered consumer until that many."""
    info = await nc.jetstream().stream_info(STREAM, subjects_filter=PREFIX + keys)
    want = len(info.state.subjects or {})
    if want == 0:
        return set()
    return await _consume(nc, keys, lambda _, out: len(out) >= want)


async def multi_last_unchecked(nc: Client, keys: str) -> set[str]:
    """One multi_last direct get, whichever replica answers (webhook endpoints before)."""
    request = {"multi_last": [PREFIX + keys]}
    msgs = await direct_get.direct_get(nc, STREAM, request, 5.0)
    return {direct_get.subject_of(m).removeprefix(PREFIX) for m in msgs if _live(m)}


async def leader_then_consumer(nc: Client, keys: str) -> set[str]:
    return set(await kv_read.read_latest(nc, BUCKET, keys, direct=False))


async def leader_then_direct(nc: Client, keys: str) -> set[str]:
    return set(await kv_read.read_latest(nc, BUCKET, keys))


STRATEGIES: dict[str, Strategy] = {
    "watch_marker (old)": watch_marker,
    "pending_zero": pending_zero,
    "subject_count": subject_count,
    "multi_last_unchecked (old)": multi_last_unchecked,
    "leader_seq+consumer": leader_then_consumer,
    "leader_seq+direct_get (kv_read)": leader_then_direct,
}


async def correctness(settings: Settings, nc: Client, seconds: float) -> dict[str, Any]:
    acked: dict[str, float] = {}
    stop = asyncio.Event()

    async def writer(w: int) -> None:
        c = await connect(settings, f"bench-writer-{w}")
        kv = await c.jetstream(timeout=2).key_value(BUCKET)
        i = 0
        while not stop.is_set():
            key = f"t1.w{w}x{i % (args.new // 2):05d}"  # then new revisions of those keys
            try:
                await kv.put(key, b"{}")
                acked.setdefault(key, time.monotonic())
                i += 1
            except Exception:  # an election
                await asyncio.sleep(0.05)
        await c.close()

    stepdowns = 0

    async def faults() -> None:
        nonlocal stepdowns
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await asyncio.sleep(0.7)
            with contextlib.suppress(Exception):
                reply = await nc.request(names.stream_leader_stepdown_subject(STREAM), b"", 2)
                stepdowns += bool(json.loads(reply.data).get("success"))
        stop.set()

    reads, wrong, errors, missing = Counter[str](), Counter[str](), Counter[str](), Counter[str]()

    async def reader(name: str, strategy: Strategy) -> None:
        c = await connect(settings, f"bench-{name.split()[0]}")
        while not stop.is_set():
            started = time.monotonic()
            due = {k for k, t in acked.items() if t < started}
            try:
                got = await strategy(c, "t1.*")
            except Exception:
                errors[name] += 1
                await asyncio.sleep(0.02)
                continue
            reads[name] += 1
            if due - got:
                wrong[name] += 1
                missing[name] += len(due - got)
            await asyncio.sleep(0.02)
        await c.close()

    base = [f"t1.k{i:04d}" for i in range(args.keys)]
    kv = await nc.jetstream().key_value(BUCKET)
    await asyncio.gather(*(kv.put(k, b"{}") for k in base))
    acked.update(dict.fromkeys(base, 0.0))
    await asyncio.gather(
        faults(),
        writer(0),
        writer(1),
        *(reader(name, s) for name, s in STRATEGIES.items()),
    )
    return {
        "stepdowns": stepdowns,
        "keys_at_end": len(acked),
        "rows": {
            n: {
                "reads": reads[n],
                "wrong": wrong[n],
                "keys_missing": missing[n],
                "errors": errors[n],
            }
            for n in STRATEGIES
        },
    }


async def cost(nc: Client, rounds: int) -> dict[str, Any]:
    js = nc.jetstream()
    kv = await js.key_value(BUCKET)
    await asyncio.gather(*(kv.put(f"t2.k{i:04d}", b"{}") for i in range(args.keys)))
    out: dict[str, Any] = {}

    async def consumers() -> int:
        await asyncio.sleep(kv_read.CONSUMER_GONE_S + 1.5)  # a read's own consumer is gone
        return (await js.stream_info(STREAM)).state.consumer_count

    for name, strategy in STRATEGIES.items():
        before = await consumers()
        walls, wrong, cpu0 = [], 0, time.process_time()
        for _ in range(rounds):
            t0 = time.perf_counter()
            wrong += len(await strategy(nc, "t2.*")) != args.keys
            walls.append(time.perf_counter() - t0)
        cpu = (time.process_time() - cpu0) / rounds
        after = await consumers()
        out[name] = {
            "p50_ms": round(pct(walls, 50) * 1000, 2),
            "p90_ms": round(pct(walls, 90) * 1000, 2),
            "client_cpu_ms": round(cpu * 1000, 2),
            "wrong": wrong,
            "consumers_left": after - before,
        }
    return out


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cluster = NatsCluster(Path(tmp) / "cluster").start()
        try:
            await wait_for_jetstream(cluster.url)
            settings = Settings(nats_url=cluster.url, data_dir=Path(tmp), stream_replicas=3)
            nc = await connect(settings, "bench")
            for _ in range(60):  # a fresh cluster can refuse R3 assets for a moment
                try:
                    await provision(nc.jetstream(), settings)
                    break
                except Exception:
                    await asyncio.sleep(0.5)
            right = await correctness(settings, nc, args.seconds)
            cheap = await cost(nc, args.rounds)
            await nc.close()
        finally:
            cluster.stop()
    print(
        f"\nKV listing, 3-node cluster: {args.keys} keys to start, two writers adding more, "
        f"{right['stepdowns']} leader step-downs in {args.seconds:.0f} s, "
        f"{right['keys_at_end']} keys at the end\n"
    )
    print(
        "| strategy | wrong / reads (step-downs) | keys missing | errors "
        f"| quiet: wrong / {args.rounds} | p50 ms | p90 ms | CPU ms | consumers left |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name in STRATEGIES:
        r, c = right["rows"][name], cheap[name]
        print(
            f"| {name} | {r['wrong']} / {r['reads']} | {r['keys_missing']} | {r['errors']} "
            f"| {c['wrong']} | {c['p50_ms']} | {c['p90_ms']} | {c['client_cpu_ms']} "
            f"| {c['consumers_left']} |"
        )
    path = write_result(
        "kv_read", {"machine": machine(), "args": vars(args), "correctness": right, "cost": cheap}
    )
    print(f"\n{path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--new", type=int, default=600, help="keys the writers add, at most")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=100, help="listings per strategy (cost)")
    args = parser.parse_args()
    asyncio.run(main())
