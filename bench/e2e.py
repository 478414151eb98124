"""Row 6: end to end — a 3-second WAV upload POST until the poll says completed, one job at a
time through the whole system (API, nats-server, projector, 2 worker processes as
`audioprep up` runs them). Baseline: the media work alone (`analyse` of the same file,
in-process), so the ratio is the system's overhead factor.

python -m bench.e2e [--jobs 100] [--seconds 3]  → bench/results/e2e.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import Env, bench_env, log, provision_env, row, start_http_app, summary_ms
from bench.common import write_result as write
from tests import media

POLL_EVERY_S = 0.005
WORKERS = 2


async def one_job(client: httpx.AsyncClient, data: bytes) -> tuple[float, str]:
    t0 = time.perf_counter()
    resp = await client.post(
        "/api/audio/ingest", files={"file": ("tone.wav", data, "audio/wav")}, timeout=30
    )
    if resp.status_code != 202:
        raise RuntimeError(f"upload answered {resp.status_code}: {resp.text[:300]}")
    job_id = resp.json()["jobId"]
    deadline = t0 + 60
    while time.perf_counter() < deadline:
        view = (await client.get(f"/api/audio/jobs/{job_id}")).json()
        if view.get("status") in ("completed", "failed", "cancelled"):
            return time.perf_counter() - t0, str(view["status"])
        await asyncio.sleep(POLL_EVERY_S)
    raise TimeoutError(f"job {job_id} not finished after 60 s")


async def drive(api: str, wav: Path, jobs: int) -> list[float]:
    data = wav.read_bytes()
    async with httpx.AsyncClient(base_url=api) as client:
        for _ in range(3):  # warm-up: imports, forkservers, connections
            await one_job(client, data)
        out = []
        for _ in range(jobs):
            latency, status = await one_job(client, data)
            if status != "completed":
                raise RuntimeError(f"e2e job ended {status}")
            out.append(latency)
        return out


def bare_analyse(wav: Path, runs: int = 10) -> list[float]:
    from services.worker.pipeline.analyse import analyse

    analyse(str(wav), points=2000)
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        analyse(str(wav), points=2000)
        out.append(time.perf_counter() - t0)
    return out


def start_stack(env: Env) -> str:
    asyncio.run(provision_env(env))
    env.audioprep("projector")
    for i in range(WORKERS):
        env.audioprep("worker", log_name=f"worker-{i}")
    api, _ = start_http_app(env, "api", "/healthz")
    return api


def run(jobs: int, seconds: float) -> dict[str, Any]:
    with bench_env("e2e") as env:
        wav = media.write_tone(env.tmp / "tone.wav", seconds=seconds)
        api = start_stack(env)
        lat = asyncio.run(drive(api, wav, jobs))
        base = bare_analyse(wav)
    e, b = summary_ms(lat), summary_ms(base)
    log(f"e2e {e}; bare analyse {b}")
    rows = [
        row(
            "6 end to end",
            f"{seconds:g}-s upload → completed poll, p50",
            e["p50_ms"],
            b["p50_ms"],
            "ms",
            higher_is_better=False,
            notes=f"{jobs} jobs one at a time, poll every {POLL_EVERY_S * 1000:g} ms; "
            "baseline = analyse() alone in-process",
        ),
        row(
            "6 end to end",
            "p99",
            e["p99_ms"],
            b["p99_ms"],
            "ms",
            higher_is_better=False,
        ),
    ]
    return {"rows": rows, "e2e": e, "bare_analyse": b, "workers": WORKERS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    result = run(args.jobs, args.seconds)
    path = write("e2e", result)
    print(json.dumps(result["rows"], indent=1))
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
