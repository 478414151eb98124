"""Run every benchmark (each in its own process with its own nats-server), then print one table
of results with ratios against the baselines measured in the same run.

python -m bench.all [--only api,projector,workers,e2e,growth,render,loudness,voice,webhooks,
                     publish,fairness,fsync] [--quick]
Each benchmark writes bench/results/<name>.json; this writes bench/results/all.json too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR, ROOT, log, machine

# name → (command, extra args for --quick, timeout in seconds)
BENCHMARKS: dict[str, tuple[list[str], list[str], float]] = {
    "api": (["-m", "bench.api"], ["--duration", "4", "--reps", "1"], 240),
    "projector": (["-m", "bench.projector"], ["--events", "30000", "--lag-seconds", "3"], 300),
    "workers": (["-m", "bench.workers"], ["--dispatches", "20", "--batch", "16"], 300),
    "e2e": (["-m", "bench.e2e"], ["--jobs", "30"], 300),
    "fsync": (["-m", "bench.fsync"], ["--rounds", "2"], 120),
    "growth": (["-m", "bench.growth"], ["--jobs", "30000", "--duration", "2"], 1500),
    "render": (["bench/render.py"], ["--runs", "1", "--skip-long"], 420),
    "loudness": (["bench/loudness.py"], ["--skip-long"], 1800),
    "voice": (["bench/voice.py"], ["--minutes", "5"], 1800),
    "webhooks": (["-m", "bench.webhooks"], ["--jobs", "300", "--idle-jobs", "50"], 600),
    "publish": (["bench/publish.py"], ["--minutes", "5"], 1200),
    "fairness": (
        ["-m", "bench.fairness"],
        ["--saves", "40", "--previews", "4", "--batch", "16", "--dispatches", "20"],
        2400,
    ),
}


def run_one(name: str, quick: bool) -> dict[str, Any]:
    args, quick_args, timeout = BENCHMARKS[name]
    if name == "render" and not (ROOT / "bench" / "render.py").exists():
        return {"name": name, "status": "absent"}
    cmd = [sys.executable, *args, *(quick_args if quick else [])]
    log(f"── {name}: {' '.join(cmd[1:])}")
    started = time.monotonic()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # Its own process group: on a timeout or Ctrl-C the benchmark's nats-server and service
    # processes go too, not only the benchmark script.
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, start_new_session=True
    )
    try:
        code = proc.wait(timeout)
        status = "ok" if code == 0 else f"failed (exit {code})"
    except subprocess.TimeoutExpired:
        stop_group(proc)
        status = f"timed out after {timeout:.0f}s"
    except BaseException:
        stop_group(proc)
        raise
    seconds = time.monotonic() - started
    log(f"── {name}: {status} in {seconds:.0f}s")
    return {"name": name, "status": status, "seconds": round(seconds, 1)}


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the benchmark's process group, SIGKILL what is left after 15 s."""
    for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def render_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """bench/render.py's own format (PyAV vs the ffmpeg CLI) as table rows."""
    rows = []
    for r in result.get("rows", []):
        rows.append(
            {
                "row": "7 render",
                "metric": f"{r.get('format')} render ({r.get('route')}) wall time",
                "ours": r.get("ours_s"),
                "baseline": r.get("cli_s"),
                "unit": "s",
                "ratio": r.get("ratio"),
                "higher_is_better": False,
                "target": "",
                "met": None,
                "notes": "baseline = ffmpeg CLI doing the same work",
            }
        )
    rss = result.get("peak_rss") or {}
    if rss.get("2h_opus_mib"):
        rows.append(
            {
                "row": "7 render",
                "metric": "peak RSS, 2-hour opus render",
                "ours": rss["2h_opus_mib"],
                "baseline": rss.get("3min_opus_mib"),
                "unit": "MiB",
                "ratio": round(rss["2h_opus_mib"] / rss["3min_opus_mib"], 3)
                if rss.get("3min_opus_mib")
                else None,
                "higher_is_better": False,
                "target": "flat",
                "met": None,
                "notes": "baseline = the same render of a 3-minute source",
            }
        )
    return rows


def load_rows(name: str, since: float) -> list[dict[str, Any]]:
    path = RESULTS_DIR / f"{name}.json"
    if not path.exists() or path.stat().st_mtime < since:
        return []
    result = json.loads(path.read_text())
    if name == "render":
        return render_rows(result)
    if name == "loudness":
        return loudness_rows(result)
    if name == "voice":
        return voice_rows(result)
    return list(result.get("rows", []))


