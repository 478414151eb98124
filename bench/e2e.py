"""Row 6: end to end — a 3-second WAV upload POST until the client sees it completed, one job
at a time through the whole system (API, nats-server, projector, 2 worker processes as
`audioprep up` runs them). Baseline: the media work alone (`analyse` of the same file,
in-process), so the ratio is the system's overhead factor.

The client sees the end by polling `GET /api/audio/jobs/{id}` every 5 ms (`--client poll`,
the row's definition: the view in KV, written by the projector) or by following the job's
SSE events (`--client sse`, what `audioprep submit --wait` and the web UI do: the terminal
event itself, read from the stream). Each job is broken into its hops (`breakdown`), and the
CPU every process spent per timed job is recorded (`cpu_ms_per_job`).

python -m bench.e2e [--jobs 100] [--seconds 3] [--client both|poll|sse] [--dispatcher-apart]
  → bench/results/e2e.json
python -m bench.e2e --before DIR [--rounds 3] [--client sse]   (whole stacks alternating with
  another checkout's services, one client: poll unless sse is given) → e2e_compare.json
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from audioprep.shared.names import Names
from bench.common import Env, bench_env, log, provision_env, row, start_http_app, summary_ms
from bench.common import write_result as write
from tests import media

NAMES = Names()  # the default prefix: what `audioprep up` uses

T = TypeVar("T")
POLL_EVERY_S = 0.005
WORKERS = 2


@dataclass
class Timing:
    """Wall-clock marks of one job as the client saw it."""

    job_id: str
    posted: float  # POST sent
    accepted: float  # 202 received
    seen: float  # the poll (or the SSE event) that said completed
    status: str

    @property
    def latency(self) -> float:
        return self.seen - self.posted


ENDS = {"JobCompleted": "completed", "JobFailed": "failed", "JobCancelled": "cancelled"}


async def one_job(client: httpx.AsyncClient, data: bytes, mode: str = "poll") -> Timing:
    t0 = time.time()
    resp = await client.post(
        "/api/audio/ingest", files={"file": ("tone.wav", data, "audio/wav")}, timeout=30
    )
    accepted = time.time()
    if resp.status_code != 202:
        raise RuntimeError(f"upload answered {resp.status_code}: {resp.text[:300]}")
    job_id = resp.json()["jobId"]
    if mode == "sse":
        url = f"/api/audio/jobs/{job_id}/events"
        async with client.stream("GET", url, timeout=60) as events:
            async for line in events.aiter_lines():
                if line.startswith("event:") and (end := ENDS.get(line[6:].strip())):
                    return Timing(job_id, t0, accepted, time.time(), end)
        raise RuntimeError(f"job {job_id}: the SSE stream ended without a terminal event")
    while time.time() < t0 + 60:
        view = (await client.get(f"/api/audio/jobs/{job_id}")).json()
        if view.get("status") in ("completed", "failed", "cancelled"):
            return Timing(job_id, t0, accepted, time.time(), str(view["status"]))
        await asyncio.sleep(POLL_EVERY_S)
    raise TimeoutError(f"job {job_id} not finished after 60 s")


async def drive(
    api: str, wav: Path, jobs: int, modes: tuple[str, ...] = ("poll",), warm: int = 0
) -> dict[str, list[Timing]]:
    """`jobs` jobs per client mode, one at a time, the modes taking turns job by job, after
    `warm` untimed ones per mode (imports, forkservers, connections)."""
    data = wav.read_bytes()
    out: dict[str, list[Timing]] = {mode: [] for mode in modes}
    async with httpx.AsyncClient(base_url=api) as client:
        for mode in modes:
            for _ in range(warm):
                await one_job(client, data, mode)
        for _ in range(jobs):
            for mode in modes:
                timing = await one_job(client, data, mode)
                if timing.status != "completed":
                    raise RuntimeError(f"e2e job ended {timing.status}")
                out[mode].append(timing)
        return out


def _stamp(msg: Any) -> float:
    """A direct-get message's store time (`Nats-Time-Stamp`, RFC 3339 with nanoseconds)."""
    text = (msg.headers or {})["Nats-Time-Stamp"]
    whole, _, frac = text.rstrip("Z").partition(".")
    base = dt.datetime.fromisoformat(whole).replace(tzinfo=dt.UTC).timestamp()
    return base + float(f"0.{frac or 0}")


# The hops of one job in order: (part, from mark, to mark). Marks: the client's (posted,
# accepted, seen), each event's creation time (`<name>.at`, the producer's clock) and store
# time (`<name>.stored`, nats-server's), the view's KV revision that said completed
# (`kv.stored`). One machine, one clock.
HOPS: tuple[tuple[str, str, str], ...] = (
    ("upload_stored", "posted", "requested.at"),  # body sent, parsed, stored; request built
    ("requested_stored", "requested.at", "requested.stored"),
    ("requested_acked", "requested.stored", "accepted"),  # fsync, ack, 202 back to the client
    ("dispatcher_saw", "requested.stored", "released.at"),
    ("released_stored", "released.at", "released.stored"),
    ("worker_took", "released.stored", "started.at"),  # delivery + the release's reads
    ("started_stored", "started.at", "started.stored"),
    ("to_analysis", "started.stored", "analysing.at"),  # started's ack, the upload's move
    ("analysis_and_outputs", "analysing.at", "completed.at"),  # media call, peaks, progress
    ("completed_stored", "completed.at", "completed.stored"),
    ("projected", "completed.stored", "kv.stored"),  # delivery, fold, CAS write
    ("seen", "kv.stored", "seen"),  # KV ack, the API's watch, the client's poll
    ("seen_after_event", "completed.stored", "seen"),  # what an SSE client waits after the end
)


