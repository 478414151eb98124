"""Benchmark: our render vs the ffmpeg CLI doing the same work, plus peak RSS on a 2-hour input.

Run: python bench/render.py [--runs 3] [--skip-long]
Writes bench/results/render.json and prints a markdown table. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import av
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from audioprep.domain.recipe import Recipe, Trim  # noqa: E402
from audioprep.services.worker.pipeline import render as render_mod  # noqa: E402
from audioprep.services.worker.pipeline.formats import EncoderSettings, encoder_settings  # noqa: E402
from audioprep.services.worker.pipeline.progress import StagedProgress  # noqa: E402
from tests import media  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "render.json"
CACHE = Path(tempfile.gettempdir()) / "audioprep-bench"
SOURCE_S = 180
LONG_S = 2 * 3600
RECIPE = Recipe(
    trim=Trim(start_ms=10_000, end_ms=170_000), fade_in_ms=2000, fade_out_ms=2000, gain_db=-3.0
)
CLI_FILTER = (
    "atrim=start=10:end=170,asetpts=PTS-STARTPTS,volume=-3dB,"
    "afade=t=in:st=0:d=2,afade=t=out:st=158:d=2"
)
# format -> (extension, CLI encoder arguments matching formats.py defaults)
CLI_ARGS = {
    "wav": ("wav", ["-c:a", "pcm_s16le"]),
    "flac": ("flac", ["-c:a", "flac", "-sample_fmt", "s16"]),
    "mp3": ("mp3", ["-c:a", "libmp3lame", "-b:a", "192k"]),
    "opus": ("opus", ["-c:a", "libopus", "-b:a", "128k"]),
    "aac": ("m4a", ["-c:a", "aac", "-b:a", "192k"]),
}


def music_like(seconds: float, rate: int = 44100) -> np.ndarray:
    """A chord plus quiet noise: cheap to make, not trivially compressible."""
    t = np.arange(round(seconds * rate)) / rate
    chord = sum(0.08 * np.sin(2 * np.pi * f * t) for f in (220.0, 277.2, 329.6, 440.0))
    rng = np.random.default_rng(7)
    left = chord + 0.02 * rng.standard_normal(t.size)
    right = chord * 0.9 + 0.02 * rng.standard_normal(t.size)
    return np.stack([left, right]).astype(np.float32)


def source_3min() -> Path:
    """The 180 s stereo source, made once."""
    path = CACHE / "source-180s.wav"
    if not path.exists():
        media.write_samples(path, music_like(SOURCE_S))
    return path


def source_2h() -> Path:
    """A 2-hour stereo opus source (small on disk), made once by repeating one minute."""
    path = CACHE / "source-2h.opus"
    if path.exists():
        return path
    minute = music_like(60, rate=48000)
    tmp = path.with_suffix(".part.opus")
    with av.open(str(tmp), "w", format="ogg") as out:
        stream = out.add_stream("libopus", rate=48000, layout="stereo")
        stream.bit_rate = 64000
        stream.format = "flt"
        stream.codec_context.open()
        size = stream.codec_context.frame_size
        pts = 0
        for _ in range(LONG_S // 60):
            for i in range(0, minute.shape[1] - size + 1, size):
                chunk = np.ascontiguousarray(minute[:, i : i + size].T).reshape(1, -1)
                frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="stereo")
                frame.sample_rate = 48000
                frame.pts = pts
                pts += size
                for packet in stream.encode(frame):
                    out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    tmp.rename(path)
    return path


def best_of(runs: int, *works: Callable[[], object]) -> list[float]:
    """Minimum wall time of each work over `runs` interleaved rounds (fair under shared load)."""
    times: list[list[float]] = [[] for _ in works]
    for _ in range(runs):
        for work, spent in zip(works, times, strict=True):
            start = time.perf_counter()
            work()
            spent.append(time.perf_counter() - start)
    return [min(spent) for spent in times]


def ours(src: Path, dst: Path, fmt: str) -> None:
    render_mod.render(str(src), str(dst), RECIPE, fmt)


def ours_mp3_bundled_lame(src: Path, dst: Path) -> None:
    """The alternative mp3 route: PyAV's bundled libmp3lame through the generic encoder path."""
    settings = encoder_settings("mp3", None)
    staged = StagedProgress(None, None, {})
    plan = render_mod._plan(str(src), RECIPE, settings, None, None, None, staged)
    generic = EncoderSettings(settings.fmt, "mp3", "fltp", settings.bitrate_kbps)
    render_mod._encode(
        str(src), str(dst), plan, generic, None, None, None, None, gain=plan.gain_db, ceiling=None
    )


