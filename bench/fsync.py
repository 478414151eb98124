"""nats-server's fsync per acknowledged publish on this disk: the latency of one acked
JetStream publish (one at a time, a ~400-byte event into a file stream) and of one KV put
(and, for scale, of one direct get),
with `sync_interval: always` (deploy/nats.conf, what `audioprep up` runs) against the
server's default (fsync every 2 minutes), two servers side by side, rounds alternating.

python -m bench.fsync [--rounds 5] [--n 200]  → bench/results/fsync.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client
from nats.js.api import StreamConfig

from audioprep.shared.nats_server import NatsServer
from bench.common import NATS_CONF, fast_nats_conf, log, row, summary_ms
from bench.common import write_result as write

PAYLOAD = b"x" * 400


@contextlib.contextmanager
def _server(tmp: Path, name: str, config: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp / name, config=config, log_file=tmp / f"{name}.log").start()
    try:
        yield server
    finally:
        server.stop()


async def _setup(url: str) -> Client:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="FS", subjects=["fs.>"], allow_direct=True))
    await js.create_key_value(bucket="fskv")
    return nc


async def _publishes(nc: Client, n: int) -> list[float]:
    js = nc.jetstream()
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        await js.publish(f"fs.job.{i}", PAYLOAD)
        out.append(time.perf_counter() - t0)
    return out


async def _puts(nc: Client, n: int) -> list[float]:
    kv = await nc.jetstream().key_value("fskv")
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        await kv.put(f"k{i % 50}", PAYLOAD)
        out.append(time.perf_counter() - t0)
    return out


async def _gets(nc: Client, n: int) -> list[float]:
    """A direct get of a subject's last message (how the services read events)."""
    js = nc.jetstream()
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        await js.get_last_msg("FS", f"fs.job.{i % 50}", direct=True)
        out.append(time.perf_counter() - t0)
    return out


async def measure(always: str, default: str, rounds: int, n: int) -> dict[str, list[float]]:
    clients = {"always": await _setup(always), "default": await _setup(default)}
    got: dict[str, list[float]] = {f"{s}_{w}": [] for s in clients for w in ("pub", "kv", "get")}
    try:
        for nc in clients.values():  # warm-up
            await _publishes(nc, 20)
            await _puts(nc, 20)
        for _ in range(rounds):
            for side, nc in clients.items():
                got[f"{side}_pub"] += await _publishes(nc, n)
                got[f"{side}_kv"] += await _puts(nc, n)
                got[f"{side}_get"] += await _gets(nc, n)
    finally:
        for nc in clients.values():
            await nc.close()
    return got


def run(rounds: int, n: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="audioprep-bench-fsync-"))
    try:
        with (
            _server(tmp, "always", NATS_CONF) as always,
            _server(tmp, "default", fast_nats_conf(tmp)) as default,
        ):
            got = asyncio.run(measure(always.url, default.url, rounds, n))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    s = {k: summary_ms(v) for k, v in got.items()}
    log("fsync: " + "; ".join(f"{k} p50 {v['p50_ms']:.2f} ms" for k, v in s.items()))
    rows = [
        row(
            "fsync",
            f"acked publish, p50 ({what})",
            s[f"always_{key}"]["p50_ms"],
            s[f"default_{key}"]["p50_ms"],
            "ms",
            higher_is_better=False,
            notes="sync_interval: always vs the default, one at a time, rounds alternating; "
            f"fsync ≈ {s[f'always_{key}']['p50_ms'] - s[f'default_{key}']['p50_ms']:.2f} ms",
        )
        for key, what in (("pub", "JetStream publish"), ("kv", "KV put"))
    ]
    return {"rows": rows, "latency": s, "rounds": rounds, "n": n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=200)
    args = parser.parse_args()
    result = run(args.rounds, args.n)
    path = write("fsync", result)
    print(json.dumps(result["rows"], indent=1))
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
