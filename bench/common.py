"""What every benchmark shares: its own nats-server, service processes, HTTP load, percentiles."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from audioprep.shared.nats_server import NatsServer, free_port  # noqa: E402
from audioprep.shared.settings import Settings  # noqa: E402

RESULTS_DIR = ROOT / "bench" / "results"
NATS_CONF = ROOT / "deploy" / "nats.conf"


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "arch": platform.machine(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def pct(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (values need not be sorted)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def summary_ms(values_s: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max/mean in milliseconds from seconds."""
    ms = [v * 1000 for v in values_s]
    return {
        "n": len(ms),
        "p50_ms": round(pct(ms, 50), 3),
        "p90_ms": round(pct(ms, 90), 3),
        "p99_ms": round(pct(ms, 99), 3),
        "max_ms": round(max(ms), 3) if ms else float("nan"),
        "mean_ms": round(statistics.fmean(ms), 3) if ms else float("nan"),
    }


def row(
    name: str,
    metric: str,
    ours: float,
    baseline: float | None,
    unit: str,
    *,
    higher_is_better: bool,
    target: str = "",
    met: bool | None = None,
    notes: str = "",
) -> dict[str, Any]:
    """One line of the results table; ratio = ours / baseline (whatever the direction)."""
    ratio = round(ours / baseline, 3) if baseline else None
    return {
        "row": name,
        "metric": metric,
        "ours": round(ours, 3),
        "baseline": round(baseline, 3) if baseline is not None else None,
        "unit": unit,
        "ratio": ratio,
        "higher_is_better": higher_is_better,
        "target": target,
        "met": met,
        "notes": notes,
    }