def cli(ffmpeg: str, src: Path, dst: Path, fmt: str) -> None:
    args = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-i", str(src)]
    args += ["-af", CLI_FILTER, *CLI_ARGS[fmt][1], str(dst)]
    subprocess.run(args, check=True)


def peak_rss_child(src: str, dst: str, fmt: str) -> None:
    """Child-process entry: render, then print peak RSS in MiB."""
    render_mod.render(src, dst, Recipe(fade_in_ms=2000, fade_out_ms=2000, gain_db=-3.0), fmt)
    print(peak_rss_mib())


def peak_rss_mib() -> float:
    """This process's peak RSS; VmHWM, because ru_maxrss survives exec and reports the parent's."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_rss(src: Path, fmt: str, work: Path) -> tuple[float, float]:
    """(peak RSS MiB, seconds) of rendering `src` in a fresh interpreter."""
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, __file__, "--rss-child", str(src), str(work / f"rss.{fmt}"), fmt],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(out.stdout.strip().splitlines()[-1]), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-long", action="store_true", help="skip the 2-hour RSS run")
    parser.add_argument("--rss-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        peak_rss_child(*args.rss_child)
        return
    CACHE.mkdir(parents=True, exist_ok=True)
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        print("ffmpeg CLI not found (apt-get install -y ffmpeg): only our timings are shown")
    src = source_3min()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for fmt, (ext, _) in CLI_ARGS.items():
            ours_work = partial(ours, src, work / f"ours.{ext}", fmt)
            cli_s = None
            if ffmpeg is None:
                (ours_s,) = best_of(args.runs, ours_work)
            else:
                cli_work = partial(cli, ffmpeg, src, work / f"cli.{ext}", fmt)
                ours_s, cli_s = best_of(args.runs, ours_work, cli_work)
            rows.append(
                {
                    "format": fmt,
                    "route": "lameenc q3" if fmt == "mp3" else "PyAV",
                    "ours_s": round(ours_s, 3),
                    "cli_s": None if cli_s is None else round(cli_s, 3),
                    "ratio": None if cli_s is None else round(ours_s / cli_s, 2),
                    "bytes": (work / f"ours.{ext}").stat().st_size,
                }
            )
        (alt_s,) = best_of(args.runs, partial(ours_mp3_bundled_lame, src, work / "alt.mp3"))
        mp3_cli = next(r["cli_s"] for r in rows if r["format"] == "mp3")
        rows.append(
            {
                "format": "mp3",
                "route": "PyAV libmp3lame (not used)",
                "ours_s": round(alt_s, 3),
                "cli_s": mp3_cli,
                "ratio": None if mp3_cli is None else round(alt_s / mp3_cli, 2),
                "bytes": (work / "alt.mp3").stat().st_size,
            }
        )
        rss: dict[str, float] = {}
        rss["3min_opus_mib"], _ = measure_rss(src, "opus", work)
        if not args.skip_long:
            long_src = source_2h()
            rss["2h_opus_mib"], rss["2h_opus_s"] = measure_rss(long_src, "opus", work)
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "arch": platform.machine()},
        "pyav": av.__version__,
        "ffmpeg_cli": _cli_version(ffmpeg),
        "work": f"render 160 s of a {SOURCE_S} s stereo 44.1 kHz wav: trim, fades, -3 dB",
        "rows": rows,
        "peak_rss": rss,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))


def _cli_version(ffmpeg: str | None) -> str | None:
    if ffmpeg is None:
        return None
    first = subprocess.run([ffmpeg, "-version"], capture_output=True, text=True).stdout
    return first.split("\n", 1)[0]


def markdown(report: Mapping[str, Any]) -> str:
    """The table for the README."""
    lines = [
        f"Work: {report['work']}. PyAV {report['pyav']}; CLI: {report['ffmpeg_cli']}.",
        "Wall time, best of N interleaved runs (ours, CLI, ours, CLI, ...).",
        "",
        "| format | route | ours (s) | ffmpeg CLI (s) | ratio | output bytes |",
        "|---|---|---:|---:|---:|---:|",
    ]
    rows = report["rows"]
    assert isinstance(rows, list)
    for r in rows:
        lines.append(
            f"| {r['format']} | {r['route']} | {r['ours_s']} | {r['cli_s']} | "
            f"{r['ratio']}× | {r['bytes']:,} |"
        )
    rss = report["peak_rss"]
    assert isinstance(rss, dict)
    lines += ["", "| peak RSS (render to opus, child process) | MiB |", "|---|---:|"]
    lines.append(f"| 3-minute source | {rss['3min_opus_mib']:.1f} |")
    if "2h_opus_mib" in rss:
        lines.append(f"| 2-hour source ({rss['2h_opus_s']:.0f} s) | {rss['2h_opus_mib']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
