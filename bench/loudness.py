"""Benchmark: our normalisation vs ffmpeg-normalize (two-pass loudnorm), same inputs, one run.

For each case both tools normalise the same file to the same target and format; both outputs
are measured by Debian's ffmpeg CLI (`ebur128=peak=true`), which neither tool uses for its
own final check. Prints a markdown table, writes bench/results/loudness.json.
Also: peak RSS and time of normalising a long source against a plain render of it.

Run: python bench/loudness.py [--long-minutes 120] [--skip-long]     Not a test.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from audioprep.domain.recipe import Normalize, Recipe  # noqa: E402
from audioprep.services.worker.pipeline.render import render  # noqa: E402
from bench.common import machine, write_tiled_wav  # noqa: E402
from bench.render import peak_rss_mib  # noqa: E402
from tests import media, speech  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "loudness.json"
EXT = {"wav": "wav", "flac": "flac", "mp3": "mp3", "opus": "opus", "aac": "m4a"}
FFN_CODEC = {
    "wav": ["-c:a", "pcm_s16le"],
    "flac": ["-c:a", "flac"],
    "mp3": ["-c:a", "libmp3lame", "-b:a", "192k"],
    "opus": ["-c:a", "libopus", "-b:a", "128k"],
    "aac": ["-c:a", "aac", "-b:a", "192k"],
}
# (material, target LUFS, ceiling dBTP, format): the table first, then the rest
CASES = [
    ("studio", -16.0, -1.5, "mp3"),
    ("studio", -14.0, -1.0, "flac"),
    ("laptop", -16.0, -1.0, "aac"),
    ("phone", -16.0, -1.5, "mp3"),
    ("phone", -14.0, -1.0, "flac"),
    ("studio", -16.0, -1.0, "aac"),
    ("studio", -14.0, -1.0, "opus"),
    ("laptop", -14.0, -1.0, "mp3"),
    ("phone", -16.0, -1.0, "aac"),
    ("hires", -16.0, -1.0, "wav"),
    ("music", -14.0, -1.0, "aac"),
    ("music", -14.0, -1.0, "mp3"),
    ("music-quiet", -16.0, -1.0, "opus"),
    ("tone", -23.0, -1.0, "flac"),
]
_I = re.compile(r"I:\s+(-?[\d.]+) LUFS")
_TP = re.compile(r"Peak:\s+(-?[\d.]+|-inf) dBFS")


def cli_measure(ffmpeg: str, path: Path) -> tuple[float, float]:
    """Integrated loudness and true peak by the ffmpeg CLI's ebur128 (independent meter)."""
    out = subprocess.run(
        [
            ffmpeg,
            "-nostdin",
            "-hide_banner",
            "-i",
            str(path),
            "-af",
            "ebur128=peak=true",
            "-f",
            "null",
            "-",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    summary = out[out.rfind("Summary:") :]
    i, tp = _I.search(summary), _TP.search(summary)
    assert i and tp, summary
    return float(i.group(1)), float(tp.group(1))


def ffmpeg_normalize(
    src: Path, dst: Path, target: float, ceiling: float, fmt: str, rate: int
) -> None:
    exe = shutil.which("ffmpeg-normalize") or str(Path(sys.executable).parent / "ffmpeg-normalize")
    subprocess.run(
        [
            exe,
            str(src),
            "-o",
            str(dst),
            "-f",
            "-q",
            "-t",
            str(target),
            "-tp",
            str(ceiling),
            "-ar",
            str(rate),
            *FFN_CODEC[fmt],
        ],
        check=True,
        capture_output=True,
    )


def run_cases(work: Path, ffmpeg: str) -> list[dict[str, Any]]:
    mats = {n: speech.make_material(n, work / n) for n in {c[0] for c in CASES}}
    rows = []
    for name, target, ceiling, fmt in CASES:
        mat = mats[name]
        ours = work / f"ours-{name}-{target:g}.{EXT[fmt]}"
        theirs = work / f"ffn-{name}-{target:g}.{EXT[fmt]}"
        start = time.perf_counter()
        result = render(
            str(mat.path),
            str(ours),
            Recipe(normalize=Normalize(target_lufs=target, true_peak_db=ceiling)),
            fmt,
        )
        ours_s = time.perf_counter() - start
        start = time.perf_counter()
        rate = 48000 if fmt == "opus" else mat.rate
        ffmpeg_normalize(mat.path, theirs, target, ceiling, fmt, rate)
        theirs_s = time.perf_counter() - start
        oi, otp = cli_measure(ffmpeg, ours)
        ti, ttp = cli_measure(ffmpeg, theirs)
        report = result.loudness_report
        rows.append(
            {
                "input": name,
                "format": fmt,
                "target": target,
                "ceiling": ceiling,
                "ours": {
                    "I": oi,
                    "TP": otp,
                    "error_lu": round(oi - target, 2),
                    "overshoot_db": round(max(0.0, otp - ceiling), 2),
                    "seconds": round(ours_s, 2),
                    "limiter_db": report.limiter_max_reduction_db if report else None,
                    "encodes": report.encode_passes if report else None,
                },
                "ffmpeg_normalize": {
                    "I": ti,
                    "TP": ttp,
                    "error_lu": round(ti - target, 2),
                    "overshoot_db": round(max(0.0, ttp - ceiling), 2),
                    "seconds": round(theirs_s, 2),
                },
            }
        )
        print(
            f"  {name:12s} {fmt:5s} {target:g}/{ceiling:g}: ours {oi:.2f}/{otp:.2f} "
            f"({ours_s:.2f}s)  ffmpeg-normalize {ti:.2f}/{ttp:.2f} ({theirs_s:.2f}s)",
            flush=True,
        )
    return rows


def rss_child(src: str, dst: str, normalize: str) -> None:
    """Render as the worker does: with the ingest's measurements at hand (not timed here)."""
    from audioprep.services.worker.pipeline.loudness import Loudness
    from audioprep.services.worker.pipeline.probe import probe

    recipe = Recipe(normalize=Normalize(preset="apple-podcasts")) if normalize == "1" else Recipe()
    facts = json.loads(Path(src + ".ingest.json").read_text())
    start = time.perf_counter()
    render(src, dst, recipe, "mp3", source_info=probe(src), source_loudness=Loudness(**facts))
    print(f"{time.perf_counter() - start:.1f}")
    print(peak_rss_mib())


def long_source(work: Path, minutes: int) -> Path:
    """Speech tiled to `minutes` (mono 44.1 kHz wav), written in chunks."""
    voice = speech.make_material("laptop", work / "long-src")
    pcm, rate = media.decode_pcm(voice.path)
    path = work / f"long-{minutes}min.wav"
    if path.exists():
        return path
    return write_tiled_wav(path, pcm, rate, minutes * 60)


def measure_long(work: Path, minutes: int) -> dict[str, Any]:
    from dataclasses import asdict

    from audioprep.services.worker.pipeline.loudness import measure_loudness

    src = long_source(work, minutes)
    facts = Path(str(src) + ".ingest.json")
    if not facts.exists():  # what the ingest measured; the worker reuses it
        facts.write_text(json.dumps(asdict(measure_loudness(str(src)))))
    rows: dict[str, Any] = {}
    for label, flag in (("plain", "0"), ("normalized", "1")):
        dst = work / f"long-{label}.mp3"
        out = subprocess.run(
            [sys.executable, __file__, "--rss-child", str(src), str(dst), flag],
            check=True,
            capture_output=True,
            text=True,
        )
        seconds, rss = out.stdout.strip().splitlines()[-2:]
        rows[label] = {"seconds": float(seconds), "peak_rss_mib": round(float(rss), 1)}
        print(f"  {minutes} min mp3 {label}: {rows[label]}", flush=True)
    return {"minutes": minutes, **rows}


def table(rows: list[dict[str, Any]]) -> str:
    header = [
        "input", "format", "target", "ours I / TP", "ffmpeg-normalize I / TP",
        "ours err / over", "theirs err / over", "ours s", "theirs s",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        o, t = r["ours"], r["ffmpeg_normalize"]
        lines.append(
            f"| {r['input']} | {r['format']} | {r['target']:g} / {r['ceiling']:g} | "
            f"{o['I']:.1f} / {o['TP']:.1f} | {t['I']:.1f} / {t['TP']:.1f} | "
            f"{o['error_lu']:+.1f} / {o['overshoot_db']:.1f} | "
            f"{t['error_lu']:+.1f} / {t['overshoot_db']:.1f} | "
            f"{o['seconds']:.2f} | {t['seconds']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--long-minutes", type=int, default=120)
    parser.add_argument("--skip-long", action="store_true")
    parser.add_argument("--long-only", action="store_true", help="only the long-source row")
    parser.add_argument("--rss-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(*args.rss_child)
        return
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None or not speech.have_espeak():
        print("needs Debian's ffmpeg and espeak-ng (make bench installs them)")
        sys.exit(2)
    work = Path(tempfile.gettempdir()) / "audioprep-bench-loudness"
    work.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if args.long_only:
        print(json.dumps(measure_long(work, args.long_minutes)))
        return
    rows = run_cases(work, ffmpeg)
    long = None if args.skip_long else measure_long(work, args.long_minutes)
    ours_worst = max(abs(r["ours"]["error_lu"]) for r in rows)
    theirs_worst = max(abs(r["ffmpeg_normalize"]["error_lu"]) for r in rows)
    summary = {
        "ours_max_error_lu": ours_worst,
        "ffmpeg_normalize_max_error_lu": theirs_worst,
        "ours_max_overshoot_db": max(r["ours"]["overshoot_db"] for r in rows),
        "ffmpeg_normalize_max_overshoot_db": max(
            r["ffmpeg_normalize"]["overshoot_db"] for r in rows
        ),
        "ours_total_s": round(sum(r["ours"]["seconds"] for r in rows), 2),
        "ffmpeg_normalize_total_s": round(sum(r["ffmpeg_normalize"]["seconds"] for r in rows), 2),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "name": "loudness",
                "measured": started,
                "machine": machine(),
                "rows": rows,
                "summary": summary,
                "long": long,
            },
            indent=2,
        )
    )
    print(f"\nmeasured {started}\n")
    print(table(rows))
    print("\n" + json.dumps(summary))
    if long:
        print(json.dumps(long))


if __name__ == "__main__":
    main()