async def breakdown(env: Env, timings: list[Timing]) -> dict[str, dict[str, float]]:
    """Where the time went, hop by hop, from the events' own times and nats-server's store
    times of the job's events and of its view's KV revisions."""
    from audioprep.domain.events import decode_event
    from audioprep.domain.views import decode_view
    from audioprep.shared import direct_get
    from audioprep.shared import names as nm
    from audioprep.shared.nats_conn import connect

    nc = await connect(env.settings, "bench-e2e")
    parts: dict[str, list[float]] = {
        "upload_post": [],
        "queued": [],
        "work": [],
        "visible": [],
        **{name: [] for name, _, _ in HOPS},
    }
    bucket = NAMES.jobs_bucket
    try:
        for t in timings:
            marks = {"posted": t.posted, "accepted": t.accepted, "seen": t.seen}
            msgs = await direct_get.next_by_subject(
                nc, NAMES.stream, NAMES.job_subjects(t.job_id), 1, 64, 5.0
            )
            for msg in msgs:
                event = decode_event(msg.data)
                name = event.name
                if name == "progressed":
                    name = getattr(event, "stage", name)
                if f"{name}.at" in marks:
                    continue  # the first of a name
                marks[f"{name}.at"] = event.at.timestamp()
                marks[f"{name}.stored"] = _stamp(msg)
            revisions = await direct_get.next_by_subject(
                nc, nm.kv_stream(bucket), nm.kv_subject(bucket, t.job_id), 1, 64, 5.0
            )
            for msg in revisions:
                if msg.data and decode_view(msg.data).status == "completed":
                    marks["kv.stored"] = _stamp(msg)
                    break
            parts["upload_post"].append(t.accepted - t.posted)
            parts["queued"].append(marks["started.at"] - marks["requested.at"])
            parts["work"].append(marks["completed.at"] - marks["started.at"])
            parts["visible"].append(t.seen - marks["completed.at"])
            for name, start, end in HOPS:
                if start in marks and end in marks:
                    parts[name].append(marks[end] - marks[start])
    finally:
        await nc.close()
    return {name: summary_ms(values) for name, values in parts.items() if values}


def bare_analyse(wav: Path, runs: int = 10) -> list[float]:
    from audioprep.services.worker.pipeline.analyse import analyse

    analyse(str(wav), points=2000)
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        analyse(str(wav), points=2000)
        out.append(time.perf_counter() - t0)
    return out


