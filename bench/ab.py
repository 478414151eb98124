"""Before/after of the API hot path in one run: the API of another git revision (`--before`,
exported with `git archive`) and the API of this tree, side by side on one nats-server, the
same load generator alternating between them (so drift on the shared box hits both).

python -m bench.ab --before 47311e9 [--rows save,poll] [--duration 4] [--reps 3]
→ bench/results/ab.json and a markdown table on stdout

It is how each fix in bench/RESULTS.md was measured; `make bench` does not run it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.api import _job_ids, _wait_projected, enqueue_request, median
from bench.common import (
    ROOT,
    Env,
    bench_env,
    free_port,
    http_load,
    http_load_cpu,
    log,
    provision_env,
    wait_http,
    write_result,
)


def export_tree(rev: str, into: Path) -> Path:
    """`git archive rev` unpacked into `into` (the revision's code, nothing else)."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "archive", rev], cwd=ROOT, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def start_api(env: Env, tree: Path, name: str, **extra: str) -> tuple[str, int]:
    """`audioprep api` importing the code of `tree` (cwd and PYTHONPATH both point at it)."""
    port = free_port()
    cmd = [sys.executable, "-m", "audioprep.services.cli.main", "api", "--port", str(port)]
    out = open(env.tmp / f"{name}.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        cmd, env=env.env(PYTHONPATH=str(tree), **extra), stdout=out, stderr=out, cwd=tree
    )
    env.procs.append(proc)
    base = f"http://127.0.0.1:{port}"
    wait_http(base + "/healthz", timeout=60)
    return base, proc.pid


def alternate(
    env: Env, sides: dict[str, tuple[str, int]], reps: int, duration: float, **load: Any
) -> dict[str, dict[str, Any]]:
    """Warm each side, then `reps` runs per side in turn; the median-throughput run of each,
    with the median CPU per request over all runs of that side."""
    for url, _ in sides.values():
        http_load(env.tmp, url, duration=2, **load)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
    for _ in range(reps):
        for name, (url, pid) in sides.items():
            nats_pid = env.server.proc.pid if env.server.proc else None
            runs[name].append(
                http_load_cpu(pid, env.tmp, url, nats_pid=nats_pid, duration=duration, **load)
            )
        log(
            "  "
            + ", ".join(
                f"{n} {r[-1]['rps']:.0f} req/s {r[-1]['cpu_us_per_req']:.0f} µs CPU/req"
                for n, r in runs.items()
            )
        )
    out = {}
    for name, r in runs.items():
        cpu = sorted(x["cpu_us_per_req"] for x in r)[len(r) // 2]
        out[name] = median(r) | {"runs": r, "cpu_us_per_req": cpu}
    return out


def run(before: str, rows: list[str], duration: float, reps: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="audioprep-ab-") as tmp, bench_env("ab") as env:
        old = export_tree(before, Path(tmp) / "before")
        asyncio.run(provision_env(env))
        apis = {"before": start_api(env, old, "api-before"), "after": start_api(env, ROOT, "api")}
        path, body, label = enqueue_request(env, apis["after"][0])
        out: dict[str, Any] = {"before": before, "label": label}
        if "save" in rows:
            log(f"{label}: before ({before}) vs after (this tree)")
            sides = {n: (u + path, pid) for n, (u, pid) in apis.items()}
            out["save"] = alternate(env, sides, reps, duration, method="POST", body=body)
        if "poll" in rows:
            env.audioprep("projector")
            asyncio.run(_wait_projected(env, timeout=180))
            ids = asyncio.run(_job_ids(env, 1000))
            paths = [f"/api/audio/jobs/{i}" for i in ids]
            log("GET /api/audio/jobs/{id}: before vs after")
            sides = {n: (u + "/api/audio/jobs/x", pid) for n, (u, pid) in apis.items()}
            out["poll"] = alternate(env, sides, reps, duration, paths=paths)
    return out


def table(result: dict[str, Any]) -> str:
    lines = [
        "| row | before req/s | after req/s | after/before | before p99 ms | after p99 ms "
        "| before µs CPU/req | after µs CPU/req | nats-server µs CPU/req (before / after) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key in ("save", "poll"):
        if key not in result:
            continue
        b, a = result[key]["before"], result[key]["after"]
        lines.append(
            f"| {key} | {b['rps']:,.0f} | {a['rps']:,.0f} | {a['rps'] / b['rps']:.2f}× "
            f"| {b['p99_ms']:.1f} | {a['p99_ms']:.1f} "
            f"| {b['cpu_us_per_req']:.0f} | {a['cpu_us_per_req']:.0f} "
            f"| {b.get('nats_cpu_us_per_req', 0):.0f} / {a.get('nats_cpu_us_per_req', 0):.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--before", required=True, help="git revision to compare with")
    parser.add_argument("--rows", default="save,poll")
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    started = time.monotonic()
    result = run(args.before, args.rows.split(","), args.duration, args.reps)
    result["seconds"] = round(time.monotonic() - started, 1)
    write_result("ab", result)
    print(table(result))
    print(json.dumps({k: result[k] for k in ("before", "label", "seconds")}))


if __name__ == "__main__":
    main()
