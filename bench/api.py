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
    has_granian,
    http_load,
    http_load_cpu,
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


async def _job_ids_newest(env: Env, count: int) -> list[str]:
    """The `count` most recently requested job ids (the enqueue rows' jobs)."""
    from audioprep.shared.nats_conn import connect

    nc = await connect(env.settings, "bench")
    try:
        js = nc.jetstream()
        last = (await js.stream_info(NAMES.stream)).state.last_seq
        ids: list[str] = []
        seq = last
        while len(ids) < count and seq > 0:
            msg = await js.get_msg(NAMES.stream, seq, direct=True)
            if msg.subject and msg.subject.endswith(".requested"):
                ids.append(msg.subject.split(".")[-2])
            seq -= 1
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
        kinds = ["api", "baseline"]
        if has_granian():
            kinds += ["api-granian", "baseline-granian"]
        else:
            log("granian not installed: uvicorn only")
        apps = {k: start_http_app(env, k, "/healthz" if "api" in k else "/const") for k in kinds}
        path, body, label = enqueue_request(env, apps["api"][0])
        nats_pid = env.server.proc.pid if env.server.proc else None
        log(f"enqueue: {label}, {connections} connections, {duration}s × {reps} per side")

        def alternate(urls: dict[str, str], **kw: Any) -> dict[str, dict[str, Any]]:
            """Warm every side, then `reps` rounds in turn (drift hits all sides alike); the
            median-throughput run of each, with its CPU per request."""
            for url in urls.values():
                http_load(env.tmp, url, duration=2, connections=connections, **kw)
            runs: dict[str, list[dict[str, Any]]] = {k: [] for k in urls}
            for _ in range(reps):
                for k, url in urls.items():
                    pid = apps[k][1].pid
                    runs[k].append(
                        http_load_cpu(
                            pid,
                            env.tmp,
                            url,
                            nats_pid=nats_pid,
                            connections=connections,
                            duration=duration,
                            **kw,
                        )
                    )
                log("  " + ", ".join(f"{k} {r[-1]['rps']:.0f} req/s" for k, r in runs.items()))
            return {k: median(r) | {"all": r} for k, r in runs.items()}

        def url(kind: str, api_path: str, base_path: str) -> str:
            return apps[kind][0] + (api_path if kind.startswith("api") else base_path)

        enq = alternate({k: url(k, path, "/publish") for k in kinds}, method="POST", body=body)

        env.audioprep("projector")
        last_seq, catch_up_s = asyncio.run(_wait_projected(env, timeout=180))
        log(f"projector caught up on {last_seq} events in {catch_up_s:.1f}s")
        ids = asyncio.run(_job_ids(env, 1000))
        poll_paths = [f"/api/audio/jobs/{i}" for i in ids]
        poll = alternate(
            {k: url(k, "/api/audio/jobs/x", "/const") for k in kinds}, paths=poll_paths
        )

    for side in (enq, poll):
        for k, r in side.items():
            if r["errors"] or r["non2xx"]:
                # a side answering errors measures something else than its row says
                raise SystemExit(f"{k}: {r['errors']} errors, {r['non2xx']} non-2xx answers")
    rows = _rows(label, connections, enq, poll, "api", "baseline", "")
    if "api-granian" in enq:
        rows += _rows(label, connections, enq, poll, "api-granian", "baseline-granian", "granian")
        for name, side in (("enqueue", enq), ("poll", poll)):
            g, u = side["api-granian"], side["api"]
            rows.append(
                row("1 server", f"{name}: API on granian vs on uvicorn", g["rps"], u["rps"],
                    "req/s", higher_is_better=True,
                    notes=f"p99 {g['p99_ms']:.1f} vs {u['p99_ms']:.1f} ms; CPU/req "
                    f"{g['cpu_us_per_req']:.0f} vs {u['cpu_us_per_req']:.0f} µs (server process)")
            )  # fmt: skip
    return {
        "rows": rows,
        "runs": {"enqueue": enq, "poll": poll},
        "projector_catch_up": {"events": last_seq, "seconds": round(catch_up_s, 2)},
    }


def _rows(
    label: str,
    connections: int,
    enq: dict[str, dict[str, Any]],
    poll: dict[str, dict[str, Any]],
    api: str,
    base: str,
    server: str,
) -> list[dict[str, Any]]:
    """Enqueue and poll against the bare app on the same server."""
    ea, eb, pa, pb = enq[api], enq[base], poll[api], poll[base]
    on = f" ({server})" if server else ""
    cpu = "CPU/req {:.0f} vs {:.0f} µs"
    nats = "; nats-server CPU/req {:.0f} vs {:.0f} µs"

    def spread(a: dict[str, Any], b: dict[str, Any], key: str) -> str:
        """The ratio in each alternating round, lowest to highest."""
        ratios = sorted(x[key] / y[key] for x, y in zip(a["all"], b["all"], strict=True))
        return f"; rounds {ratios[0]:.2f}–{ratios[-1]:.2f}×" if ratios else ""

    def server_cpu(a: dict[str, Any], b: dict[str, Any]) -> str:
        if "nats_cpu_us_per_req" not in a or "nats_cpu_us_per_req" not in b:
            return ""
        return nats.format(a["nats_cpu_us_per_req"], b["nats_cpu_us_per_req"])

    return [
        row("1 enqueue", f"{label} throughput{on}", ea["rps"], eb["rps"], "req/s",
            higher_is_better=True, target="≥ 0.9× baseline", met=ea["rps"] >= 0.9 * eb["rps"],
            notes=f"{connections} keep-alive clients ({ea['tool']}); baseline = bare Litestar "
            "+ one JetStream publish; " + cpu.format(ea["cpu_us_per_req"], eb["cpu_us_per_req"])
            + server_cpu(ea, eb) + spread(ea, eb, "rps")),
        row("1 enqueue", f"p99 latency{on}", ea["p99_ms"], eb["p99_ms"], "ms",
            higher_is_better=False, target="≤ 1.25× baseline",
            met=ea["p99_ms"] <= 1.25 * eb["p99_ms"],
            notes=f"p50 {ea['p50_ms']:.1f} ms (baseline {eb['p50_ms']:.1f} ms)"
            + spread(ea, eb, "p99_ms")),
        row("4 poll", f"GET /api/audio/jobs/{{id}} throughput{on}", pa["rps"], pb["rps"], "req/s",
            higher_is_better=True, target="≥ 0.6× baseline", met=pa["rps"] >= 0.6 * pb["rps"],
            notes="1000 projected jobs, random order; baseline = bare Litestar constant route; "
            + cpu.format(pa["cpu_us_per_req"], pb["cpu_us_per_req"])),
        row("4 poll", f"p99 latency{on}", pa["p99_ms"], pb["p99_ms"], "ms",
            higher_is_better=False, target="≤ 2× baseline", met=pa["p99_ms"] <= 2 * pb["p99_ms"],
            notes=f"p50 {pa['p50_ms']:.1f} ms (baseline {pb['p50_ms']:.1f} ms)"),
    ]  # fmt: skip


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
