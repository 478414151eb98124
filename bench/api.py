"""Rows 1 and 4: enqueue (POST → 202) and poll (GET job view) through one API process, each
against a bare Litestar baseline on the same nats-server, driven by the same load generator.

python -m bench.api [--duration 8] [--connections 32]  → bench/results/api.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import urllib.error
import urllib.request
from typing import Any

from audioprep.shared.names import Names
from bench.common import (
    Env,
    bench_env,
    http_load,
    log,
    provision_env,
    row,
    start_http_app,
    write_result,
)

NAMES = Names()  # the default prefix: what `audioprep up` uses

INGEST_BODY = json.dumps({"source": "url", "url": "https://example.com/a.mp3"})
SAVE_PATH = "/api/audio/edit/save"
INGEST_PATH = "/api/audio/ingest"
P99_TARGET_MS = 25.0


def _post(url: str, body: str) -> tuple[int, str]:
    req = urllib.request.Request(
        url, data=body.encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def _put_source(env: Env) -> str:
    """A small stored source for save requests (the route may check that it exists)."""
    from audioprep.shared.storage import open_storage
    from tests import media

    path = media.write_tone(env.tmp / "src.wav", seconds=1.0)
    key = "sources/01BENCH0000000000000000000/src.wav"
    await open_storage(env.settings.storage).put_file(key, path)
    return key


def enqueue_request(env: Env, api: str) -> tuple[str, str, str]:
    """(path, body, label): the save route when the API has it, else URL ingest."""
    source_key = asyncio.run(_put_source(env))
    save_body = json.dumps({"sourceKey": source_key, "recipe": {"gainDb": -3}, "format": "wav"})
    status, text = _post(api + SAVE_PATH, save_body)
    if status == 202:
        return SAVE_PATH, save_body, "POST /api/audio/edit/save"
    log(f"save route answered {status} ({text[:120]!r}); using URL ingest instead")
    status, text = _post(api + INGEST_PATH, INGEST_BODY)
    if status != 202:
        raise RuntimeError(f"ingest answered {status}: {text[:300]}")
    return INGEST_PATH, INGEST_BODY, "POST /api/audio/ingest (JSON url)"


def median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median throughput (sides alternate, so drift on the box hits both)."""
    return sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]