def loudness_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """bench/loudness.py against ffmpeg-normalize, as table rows."""
    s = result.get("summary") or {}
    rows = [
        {"row": "8 loudness", "metric": "worst |error| from target", "unit": "LU",
         "ours": s.get("ours_max_error_lu"), "baseline": s.get("ffmpeg_normalize_max_error_lu"),
         "ratio": None, "target": "≤ 0.5 and closer",
         "met": (s.get("ours_max_error_lu") or 9) <= 0.5},
        {"row": "8 loudness", "metric": "worst true-peak overshoot", "unit": "dB",
         "ours": s.get("ours_max_overshoot_db"),
         "baseline": s.get("ffmpeg_normalize_max_overshoot_db"), "ratio": None, "target": "0",
         "met": s.get("ours_max_overshoot_db") == 0},
        {"row": "8 loudness", "metric": "total time, all cases", "unit": "s",
         "ours": s.get("ours_total_s"), "baseline": s.get("ffmpeg_normalize_total_s"),
         "ratio": round(s["ours_total_s"] / s["ffmpeg_normalize_total_s"], 3)
         if s.get("ffmpeg_normalize_total_s") else None, "target": "≤ 1×",
         "met": (s.get("ours_total_s") or 0) <= (s.get("ffmpeg_normalize_total_s") or 0)},
    ]  # fmt: skip
    return rows


def voice_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """bench/voice.py: PESQ at 15 dB SNR and the chain's speed, as table rows."""
    rows: list[dict[str, Any]] = []
    by = {(r["snr"], r["method"]): r for r in result.get("rows", [])}
    ours, noisy = by.get((15.0, "our chain")), by.get((15.0, "noisy input"))
    if ours and noisy:
        rows.append({"row": "9 voice", "metric": "PESQ at 15 dB SNR (vs noisy input)",
                     "unit": "", "ours": ours["pesq"], "baseline": noisy["pesq"],
                     "ratio": None, "target": "higher",
                     "met": ours["pesq"] > noisy["pesq"]})  # fmt: skip
    speed = result.get("speed") or {}
    if speed:
        rows.append({"row": "9 voice", "metric": "FFmpeg-filter part vs ffmpeg CLI",
                     "unit": "s", "ours": speed["our_filters_seconds"],
                     "baseline": speed["ffmpeg_filters_seconds"], "ratio": speed["filters_ratio"],
                     "target": "≤ 1.1×", "met": speed["filters_ratio"] <= 1.1})  # fmt: skip
        rows.append({"row": "9 voice", "metric": "whole chain, × real time (one core)",
                     "unit": "×", "ours": speed["chain_x_realtime"], "baseline": 30.0,
                     "ratio": None, "target": "> 30× (jivetalking 16–30×)",
                     "met": speed["chain_x_realtime"] > 30})  # fmt: skip
    return rows


def fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"
    return str(value)


def table(rows: list[dict[str, Any]]) -> str:
    head = ["row", "metric", "ours", "baseline", "unit", "ratio", "target", "met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        met = {True: "yes", False: "**no**", None: ""}[r.get("met")]
        ratio = f"{r['ratio']:.2f}×" if r.get("ratio") is not None else "–"
        cells = [
            r["row"],
            r["metric"],
            fmt(r["ours"]),
            fmt(r["baseline"]),
            r["unit"],
            ratio,
            r.get("target", ""),
            met,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", help="comma-separated subset: " + ",".join(BENCHMARKS))
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    started_wall = time.time()
    started = time.monotonic()
    runs = [run_one(name, args.quick) for name in names]
    rows = [r for name in names for r in load_rows(name, started_wall)]
    total = time.monotonic() - started
    info = machine()
    print()
    print(f"audioprep benchmarks — {info['date']} — {info['cpus']} × {info['cpu']}, ", end="")
    print(f"Python {info['python']}, total {total:.0f}s" + (" (quick)" if args.quick else ""))
    print()
    print(table(rows))
    print()
    for run in runs:
        if run["status"] != "ok":
            print(f"note: {run['name']}: {run['status']}")
    summary = {"machine": info, "quick": args.quick, "seconds": round(total, 1)}
    summary |= {"runs": runs, "rows": rows}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "all.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {Path(RESULTS_DIR / 'all.json').relative_to(ROOT)} (and one JSON per benchmark)")
    if any(run["status"] not in ("ok", "absent") for run in runs):
        sys.exit(1)


if __name__ == "__main__":
    main()