def write_result(name: str, payload: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    payload = {"benchmark": name, "machine": machine(), **payload}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Env:
    """One benchmark's world: temp dir, nats-server, settings, child processes."""

    tmp: Path
    server: NatsServer
    settings: Settings
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        e = dict(os.environ)
        e.update(
            {
                "AUDIOPREP_NATS_URL": self.settings.nats_url,
                "AUDIOPREP_DATA_DIR": str(self.settings.data_dir),
                "AUDIOPREP_STORAGE_URL": self.settings.storage,
                "AUDIOPREP_SIGNING_SECRET": "bench-secret",
                "AUDIOPREP_LOG_FORMAT": "json",
                "AUDIOPREP_LOG_LEVEL": "INFO",
                # the per-tenant limiter stays in the path but never answers 429 here: the
                # benchmarks measure capacity
                "AUDIOPREP_RATE_LIMIT_PER_S": "0",
                "PYTHONPATH": str(ROOT),
            }
        )
        e.update(extra)
        return e

    def spawn(self, args: list[str], *, log_name: str, **env: str) -> subprocess.Popen[bytes]:
        """Start a child (its output goes to a log file in the temp dir)."""
        out = open(self.tmp / f"{log_name}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(args, env=self.env(**env), stdout=out, stderr=out, cwd=ROOT)
        self.procs.append(proc)
        return proc

    def audioprep(self, role: str, *args: str, log_name: str = "", **env: str) -> Any:
        """`audioprep <role>` as a child process (same as `audioprep up` starts them)."""
        cmd = [sys.executable, "-m", "audioprep.services.cli.main", role, *args]
        return self.spawn(cmd, log_name=log_name or role, **env)

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        with contextlib.suppress(ValueError):
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self.procs):
            self.stop(proc)

    def restart_server(self, config: Path = NATS_CONF) -> None:
        self.server.stop()
        self.server = NatsServer(
            self.tmp / "nats", port=self.server.port, config=config, log_file=self.tmp / "nats.log"
        )
        self.server.start()


def bench_settings(nats_url: str, data: Path) -> Settings:
    """The services' settings of a benchmark: this server, local storage under `data`."""
    data.mkdir(exist_ok=True)
    return Settings(
        nats_url=nats_url,
        data_dir=data,
        storage_url=(data / "storage").resolve().as_uri(),
        signing_secret="bench-secret",
        signing_secret_is_ephemeral=False,
        log_format="json",
    )


@contextlib.contextmanager
def bench_env(name: str, *, config: Path = NATS_CONF) -> Iterator[Env]:
    """A fresh nats-server (deploy/nats.conf: sync_interval always) in a temp dir, cleaned up."""
    tmp = Path(tempfile.mkdtemp(prefix=f"audioprep-bench-{name}-"))
    server = NatsServer(tmp / "nats", config=config, log_file=tmp / "nats.log").start()
    env = Env(tmp=tmp, server=server, settings=bench_settings(server.url, tmp / "data"))
    try:
        yield env
    finally:
        env.stop_all()
        env.server.stop()
        if os.environ.get("AUDIOPREP_BENCH_KEEP"):
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def fast_nats_conf(tmp: Path) -> Path:
    """deploy/nats.conf without `sync_interval: always`: only for preloading data quickly."""
    text = NATS_CONF.read_text().replace("sync_interval: always", "")
    path = tmp / "nats-preload.conf"
    path.write_text(text)
    return path


async def provision_env(env: Env) -> None:
    from audioprep.shared.nats_conn import connect
    from audioprep.shared.provision import provision

    nc = await connect(env.settings, "bench-provision")
    try:
        await provision(nc.jetstream(), env.settings)
    finally:
        await nc.close()


def wait_http(url: str, timeout: float = 30.0) -> None:
    """Poll until the URL answers 2xx (a started API whose lifespan connected to NATS)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if 200 <= resp.status < 300:
                    return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not ready after {timeout}s")
        time.sleep(0.05)


def has_granian() -> bool:
    return shutil.which("granian", path=str(Path(sys.executable).parent)) is not None


def granian_cmd(target: str, port: int, *, factory: bool = False) -> list[str]:
    """Granian serving `target` like our uvicorn set-up: one worker, uvloop, one runtime
    thread (its Rust I/O threads come on top: that is the difference being measured)."""
    exe = str(Path(sys.executable).parent / "granian")
    cmd = [exe, "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--loop", "uvloop", "--workers", "1", "--runtime-mode", "st", "--log-level", "warning"]
    return [*cmd, *(["--factory"] if factory else []), target]


def start_http_app(env: Env, kind: str, ready_path: str) -> tuple[str, subprocess.Popen[bytes]]:
    """`api` (audioprep api) or `baseline` (bench/baseline_app.py), both uvicorn+uvloop; or
    `api-granian` / `baseline-granian`, the same two apps on granian."""
    port = free_port()
    if kind == "api":
        proc = env.audioprep("api", "--port", str(port), log_name="api")
    elif kind == "api-granian":
        cmd = granian_cmd("audioprep.services.api.asgi:create", port, factory=True)
        proc = env.spawn(cmd, log_name=kind)
    elif kind == "baseline-granian":
        proc = env.spawn(granian_cmd("bench.baseline_app:app", port), log_name=kind)
    else:
        cmd = [sys.executable, "-m", "bench.baseline_app", "--port", str(port)]
        proc = env.spawn(cmd, log_name="baseline")
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            log_tail = (env.tmp / f"{kind}.log").read_text()
            raise RuntimeError(f"{kind} exited with {proc.returncode}:\n{log_tail[-3000:]}")
        try:
            wait_http(base + ready_path, timeout=0.5)
            return base, proc
        except TimeoutError:
            if time.monotonic() > deadline:
                raise


WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"errors":%d,"non2xx":%d,'
    .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def _wrk_script(tmp: Path, method: str, body: str, paths: Sequence[str] | None) -> Path:
    lines = []
    if method == "POST":
        lines += [
            'wrk.method = "POST"',
            f"wrk.body = {json.dumps(body)}",
            'wrk.headers["Content-Type"] = "application/json"',
        ]
    if paths:
        lines.append("local paths = {" + ",".join(json.dumps(p) for p in paths) + "}")
        lines.append("request = function() return wrk.format(nil, paths[math.random(#paths)]) end")
    path = tmp / f"wrk-{time.monotonic_ns()}.lua"
    path.write_text("\n".join(lines) + WRK_DONE)
    return path


def http_load(
    tmp: Path,
    url: str,
    *,
    method: str = "GET",
    body: str = "",
    paths: Sequence[str] | None = None,
    connections: int = 32,
    duration: float = 8.0,
) -> dict[str, Any]:
    """Drive `url` with `connections` keep-alive clients for `duration` s: wrk, else loadgen."""
    wrk = shutil.which("wrk")
    if wrk and not os.environ.get("AUDIOPREP_BENCH_NO_WRK"):
        script = _wrk_script(tmp, method, body, paths)
        cmd = [
            wrk,
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            "--timeout",
            "5s",
            "-s",
            str(script),
            url,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        line = next(x for x in out.splitlines() if x.startswith("WRKJSON "))
        raw = json.loads(line.removeprefix("WRKJSON "))
        duration_s = raw["duration_us"] / 1e6
        return {
            "tool": "wrk",
            "requests": raw["requests"],
            "duration_s": duration_s,
            "rps": raw["requests"] / duration_s,
            "errors": raw["errors"],
            "non2xx": raw["non2xx"],
            "p50_ms": raw["p50_us"] / 1000,
            "p90_ms": raw["p90_us"] / 1000,
            "p99_ms": raw["p99_us"] / 1000,
            "max_ms": raw["max_us"] / 1000,
        }
    cmd = [
        sys.executable,
        "-m",
        "bench.loadgen",
        "--url",
        url,
        "--method",
        method,
        "--connections",
        str(connections),
        "--duration",
        str(duration),
    ]
    if body:
        cmd += ["--body", body]
    if paths:
        paths_file = tmp / f"paths-{time.monotonic_ns()}.txt"
        paths_file.write_text("\n".join(paths) + "\n")
        cmd += ["--paths-file", str(paths_file)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def peak_rss_mib(proc: subprocess.Popen[bytes]) -> float:
    """Poll `proc` until it exits; its peak resident set (VmHWM) in MiB."""
    peak_kib = 0
    while proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
        except OSError:
            break
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peak_kib = max(peak_kib, int(line.split()[1]))
        time.sleep(0.02)
    return peak_kib / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process and its live children (granian's worker) have used
    so far (children that exited and were waited for are in cutime/cstime)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(c) for c in f.read().split()]
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(x) for x in fields[11:15]) / ticks + sum(cpu_seconds(c) for c in children)


def http_load_cpu(
    pid: int, tmp: Path, url: str, *, nats_pid: int | None = None, **kw: Any
) -> dict[str, Any]:
    """`http_load`, plus the server process's CPU per answered request (µs): a figure that the
    other work on a shared box moves much less than throughput; with `nats_pid`, nats-server's
    CPU per request too (the other half of a publish's cost on a shared 2-core box)."""
    before = cpu_seconds(pid)
    nats_before = cpu_seconds(nats_pid) if nats_pid else 0.0
    result = http_load(tmp, url, **kw)
    used = cpu_seconds(pid) - before
    result["cpu_us_per_req"] = round(used / max(1, result["requests"]) * 1e6, 1)
    if nats_pid:
        nats_used = cpu_seconds(nats_pid) - nats_before
        result["nats_cpu_us_per_req"] = round(nats_used / max(1, result["requests"]) * 1e6, 1)
    return result


def write_tiled_wav(path: Path, mono: Any, rate: int, seconds: float) -> Path:
    """`mono` (1, n) float repeated to `seconds`, written as 16-bit wav chunk by chunk (a long
    benchmark source without holding it in memory)."""
    import av
    import numpy as np

    block = (np.clip(mono, -1, 1) * 32767).astype(np.int16)
    total = int(seconds * rate)
    with av.open(str(path), "w") as out:
        st: Any = out.add_stream("pcm_s16le", rate=rate, layout="mono")
        written = 0
        while written < total:
            chunk = np.ascontiguousarray(block[:, : min(block.shape[1], total - written)])
            frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="mono")
            frame.sample_rate = rate
            for packet in st.encode(frame):
                out.mux(packet)
            written += chunk.shape[1]
        for packet in st.encode(None):
            out.mux(packet)
    return path