async def _job_ids(env: Env, count: int) -> list[str]:
    """The first `count` job ids in stream JOBS (their views are the first the projector writes)."""
    from nats.js.api import ConsumerConfig, DeliverPolicy

    from audioprep.shared.nats_conn import connect

    nc = await connect(env.settings, "bench")
    try:
        js = nc.jetstream()
        sub = await js.subscribe(
            "jobs.*.*.requested",
            stream=NAMES.stream,
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        ids: list[str] = []
        while len(ids) < count:
            msg = await sub.next_msg(timeout=5)
            ids.append(msg.subject.split(".")[2])
        await sub.unsubscribe()
        return ids
    finally:
        await nc.close()


async def _wait_projected(env: Env, timeout: float) -> tuple[int, float]:
    """Wait until the projector's checkpoint reaches the stream's last sequence."""
    from nats.js.errors import KeyNotFoundError

    from audioprep.shared import names
    from audioprep.shared.nats_conn import connect

    nc = await connect(env.settings, "bench")
    try:
        js = nc.jetstream()
        last = (await js.stream_info(NAMES.stream)).state.last_seq
        state = await js.key_value(NAMES.projector_state_bucket)
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            try:
                entry = await state.get(names.PROJECTOR_CHECKPOINT_KEY)
                if int(entry.value or b"0") >= last:
                    return last, time.monotonic() - start
            except KeyNotFoundError:
                pass
            await asyncio.sleep(0.1)
        raise TimeoutError(f"projector did not reach seq {last} in {timeout}s")
    finally:
        await nc.close()


def run(duration: float, connections: int, reps: int) -> dict[str, Any]:
    with bench_env("api") as env:
        asyncio.run(provision_env(env))
        api, _ = start_http_app(env, "api", "/healthz")
        base, _ = start_http_app(env, "baseline", "/const")
        path, body, label = enqueue_request(env, api)
        log(f"enqueue: {label}, {connections} connections, {duration}s × {reps} per side")

        def load(url: str, **kw: Any) -> dict[str, Any]:
            return http_load(env.tmp, url, connections=connections, duration=duration, **kw)

        # warm both up, then alternate so slow drift on the box hits both sides alike
        http_load(env.tmp, base + "/publish", method="POST", body=body, duration=2)
        http_load(env.tmp, api + path, method="POST", body=body, duration=2)
        enq_base, enq_api = [], []
        for _ in range(reps):
            enq_base.append(load(base + "/publish", method="POST", body=body))
            enq_api.append(load(api + path, method="POST", body=body))
            log(f"  baseline {enq_base[-1]['rps']:.0f} req/s, api {enq_api[-1]['rps']:.0f} req/s")
        eb, ea = median(enq_base), median(enq_api)

        env.audioprep("projector")
        last_seq, catch_up_s = asyncio.run(_wait_projected(env, timeout=180))
        log(f"projector caught up on {last_seq} events in {catch_up_s:.1f}s")
        ids = asyncio.run(_job_ids(env, 1000))
        poll_paths = [f"/api/audio/jobs/{i}" for i in ids]
        http_load(env.tmp, api + "/api/audio/jobs/x", paths=poll_paths, duration=2)
        http_load(env.tmp, base + "/const", duration=2)
        poll_base, poll_api = [], []
        for _ in range(reps):
            poll_base.append(load(base + "/const"))
            poll_api.append(load(api + "/api/audio/jobs/x", paths=poll_paths))
            log(f"  const {poll_base[-1]['rps']:.0f} req/s, poll {poll_api[-1]['rps']:.0f} req/s")
        pb, pa = median(poll_base), median(poll_api)

    for r in (eb, ea, pb, pa):
        if r["errors"] or r["non2xx"]:
            log(f"warning: {r['errors']} errors, {r['non2xx']} non-2xx answers in a run")
    rows = [
        row(
            "1 enqueue",
            f"{label} throughput",
            ea["rps"],
            eb["rps"],
            "req/s",
            higher_is_better=True,
            target="≥ 0.9× baseline",
            met=ea["rps"] >= 0.9 * eb["rps"],
            notes=f"{connections} keep-alive clients ({ea['tool']}); baseline = bare Litestar "
            "+ one JetStream publish",
        ),
        row(
            "1 enqueue",
            "p99 latency",
            ea["p99_ms"],
            eb["p99_ms"],
            "ms",
            higher_is_better=False,
            target="< 25 ms",
            met=ea["p99_ms"] < P99_TARGET_MS,
            notes=f"p50 {ea['p50_ms']:.1f} ms (baseline {eb['p50_ms']:.1f} ms)",
        ),
        row(
            "4 poll",
            "GET /api/audio/jobs/{id} throughput",
            pa["rps"],
            pb["rps"],
            "req/s",
            higher_is_better=True,
            notes="1000 projected jobs, random order; baseline = bare Litestar constant route",
        ),
        row(
            "4 poll",
            "p99 latency",
            pa["p99_ms"],
            pb["p99_ms"],
            "ms",
            higher_is_better=False,
            notes=f"p50 {pa['p50_ms']:.1f} ms (baseline {pb['p50_ms']:.1f} ms)",
        ),
    ]
    return {
        "rows": rows,
        "runs": {
            "enqueue_api": enq_api,
            "enqueue_baseline": enq_base,
            "poll_api": poll_api,
            "poll_baseline": poll_base,
        },
        "projector_catch_up": {"events": last_seq, "seconds": round(catch_up_s, 2)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3, help="alternating runs per side")
    args = parser.parse_args()
    result = run(args.duration, args.connections, args.reps)
    path = write_result("api", result)
    print(json.dumps(result["rows"], indent=1))
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
