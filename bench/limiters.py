"""Evaluation: which true-peak limiter the normaliser uses, measured side by side.

Same gain into each candidate (the gain that reaches the target with our limiter), on the same
speech; outputs measured by the ffmpeg CLI's ebur128 (true peak at 192 kHz). Candidates:
- FFmpeg `alimiter` at the native rate (sample-peak limiter, look-ahead = attack)
- `alimiter` at 4x oversampled rate (aresample up, limit, aresample down)
- `loudnorm` with the measured values (linear when it can, else its dynamic mode)
- ours: numpy look-ahead limiter on the 4-24x oversampled true peak (services/worker/pipeline)
Writes bench/results/limiters.json and prints a markdown table. Not a test.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from audioprep.domain.recipe import Normalize, Recipe  # noqa: E402
from audioprep.services.worker.pipeline.render import render  # noqa: E402
from bench.loudness import cli_measure  # noqa: E402
from tests import speech  # noqa: E402

TARGET, CEILING = -14.0, -1.0


def ffmpeg_filter(ffmpeg: str, src: Path, dst: Path, af: str, rate: int) -> float:
    start = time.perf_counter()
    subprocess.run(
        [
            ffmpeg,
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-i",
            str(src),
            "-af",
            af,
            "-ar",
            str(rate),
            "-c:a",
            "pcm_s16le",
            str(dst),
        ],
        check=True,
    )
    return time.perf_counter() - start


def main() -> None:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None or not speech.have_espeak():
        print("needs Debian's ffmpeg and espeak-ng (make bench installs them)")
        sys.exit(2)
    work = Path(tempfile.mkdtemp(prefix="audioprep-limiters-"))
    rows = []
    for name in ("studio", "phone", "music"):
        mat = speech.make_material(name, work / name)
        src_i, src_tp = cli_measure(ffmpeg, mat.path)
        ours = work / f"{name}-ours.wav"
        start = time.perf_counter()
        result = render(
            str(mat.path),
            str(ours),
            Recipe(normalize=Normalize(target_lufs=TARGET, true_peak_db=CEILING)),
            "wav",
        )
        ours_s = time.perf_counter() - start
        report = result.loudness_report
        gain = report.gain_db if report else TARGET - src_i
        lim = 10 ** (CEILING / 20)
        limit = f"alimiter=limit={lim:.4f}:attack=2:release=10:level=disabled"
        loudnorm = (
            f"loudnorm=I={TARGET}:TP={CEILING}:LRA=11:measured_I={src_i}:measured_TP={src_tp}"
            f":measured_LRA=7:measured_thresh={src_i - 10}:linear=true"
        )
        candidates = {
            "alimiter (native rate)": f"volume={gain:.2f}dB,{limit}",
            "alimiter (4x oversampled)": (
                f"volume={gain:.2f}dB,aresample={mat.rate * 4},{limit},aresample={mat.rate}"
            ),
            "loudnorm (measured values)": loudnorm,
        }
        for label, af in candidates.items():
            dst = work / f"{name}-{label.split()[0]}-{len(rows)}.wav"
            seconds = ffmpeg_filter(ffmpeg, mat.path, dst, af, mat.rate)
            i, tp = cli_measure(ffmpeg, dst)
            rows.append(
                {"input": name, "limiter": label, "I": i, "TP": tp, "seconds": round(seconds, 2)}
            )
        i, tp = cli_measure(ffmpeg, ours)
        rows.append(
            {
                "input": name,
                "limiter": "ours (numpy true-peak)",
                "I": i,
                "TP": tp,
                "seconds": round(ours_s, 2),
                "gain_db": gain,
            }
        )
    out = ROOT / "bench" / "results" / "limiters.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    measured = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    out.write_text(
        json.dumps(
            {"measured": measured, "target": TARGET, "ceiling": CEILING, "rows": rows}, indent=2
        )
    )
    print(f"measured {measured}; target {TARGET} LUFS, ceiling {CEILING} dBTP\n")
    print("| input | limiter | I (LUFS) | TP (dBTP) | over ceiling | s |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        over = max(0.0, r["TP"] - CEILING)
        cells = [r["input"], r["limiter"], f"{r['I']:.1f}", f"{r['TP']:.1f}", f"{over:.1f}"]
        print("| " + " | ".join([*cells, f"{r['seconds']:.2f}"]) + " |")


if __name__ == "__main__":
    main()
