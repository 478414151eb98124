"""`projection rebuild` of two revisions on the same stream, alternately: peak RSS, CPU time and
events/s at growing history sizes (the growth rows of bench/growth.py, without the rest).

python -m bench.rebuild_memory --baseline DIR [--jobs 30000 300000] [--rounds 2]
    [--caches 100 1000 100000]   → bench/results/rebuild_memory.json

DIR is a checkout of the revision to compare with (e.g. `git archive main | tar -x -C DIR`).
The history is bench/growth.py's (~6.5 events a job, 200 jobs in flight), preloaded with fsync
off; every rebuild runs on deploy/nats.conf in its own process (peak RSS from VmHWM, CPU time
from the child's rusage) after the bucket was emptied, so each one writes every view.
`--caches`: extra runs of this tree at the largest size with other `--cache` sizes (below 200,
the jobs in flight, nearly every event is a read-back). Then, at the largest size, both
revisions on a full bucket that is already right (the whole bucket read, nothing written),
plain and with `--check`.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from audioprep.shared import names
from audioprep.shared.names import Names
from audioprep.shared.nats_conn import connect
from bench.common import (
    ROOT,
    Env,
    bench_env,
    fast_nats_conf,
    log,
    peak_rss_mib,
    provision_env,
    write_result,
)
from bench.growth import preload, skip_backlog

NAMES = Names()
READ_BACK = re.compile(r"(\d+) read back")


async def empty_bucket(env: Env) -> None:
    nc = await connect(env.settings, "bench")
    try:
        await nc.jetstream().purge_stream(names.kv_stream(NAMES.jobs_bucket))
    finally:
        await nc.close()


def rebuild_once(env: Env, tree: Path, *args: str, empty: bool = True) -> dict[str, Any]:
    """`audioprep projection rebuild --quiet` of the code in `tree`, in its own process, after
    emptying the bucket (or on the bucket as the last run left it: every view already right)."""
    if empty:
        asyncio.run(empty_bucket(env))
    cmd = [sys.executable, "-m", "audioprep.services.cli.main", "projection", "rebuild"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.Popen(
        [*cmd, "--quiet", *args], env=env.env(PYTHONPATH=str(tree)), cwd=tree,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    peak_mib = peak_rss_mib(proc)
    out, err = proc.communicate()
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in (0, 1):  # 1: `--check` found differences
        raise RuntimeError(f"rebuild failed: {err.decode()[-2000:]}")
    text = out.decode()
    found = READ_BACK.search(text)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "peak_mib": round(peak_mib, 1),
            "read_back": int(found.group(1)) if found else None,
            "line": text.strip().splitlines()[0]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--baseline", type=Path, required=True, help="checkout to compare with")
    parser.add_argument("--jobs", type=int, nargs="+", default=[30_000, 300_000])
    parser.add_argument("--rounds", type=int, default=2, help="runs of each revision per size")
    parser.add_argument("--caches", type=int, nargs="*", default=[100, 1000, 100_000])
    args = parser.parse_args()
    runs: list[dict[str, Any]] = []
    trees = {"before": args.baseline.resolve(), "after": ROOT}
    with bench_env("rebuild-memory") as env:
        asyncio.run(provision_env(env))
        loaded = last = 0
        for jobs in sorted(args.jobs):
            env.restart_server(fast_nats_conf(env.tmp))
            t0 = time.perf_counter()
            _, last = asyncio.run(preload(env, jobs - loaded))
            loaded = jobs
            log(f"preloaded to {jobs} jobs (seq {last}) in {time.perf_counter() - t0:.0f}s")
            env.restart_server()
            asyncio.run(skip_backlog(env))
            variants: list[tuple[str, list[str], bool]] = []
            for _ in range(args.rounds):
                variants += [("before", [], True), ("after", [], True)]
            if jobs == max(args.jobs):
                variants += [("after", ["--cache", str(c)], True) for c in args.caches]
                # a full bucket, already right: read whole, nothing written
                for extra in ([], ["--check"]):
                    variants += [("before", extra, False), ("after", extra, False)]
            for rev, extra, empty in variants:
                r = rebuild_once(env, trees[rev], *extra, empty=empty)
                r.update(rev=rev, args=extra, bucket="empty" if empty else "full", jobs=jobs,
                         events=last,
                         events_per_s=round(last / r["wall_s"]),
                         cpu_us_per_event=round(1e6 * r["cpu_s"] / last, 1))  # fmt: skip
                log(f"  {rev} {' '.join(extra)} at {jobs} jobs, bucket {r['bucket']}: {r}")
                runs.append(r)
    path = write_result("rebuild_memory", {"runs": runs})
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
