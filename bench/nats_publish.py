"""nats-server's CPU per stored message, without HTTP: what our create-once `JobRequested`
costs the server against the bare app's header-less publish, and which part of it is which.

python -m bench.nats_publish [--count 8000] [--rounds 5] [--inflight 32] [--tmpfs]
                             [--variants bare,create,...] [--perf VARIANT]

One publisher (the API's own `AckPublisher`, one connection, `--inflight` messages waiting for
their acks) into a fresh nats-server on deploy/nats.conf, provisioned as `audioprep up` does
(JOBS with its durable consumers); the bare app's stream next to it. Each round publishes
`--count` messages per variant, the variants in turn (drift on a shared box hits all alike);
nats-server's user + system CPU from /proc per message, the median round and the range.
`--perf VARIANT` records one extra run of that variant with `perf record -g` on nats-server
and prints the top of `perf report`. Writes bench/results/nats_publish.json. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audioprep.domain.events import JobRequested
from audioprep.shared.event_store import encode_event
from audioprep.shared.ids import new_job_id
from audioprep.shared.js_publish import AckPublisher, header_block
from audioprep.shared.names import Names
from bench.common import bench_env, log, provision_env, write_result

NAMES = Names()
BARE_STREAM = "BENCH_BASELINE"  # bench/baseline_app.py's stream and subjects
CONS_STREAM = "BENCH_CONSUMED"  # the same with one durable consumer
SAVE_BODY = json.dumps(
    {"sourceKey": "sources/01BENCH0000000000000000000/src.wav", "recipe": {"gainDb": -3},
     "format": "wav"}
).encode()  # fmt: skip
TRACEPARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@dataclass(frozen=True)
class Variant:
    """One message shape: the subject, body and header block for a fresh job id."""

    name: str
    about: str
    make: Callable[[str, int], tuple[str, bytes, bytes]]


def _event(job_id: str) -> bytes:
    return encode_event(
        JobRequested(
            job_id=job_id,
            kind="save",
            source_key="sources/01BENCH0000000000000000000/src.wav",
            recipe={"gainDb": -3},
            format="wav",
        )
    )


def _jobs(
    *, msg_id: bool, expect: str | None, traceparent: bool, names: Names = NAMES,
    trace_header: tuple[bytes, bytes] = (b"traceparent", TRACEPARENT),
) -> Any:  # fmt: skip
    """A JobRequested on `jobs.save.<id>.requested` with some of the create-once headers;
    `expect` is "wildcard" (`jobs.*.<id>.>`, what request_job sends), "literal" (the
    message's own subject: no -Subject header) or None."""

    def make(job_id: str, n: int) -> tuple[str, bytes, bytes]:
        pairs: list[tuple[bytes, bytes]] = []
        if msg_id:
            pairs.append((b"Nats-Msg-Id", job_id.encode()))
        if expect:
            pairs.append((b"Nats-Expected-Last-Subject-Sequence", b"0"))
        if expect == "wildcard":
            subjects = names.job_subjects(job_id).encode()
            pairs.append((b"Nats-Expected-Last-Subject-Sequence-Subject", subjects))
        if traceparent:
            pairs.append(trace_header)
        block = header_block(*pairs) if pairs else b""
        return names.event_subject("save", job_id, "requested"), _event(job_id), block

    return make


def _bare(job_id: str, n: int) -> tuple[str, bytes, bytes]:
    return f"bench.base.{n}", SAVE_BODY, b""


def _bare_cons(job_id: str, n: int) -> tuple[str, bytes, bytes]:
    return f"bench.cons.{n}", SAVE_BODY, b""


def _bare_on(stream: str) -> Callable[[str, int], tuple[str, bytes, bytes]]:
    """The bare app's message into ABLATION stream `stream` (bare + one JOBS setting)."""

    def make(job_id: str, n: int) -> tuple[str, bytes, bytes]:
        return f"bench.{stream}.{n}", SAVE_BODY, b""

    return make


def _bare_job_subject(job_id: str, n: int) -> tuple[str, bytes, bytes]:
    return f"bench.base.save.{job_id}.requested", SAVE_BODY, b""


def _event_on_bare(job_id: str, n: int) -> tuple[str, bytes, bytes]:
    return f"bench.base.{n}", _event(job_id), b""


# One JOBS setting each on an otherwise bare stream (subjects bench.<name>.>)
ABLATION: dict[str, dict[str, Any]] = {
    "age": {"max_age": 30 * 86400.0},
    "atomic": {"allow_atomic": True},
    "direct": {"allow_direct": True},
    "deny": {"deny_delete": True, "deny_purge": True},
    "msgsize": {"max_msg_size": 1024 * 1024},
}


BARE_NAMES = Names("bare")  # a JOBS-shaped stream with no consumers (only the stream)

VARIANTS = {
    v.name: v
    for v in (
        Variant("bare", "bare app: its body, no headers, bench.base.<n>", _bare),
        Variant("bare-cons", "the bare publish into a stream with one idle durable consumer",
                _bare_cons),
        Variant("bare-jobsubj", "the bare body on a job-shaped subject (bare stream)",
                _bare_job_subject),
        Variant("event-on-bare", "a JobRequested body, no headers, into the bare stream",
                _event_on_bare),
        *(Variant(f"bare-{k}", f"the bare publish into a bare stream + {v}", _bare_on(k))
          for k, v in ABLATION.items()),
        Variant("plain", "JobRequested on JOBS, no headers",
                _jobs(msg_id=False, expect=None, traceparent=False)),
        Variant("msgid", "+ Nats-Msg-Id", _jobs(msg_id=True, expect=None, traceparent=False)),
        Variant("expect-wc", "+ expected-last-subject-seq 0 on jobs.*.<id>.> (no Msg-Id)",
                _jobs(msg_id=False, expect="wildcard", traceparent=False)),
        Variant("expect-lit", "+ expected-last-subject-seq 0 on its own subject (no Msg-Id)",
                _jobs(msg_id=False, expect="literal", traceparent=False)),
        Variant("create", "Msg-Id + expected on jobs.*.<id>.> (request_job, no traceparent)",
                _jobs(msg_id=True, expect="wildcard", traceparent=False)),
        Variant("create-tp", "request_job's message as the API sends it (+ traceparent)",
                _jobs(msg_id=True, expect="wildcard", traceparent=True)),
        Variant("plain-nocons", "JobRequested without headers into a JOBS without consumers",
                _jobs(msg_id=False, expect=None, traceparent=False, names=BARE_NAMES)),
        Variant("create-tp-unsampled", "request_job's message, traceparent flags 00",
                _jobs(msg_id=True, expect="wildcard", traceparent=True,
                      trace_header=(b"traceparent", TRACEPARENT[:-2] + b"00"))),
        Variant("create-xtp", "request_job's message, the trace context under another name",
                _jobs(msg_id=True, expect="wildcard", traceparent=True,
                      trace_header=(b"Audioprep-Trace", TRACEPARENT))),
        Variant("create-tp-nocons", "request_job's message into a JOBS without consumers",
                _jobs(msg_id=True, expect="wildcard", traceparent=True, names=BARE_NAMES)),
    )
}  # fmt: skip


def user_sys(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


class Publisher(AckPublisher):
    """The API's publisher; a message without headers goes out as PUB (as `js.publish`)."""

    async def _send(self, subject: str, reply: str, payload: bytes, block: bytes) -> None:
        if block:
            await super()._send(subject, reply, payload, block)
            return
        from nats.protocol.command import pub_cmd

        nc = self.nc
        nc.stats["out_msgs"] += 1
        await nc._send_command(pub_cmd(subject, reply, payload))
        if nc._flush_queue is not None and nc._flush_queue.empty():
            await nc._flush_pending()


async def _publish(pub: Publisher, variant: Variant, count: int, inflight: int) -> None:
    messages = [variant.make(new_job_id(), n) for n in range(count)]
    it = iter(messages)

    async def lane() -> None:
        for subject, payload, block in it:
            ack = await pub.publish(subject, payload, block, timeout=10.0)
            assert ack.seq and not ack.duplicate, ack

    await asyncio.gather(*(lane() for _ in range(inflight)))


async def _setup(env: Any) -> None:
    from nats.js.api import ConsumerConfig, StorageType, StreamConfig

    from audioprep.shared.nats_conn import connect
    from audioprep.shared.provision import jobs_stream_config

    await provision_env(env)
    nc = await connect(env.settings, "bench-setup")
    try:
        js = nc.jetstream()
        await js.add_stream(
            StreamConfig(name=BARE_STREAM, subjects=["bench.base.>"], storage=StorageType.FILE)
        )
        await js.add_stream(
            StreamConfig(name=CONS_STREAM, subjects=["bench.cons.>"], storage=StorageType.FILE)
        )
        # a durable pull consumer no message matches (as the worker consumers and a request)
        await js.add_consumer(
            CONS_STREAM, ConsumerConfig(durable_name="idle", filter_subject="bench.cons.none")
        )
        for k, extra in ABLATION.items():
            await js.add_stream(StreamConfig(
                name=f"BENCH_{k.upper()}", subjects=[f"bench.{k}.>"], storage=StorageType.FILE,
                **extra,
            ))  # fmt: skip
        bare = dataclasses.replace(env.settings, names=BARE_NAMES)
        await js.add_stream(jobs_stream_config(bare))
    finally:
        await nc.close()


async def _rounds(
    env: Any, variants: list[Variant], count: int, rounds: int, inflight: int
) -> dict[str, list[dict[str, float]]]:
    from audioprep.shared.nats_conn import connect

    nats_pid = env.server.proc.pid
    nc = await connect(env.settings, "bench-publish")
    pub = Publisher(nc)
    runs: dict[str, list[dict[str, float]]] = {v.name: [] for v in variants}
    try:
        for v in variants:  # warm-up
            await _publish(pub, v, 500, inflight)
        for r in range(rounds):
            for v in variants:
                (u0, s0), t0 = user_sys(nats_pid), time.perf_counter()
                await _publish(pub, v, count, inflight)
                (u1, s1), wall = user_sys(nats_pid), time.perf_counter() - t0
                runs[v.name].append({
                    "nats_cpu_us": (u1 - u0 + s1 - s0) / count * 1e6,
                    "nats_user_us": (u1 - u0) / count * 1e6,
                    "msg_per_s": count / wall,
                })  # fmt: skip
            log(f"round {r + 1}: " + ", ".join(
                f"{k} {x[-1]['nats_cpu_us']:.0f} µs" for k, x in runs.items()))  # fmt: skip
    finally:
        await nc.close()
    return runs


async def _traced(env: Any, variant: Variant, count: int, inflight: int, cmd: list[str]) -> str:
    """Publish `count` messages of `variant` while `cmd` + `-p <nats-server pid>` runs; its
    stderr (strace -c writes its table there)."""
    from audioprep.shared.nats_conn import connect

    nc = await connect(env.settings, "bench-trace")
    pub = Publisher(nc)
    try:
        await _publish(pub, variant, 500, inflight)
        rec = await asyncio.create_subprocess_exec(
            *cmd, "-p", str(env.server.proc.pid),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        await asyncio.sleep(0.5)
        await _publish(pub, variant, count, inflight)
        rec.send_signal(2)
        _, err = await asyncio.wait_for(rec.communicate(), 30)
    finally:
        await nc.close()
    return err.decode()


def _perf_run(env: Any, variant: Variant, count: int, inflight: int, out: Path) -> str:
    record = ["perf", "record", "-F", "2000", "-g", "-o", str(out)]
    asyncio.run(_traced(env, variant, count, inflight, record))
    report = subprocess.run(
        ["perf", "report", "-i", str(out), "--children", "--stdio", "-g", "none",
         "--percent-limit", "2", "--sort", "sym"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return report.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=8000, help="messages per variant per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--inflight", type=int, default=32)
    parser.add_argument("--tmpfs", action="store_true", help="nats-server's store on /dev/shm")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--perf", default="", help="a variant to profile after the rounds")
    parser.add_argument(
        "--strace", action="store_true", help="syscalls per message of each variant (strace -c)"
    )
    args = parser.parse_args()
    variants = [VARIANTS[v] for v in args.variants.split(",")]
    if args.tmpfs:
        tempfile.tempdir = "/dev/shm"
    with bench_env("nats-publish") as env:
        asyncio.run(_setup(env))
        runs = asyncio.run(_rounds(env, variants, args.count, args.rounds, args.inflight))
        profile = ""
        traces: dict[str, str] = {}
        if args.strace:
            cmd = [
                "strace",
                "-f",
                "-c",
                "-e",
                "trace=fsync,fdatasync,pwrite64,write,read,futex,nanosleep,epoll_pwait",
            ]
            for v in variants:
                traces[v.name] = asyncio.run(_traced(env, v, args.count, args.inflight, cmd))
        if args.perf:
            out = env.tmp / "perf.data"
            profile = _perf_run(env, VARIANTS[args.perf], args.count * 2, args.inflight, out)
    base = statistics.median(r["nats_cpu_us"] for r in runs.get("bare", runs[variants[0].name]))
    summary: dict[str, Any] = {}
    print(f"{'variant':18} {'nats µs/msg':>12} {'range':>13} {'vs first':>8} {'user µs':>7} "
          f"{'msg/s':>7}")  # fmt: skip
    for v in variants:
        cpu = [r["nats_cpu_us"] for r in runs[v.name]]
        rate = [r["msg_per_s"] for r in runs[v.name]]
        med = statistics.median(cpu)
        user = statistics.median(r["nats_user_us"] for r in runs[v.name])
        summary[v.name] = {
            "about": v.about,
            "nats_cpu_us": round(med, 1),
            "range": [round(min(cpu), 1), round(max(cpu), 1)],
            "nats_user_us": round(user, 1),
            "msg_per_s": round(statistics.median(rate)),
            "all": runs[v.name],
        }
        print(f"{v.name:18} {med:12.1f} {min(cpu):6.1f}–{max(cpu):<6.1f} {med / base:8.2f} "
              f"{user:7.1f} {statistics.median(rate):7.0f}  {v.about}")  # fmt: skip
    if profile:
        print(profile)
    for name, table in traces.items():
        print(f"strace -c, {name}, {args.count} messages:")
        print(table)
    path = write_result(
        "nats_publish",
        {
            "args": vars(args),
            "variants": summary,
            "load": os.getloadavg(),
            "profile": profile,
            "strace": traces,
        },
    )
    with contextlib.suppress(ValueError):
        log(f"wrote {path}")


if __name__ == "__main__":
    main()
