"""Row 1 with a second API process: enqueue (`POST /api/audio/edit/save`) through one and two
`audioprep api` processes, each against the bare app with as many processes, in one run.

python -m bench.api_scale [--duration 4] [--connections 32] [--reps 3] [--tmpfs] [--netns] [--pin]

The API is stateless: more processes are more `audioprep api --port P` behind a load
balancer. Here each process gets its own wrk with connections/processes connections (wrk
talks to one address), all wrks at once; req/s is their sum, p99 the worse of them, CPU per
request the processes' sum over all requests. The four sides (api×1, bare×1, api×2, bare×2)
alternate round by round.

`--tmpfs`: nats-server's store on /dev/shm (no fsync: what the CPU alone allows).
`--netns`: nats-server on a simulated host (its own network namespace on a bridge,
tests/faults/netns.py), the apps and wrk in this one: the apps reach NATS over a veth
instead of loopback. The hosts still share this box's cores; `--pin` also puts nats-server
on CPU 1 and the apps and wrk on CPU 0 (a "host" of one core each, on a box other work
shares). Writes bench/results/api_scale.json. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from audioprep.shared.nats_server import NatsServer, bounded_config, wait_for_port
from bench import api as bench_api
from bench.common import (
    NATS_CONF,
    Env,
    bench_env,
    bench_settings,
    cpu_seconds,
    http_load,
    log,
    provision_env,
    start_http_app,
    write_result,
)


class NetnsServer(NatsServer):
    """A NatsServer run inside a network namespace, listening on that host's address."""

    def __init__(self, store_dir: Path, *, netns: str, address: str, log_file: Path) -> None:
        super().__init__(store_dir, port=4222, config=NATS_CONF, log_file=log_file)
        self.netns = netns
        self.address = address

    @property
    def url(self) -> str:
        return f"nats://{self.address}:{self.port}"

    def start(self, timeout: float = 10.0) -> NatsServer:
        from audioprep.shared.nats_server import nats_server_binary

        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.effective_config = bounded_config(self.config, self.store_dir, self.store_floor)
        args = ["ip", "netns", "exec", self.netns, nats_server_binary(),
                "-c", str(self.effective_config), "-a", self.address, "-p", str(self.port),
                "-js", "-sd", str(self.store_dir)]  # fmt: skip
        out = open(self.log_file or os.devnull, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(args, stdout=out, stderr=out, start_new_session=True)
        wait_for_port(self.address, self.port, timeout)
        return self


@contextlib.contextmanager
def netns_env() -> Iterator[Env]:
    """bench_env with nats-server on a simulated host (tests/faults/netns.py's Lab)."""
    from tests.faults.netns import Lab

    why = Lab.available()
    if why:
        raise SystemExit(f"--netns: {why}")
    lab = Lab()
    tmp = Path(tempfile.mkdtemp(prefix="audioprep-bench-api-scale-"))
    try:
        host = lab.add_host("nats")
        server = NetnsServer(
            tmp / "nats", netns=host.netns, address=host.address, log_file=tmp / "nats.log"
        ).start()
        env = Env(tmp=tmp, server=server, settings=bench_settings(server.url, tmp / "data"))
        try:
            yield env
        finally:
            env.stop_all()
            server.stop()
    finally:
        lab.close()
        shutil.rmtree(tmp, ignore_errors=True)


def pin(pid: int, cpu: int) -> None:
    """Every thread of `pid` on one CPU."""
    subprocess.run(["taskset", "-a", "-p", "-c", str(cpu), str(pid)], check=True,
                   capture_output=True)  # fmt: skip


def load_many(
    env: Env, urls: list[str], pids: list[int], nats_pid: int, *, connections: int,
    duration: float, body: str,
) -> dict[str, Any]:  # fmt: skip
    """All `urls` driven at once (connections split between them); one combined result."""
    per = max(1, connections // len(urls))
    before = [cpu_seconds(p) for p in pids]
    nats_before = cpu_seconds(nats_pid)

    def one(url: str) -> dict[str, Any]:
        return http_load(env.tmp, url, method="POST", body=body, connections=per,
                         duration=duration)  # fmt: skip

    with ThreadPoolExecutor(len(urls)) as pool:
        results = list(pool.map(one, urls))
    used = sum(cpu_seconds(p) - b for p, b in zip(pids, before, strict=True))
    nats_used = cpu_seconds(nats_pid) - nats_before
    requests = sum(r["requests"] for r in results)
    return {
        "rps": sum(r["rps"] for r in results),
        "requests": requests,
        "p50_ms": max(r["p50_ms"] for r in results),
        "p99_ms": max(r["p99_ms"] for r in results),
        "errors": sum(r["errors"] + r["non2xx"] for r in results),
        "cpu_us_per_req": round(used / max(1, requests) * 1e6, 1),
        "nats_cpu_us_per_req": round(nats_used / max(1, requests) * 1e6, 1),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.pin:  # this process and every child (nats-server is moved below, wrk inherits)
        os.sched_setaffinity(0, {0})
    make_env = netns_env() if args.netns else bench_env("api-scale")
    with make_env as env:
        asyncio.run(provision_env(env))
        assert env.server.proc is not None
        nats_pid = env.server.proc.pid
        apps = {
            f"{kind}{n}": start_http_app(env, kind, "/healthz" if kind == "api" else "/const")
            for kind in ("api", "baseline")
            for n in (1, 2)
        }
        if args.pin:
            pin(nats_pid, 1)
        path, body, label = bench_api.enqueue_request(env, apps["api1"][0])
        sides = {
            "api x1": ["api1"],
            "bare x1": ["baseline1"],
            "api x2": ["api1", "api2"],
            "bare x2": ["baseline1", "baseline2"],
        }
        if args.sides:
            sides = {s: sides[s] for s in args.sides.split(",")}

        def urls(names: list[str]) -> list[str]:
            return [apps[n][0] + (path if n.startswith("api") else "/publish") for n in names]

        for names in sides.values():  # warm-up
            load_many(env, urls(names), [apps[n][1].pid for n in names], nats_pid,
                      connections=args.connections, duration=2, body=body)  # fmt: skip
        runs: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}
        for r in range(args.reps):
            for side, names in sides.items():
                runs[side].append(load_many(
                    env, urls(names), [apps[n][1].pid for n in names], nats_pid,
                    connections=args.connections, duration=args.duration, body=body,
                ))  # fmt: skip
            log(f"round {r + 1}: " + ", ".join(
                f"{s} {x[-1]['rps']:.0f} req/s" for s, x in runs.items()))  # fmt: skip
    out: dict[str, Any] = {"label": label, "netns": args.netns, "pin": args.pin,
                           "tmpfs": args.tmpfs, "load": os.getloadavg(), "sides": {}}  # fmt: skip
    for side, rs in runs.items():
        med = sorted(rs, key=lambda x: x["rps"])[len(rs) // 2]
        out["sides"][side] = med | {"all": rs}
    for n in ("x1", "x2"):
        if f"api {n}" not in runs or f"bare {n}" not in runs:
            continue
        a, b = runs[f"api {n}"], runs[f"bare {n}"]
        ratios = sorted(x["rps"] / y["rps"] for x, y in zip(a, b, strict=True))
        p99s = sorted(x["p99_ms"] / y["p99_ms"] for x, y in zip(a, b, strict=True))
        out[f"ratio {n}"] = {
            "rps": round(statistics.median(ratios), 3),
            "rps_rounds": [round(ratios[0], 3), round(ratios[-1], 3)],
            "p99": round(statistics.median(p99s), 3),
            "p99_rounds": [round(p99s[0], 3), round(p99s[-1], 3)],
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per run")
    parser.add_argument("--connections", type=int, default=32, help="in all, split per process")
    parser.add_argument("--reps", type=int, default=3, help="alternating rounds")
    parser.add_argument("--sides", default="", help="some of: api x1,bare x1,api x2,bare x2")
    parser.add_argument("--netns", action="store_true", help="nats-server on a simulated host")
    parser.add_argument("--pin", action="store_true", help="nats-server on CPU 1, the rest on 0")
    parser.add_argument(
        "--tmpfs", action="store_true", help="nats-server's store on /dev/shm (no disk fsync)"
    )
    args = parser.parse_args()
    if args.tmpfs:
        tempfile.tempdir = "/dev/shm"
    result = run(args)
    print(f"{'side':8} {'req/s':>7} {'p99 ms':>7} {'CPU µs/req':>10} {'nats µs/req':>11}")
    for side, r in result["sides"].items():
        print(f"{side:8} {r['rps']:7.0f} {r['p99_ms']:7.1f} {r['cpu_us_per_req']:10.0f} "
              f"{r['nats_cpu_us_per_req']:11.0f}")  # fmt: skip
    for n in ("x1", "x2"):
        if f"ratio {n}" not in result:
            continue
        x = result[f"ratio {n}"]
        print(f"api/bare {n}: req/s {x['rps']}× (rounds {x['rps_rounds'][0]}–"
              f"{x['rps_rounds'][1]}), p99 {x['p99']}× (rounds {x['p99_rounds'][0]}–"
              f"{x['p99_rounds'][1]})")  # fmt: skip
    path = write_result("api_scale", result)
    log(f"wrote {path}")
    print(json.dumps({k: v for k, v in result.items() if k.startswith("ratio")}))


if __name__ == "__main__":
    main()