TICK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> float:
    """CPU seconds of a process and of its descendants (live ones and reaped ones)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        children = []
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children += [int(c) for c in f.read().split()]
    except OSError:
        return 0.0
    own = sum(int(fields[i]) for i in (11, 12, 13, 14)) / TICK
    return own + sum(_proc_cpu(c) for c in children)


def _with_cpu(env: Env, call: Callable[[], T]) -> tuple[T, dict[str, float]]:
    """`call()` and the CPU seconds each service process (with its media children),
    nats-server and this client process spent meanwhile."""
    roles: dict[str, int] = {}
    for proc in env.procs:  # `python -m audioprep.services.cli.main <role> ...`
        args = [str(a) for a in proc.args] if isinstance(proc.args, list) else []
        role = args[3] if len(args) > 3 else str(proc.pid)
        roles[f"{role}-{sum(r.startswith(role) for r in roles)}"] = proc.pid
    assert env.server.proc is not None
    roles["nats-server"] = env.server.proc.pid
    before = {role: _proc_cpu(pid) for role, pid in roles.items()}
    client = time.process_time()
    result = call()
    spent = {role: _proc_cpu(pid) - before[role] for role, pid in roles.items()}
    spent["client"] = time.process_time() - client
    spent["total"] = sum(spent.values())
    return result, spent


def use_tree(env: Env, tree: Path) -> None:
    """Run the services of another checkout (its code; this tree's bench and provisioning)."""

    def spawn(args: list[str], *, log_name: str, **extra: str) -> subprocess.Popen[bytes]:
        out = open(env.tmp / f"{log_name}.log", "ab")  # noqa: SIM115
        environ = env.env(**extra, PYTHONPATH=str(tree))
        proc = subprocess.Popen(args, env=environ, stdout=out, stderr=out, cwd=tree)
        env.procs.append(proc)
        return proc

    env.spawn = spawn  # type: ignore[method-assign]


def start_stack(env: Env, tree: Path | None = None, *, dispatcher_apart: bool = False) -> str:
    if tree is not None:
        use_tree(env, tree)
    asyncio.run(provision_env(env))
    if dispatcher_apart:  # leads before any worker starts, so no worker process dispatches
        env.audioprep("dispatcher")
        time.sleep(3.0)
    env.audioprep("projector")
    for i in range(WORKERS):
        env.audioprep("worker", log_name=f"worker-{i}")
    api, _ = start_http_app(env, "api", "/healthz")
    return api


def measure(
    jobs: int,
    seconds: float,
    modes: tuple[str, ...],
    tree: Path | None = None,
    *,
    dispatcher_apart: bool = False,
) -> dict[str, Any]:
    """One stack; the jobs of each client mode (taking turns), their hops; then analyse()
    alone."""
    out: dict[str, Any] = {}
    with bench_env("e2e") as env:
        wav = media.write_tone(env.tmp / "tone.wav", seconds=seconds)
        api = start_stack(env, tree, dispatcher_apart=dispatcher_apart)
        asyncio.run(drive(api, wav, 0, modes, warm=3))
        driven, cpu = _with_cpu(env, lambda: asyncio.run(drive(api, wav, jobs, modes)))
        out["cpu_ms_per_job"] = {
            k: round(v * 1000 / (jobs * len(modes)), 2) for k, v in cpu.items()
        }
        log(f"CPU ms per job: {out['cpu_ms_per_job']}")
        for mode, timings in driven.items():
            parts = asyncio.run(breakdown(env, timings))
            e = summary_ms([t.latency for t in timings])
            log(f"{tree or 'this tree'} {mode}: e2e {e}")
            log("breakdown p50: " + ", ".join(f"{k} {v['p50_ms']:.1f}" for k, v in parts.items()))
            out[mode] = {"e2e": e, "breakdown": parts}
        out["bare_analyse"] = summary_ms(bare_analyse(wav))
    log(f"bare analyse {out['bare_analyse']}")
    return out


def compare(jobs: int, seconds: float, before: Path, rounds: int, mode: str) -> dict[str, Any]:
    """This tree's services against another checkout's, alternating, one stack each."""
    got: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    for _ in range(rounds):
        got["before"].append(measure(jobs, seconds, (mode,), before))
        got["after"].append(measure(jobs, seconds, (mode,)))
    for side, results in got.items():
        line = "; ".join(
            f"p50 {r[mode]['e2e']['p50_ms']:.1f} / analyse {r['bare_analyse']['p50_ms']:.1f} ms"
            for r in results
        )
        log(f"{side}: {line}")
    return {"compare": got, "before_tree": str(before), "client": mode}


def run(
    jobs: int, seconds: float, modes: tuple[str, ...] = ("poll",), dispatcher_apart: bool = False
) -> dict[str, Any]:
    got = measure(jobs, seconds, modes, dispatcher_apart=dispatcher_apart)
    b = got["bare_analyse"]
    rows = []
    for mode in modes:
        rows += _rows(jobs, seconds, mode, got[mode]["e2e"], b, got[mode]["breakdown"])
    first = got[modes[0]]
    return {
        "rows": rows,
        "e2e": first["e2e"],
        "breakdown": first["breakdown"],
        "clients": {mode: got[mode] for mode in modes},
        "bare_analyse": b,
        "cpu_ms_per_job": got["cpu_ms_per_job"],
        "workers": WORKERS,
    }


def _rows(
    jobs: int,
    seconds: float,
    mode: str,
    e: dict[str, float],
    b: dict[str, float],
    parts: dict[str, dict[str, float]],
) -> list[dict[str, Any]]:
    seen = f"poll every {POLL_EVERY_S * 1000:g} ms" if mode == "poll" else "SSE events"
    return [
        row(
            "6 end to end",
            f"{seconds:g}-s upload → completed {'poll' if mode == 'poll' else 'SSE event'}, p50",
            e["p50_ms"],
            b["p50_ms"],
            "ms",
            higher_is_better=False,
            target="≤ 1.3× analyse()",
            met=e["p50_ms"] <= 1.3 * b["p50_ms"],
            notes=f"{jobs} jobs one at a time, {seen}; "
            "baseline = analyse() alone in-process; p50 parts: "
            + ", ".join(f"{k} {v['p50_ms']:.0f}" for k, v in parts.items()),
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--client", choices=("poll", "sse", "both"), default="both")
    parser.add_argument("--before", type=Path, help="a checkout to alternate with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--dispatcher-apart", action="store_true", help="the dispatcher in its own process"
    )
    args = parser.parse_args()
    modes = ("poll", "sse") if args.client == "both" else (args.client,)
    if args.before is not None:
        result = compare(args.jobs, args.seconds, args.before.resolve(), args.rounds, modes[0])
        path = write("e2e_compare", result)
        log(f"wrote {path}")
        return
    result = run(args.jobs, args.seconds, modes, args.dispatcher_apart)
    path = write("e2e", result)
    print(json.dumps(result["rows"], indent=1))
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
