"""What reading an old job's events costs nats-server: a cold message block, or not.

bench/growth.py's "SSE first event of a random job of the history" row is ~4× its small-stream
figure. This separates the server's part from the API's: after preloading a 30-day history
(300k jobs, ~2M events) and restarting nats-server (its block cache empty, the files in the
page cache), for jobs spread evenly over the history — one per message block — it times the
read the SSE route makes first (a direct get of the job's first event, `next_by_subj` on
`jobs.*.<id>.>` from seq 1, batch 1): cold (the block's first read since the restart), at
once again (warm), and the rest of the job's events after it. The newest jobs are the
warm reference, as the small stream's row is. Prints the block files' sizes too.

python -m bench.old_job_read [--jobs 300000] [--samples 40]  → bench/results/old_job_read.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from audioprep.shared import direct_get
from audioprep.shared.names import Names
from audioprep.shared.nats_conn import connect
from bench.common import (
    Env,
    bench_env,
    fast_nats_conf,
    log,
    provision_env,
    summary_ms,
    write_result,
)
from bench.growth import preload

NAMES = Names()
TIMEOUT_S = 10.0


async def timed_reads(env: Env, job_ids: list[str]) -> dict[str, list[float]]:
    """Per job: the first event cold, the same at once again, then the rest of its events."""
    nc = await connect(env.settings, "bench-old-read")
    out: dict[str, list[float]] = {"cold": [], "warm": [], "rest": []}
    try:
        for job_id in job_ids:
            subject = NAMES.job_subjects(job_id)
            for label in ("cold", "warm"):
                t0 = time.perf_counter()
                msgs = await direct_get.next_by_subject(nc, NAMES.stream, subject, 1, 1, TIMEOUT_S)
                out[label].append(time.perf_counter() - t0)
            first = direct_get.sequence(msgs[0])
            pending = direct_get.num_pending(msgs[0]) or 0
            t0 = time.perf_counter()
            rest = await direct_get.next_by_subject(
                nc, NAMES.stream, subject, first + 1, pending, TIMEOUT_S
            )
            out["rest"].append(time.perf_counter() - t0)
            assert len(rest) == pending, (job_id, len(rest), pending)
    finally:
        await nc.close()
    return out


def block_files(env: Env) -> dict[str, Any]:
    blocks = sorted((env.tmp / "nats").rglob(f"streams/{NAMES.stream}/msgs/*.blk"))
    sizes = [p.stat().st_size for p in blocks]
    return {
        "blocks": len(blocks),
        "block_mib_max": round(max(sizes, default=0) / 2**20, 1),
        "stream_mib": round(sum(sizes) / 2**20, 1),
    }


def run(jobs: int, samples: int) -> dict[str, Any]:
    with bench_env("old-read") as env:
        env.restart_server(fast_nats_conf(env.tmp))
        asyncio.run(provision_env(env))
        t0 = time.perf_counter()
        ids, last = asyncio.run(preload(env, jobs))
        log(f"preloaded {jobs} jobs, {last} events in {time.perf_counter() - t0:.0f}s")
        env.restart_server()  # deploy/nats.conf, an empty block cache
        files = block_files(env)
        log(f"  {json.dumps(files)}")
        step = max(1, (len(ids) * 9 // 10) // samples)
        old = [ids[i * step] for i in range(samples)]  # one per block, oldest 90 %
        newest = ids[-samples:]
        result: dict[str, Any] = {"jobs": jobs, "events": last, **files}
        for label, chosen in (("old", old), ("newest", newest)):
            times = asyncio.run(timed_reads(env, chosen))
            for part, values in times.items():
                s = summary_ms(values)
                result[f"{label}_{part}_p50_ms"] = s["p50_ms"]
                result[f"{label}_{part}_p90_ms"] = s["p90_ms"]
        log("  " + json.dumps({k: v for k, v in result.items() if k.endswith("_ms")}))
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=300_000)
    parser.add_argument("--samples", type=int, default=40)
    args = parser.parse_args()
    result = run(args.jobs, args.samples)
    path = write_result("old_job_read", result)
    print(json.dumps(result, indent=1))
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
