"""Benchmark: denoisers and the voice chain, scored against the clean reference; chain speed.

1. Scores: espeak-ng speech (tests/speech.py voice_mix: room tone, two speakers, a 3 s
   pause) with pink noise at 20/15/8 dB SNR and 50 Hz hum, through each candidate; PESQ (wide
   band, 16 kHz, PyPI `pesq`) and STOI (PyPI `pystoi`) against the clean take, and the noise
   floor left in the leading room tone. Candidates: FFmpeg `afftdn` with the measured noise
   floor, `anlmdn`, RNNoise (ours: pyrnnoise, delay removed), and our whole chain.
2. RNNoise libraries on the same 60 s of the episode: the pyrnnoise wheel's, our build with
   the wheel's float weights, our plain-C build with them (bit-exact with the wheel?), and
   our build as the chain runs it (int8 weights, SSE4.1/AVX2 picked at run time): ms per
   10 ms frame and the largest difference from the wheel's output.
3. Speed: the chain (highpass 80, dehum auto, denoise auto, leveler, deess, flac) on a long
   episode, × real time on one core (this process is pinned to one CPU), with our RNNoise and
   with the wheel's (AUDIOPREP_RNNOISE=wheel) in the same run; beside it Debian's ffmpeg CLI
   running the FFmpeg-filter part (highpass, bandreject notches, deesser) on the same file.
Writes bench/results/voice.json and prints markdown tables. Not a test.

Run: python bench/voice.py [--minutes 60]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from pesq import pesq
from pystoi import stoi
from scipy.signal import resample_poly

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from audioprep.domain.recipe import Deess, Denoise, Leveler, Recipe  # noqa: E402
from audioprep.services.worker.pipeline import rnnoise_lib  # noqa: E402
from audioprep.services.worker.pipeline.render import render  # noqa: E402
from audioprep.services.worker.pipeline.signal_path import SignalPath, run_path  # noqa: E402
from audioprep.services.worker.pipeline.voice_analysis import measure_voice  # noqa: E402
from audioprep.services.worker.pipeline.voice_chain import plan_voice  # noqa: E402
from bench.common import machine, write_tiled_wav  # noqa: E402
from tests import media, speech  # noqa: E402

RATE = 48000
SNRS = (20.0, 15.0, 8.0)


def aligned(clean: np.ndarray, out: np.ndarray) -> tuple[np.ndarray, int]:
    """`out` shifted onto `clean` (FFmpeg's afftdn adds ~25 ms; scores need alignment)."""
    a, b = 2 * RATE, 8 * RATE
    window = RATE // 20  # search ±50 ms
    corr = np.correlate(out[0][a - window : b + window], clean[0][a:b], "valid")
    lag = int(np.argmax(corr)) - window
    if lag > 0:
        out = out[:, lag:]
    elif lag < 0:
        out = np.concatenate([np.zeros((out.shape[0], -lag), np.float32), out], axis=1)
    return out, lag


def scores(clean: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    out, _ = aligned(clean, out)
    n = clean.shape[1]
    if out.shape[1] < n:
        out = np.concatenate([out, np.zeros((out.shape[0], n - out.shape[1]), np.float32)], axis=1)
    ref = resample_poly(clean[0], 1, 3)
    deg = resample_poly(out[0][: clean.shape[1]], 1, 3)
    return round(float(pesq(16000, ref, deg, "wb")), 2), round(float(stoi(ref, deg, 16000)), 3)


def floor_db(pcm: np.ndarray) -> float:
    return round(media.rms_db(pcm[:, int(0.2 * RATE) : int(1.8 * RATE)]), 1)


def ffmpeg_af(ffmpeg: str, src: Path, dst: Path, af: str) -> float:
    start = time.perf_counter()
    subprocess.run(
        [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-threads", "1",
         "-i", str(src), "-af", af, "-c:a", "pcm_f32le", str(dst)],
        check=True,
    )  # fmt: skip
    return time.perf_counter() - start


def _row(
    rows: list[dict[str, Any]],
    mix: speech.VoiceMix,
    snr: float,
    name: str,
    out: np.ndarray,
    took: float,
) -> None:
    pesq_v, stoi_v = scores(mix.clean, out)
    seconds = mix.noisy.shape[1] / RATE
    lag = aligned(mix.clean, out)[1]
    rows.append({"snr": snr, "method": name, "pesq": pesq_v, "stoi": stoi_v,
                 "floor_db": floor_db(out), "delay_ms": round(lag * 1000 / RATE, 1) + 0.0,
                 "x_realtime": round(seconds / took, 1) if took else None})  # fmt: skip


class Clock:
    """Wall and CPU seconds of a block: this process's CPU time plus its finished children's
    (the ffmpeg CLI). On a shared machine the wall clock also counts other people's work; CPU
    seconds on the one pinned core are what "× real time on one core" means."""

    def __enter__(self) -> Clock:
        self._wall, self._cpu = time.perf_counter(), self._cpu_now()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = self._cpu_now() - self._cpu

    @staticmethod
    def _cpu_now() -> float:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + children.ru_utime + children.ru_stime


def with_library(library: str) -> None:
    """Which RNNoise the chain's Denoiser loads from now on (rnnoise_lib.load)."""
    os.environ[rnnoise_lib.LIBRARY_ENV] = library


def score_rows(work: Path, ffmpeg: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for snr in SNRS:
        mix = speech.voice_mix(work / f"snr{snr:g}", snr_db=snr, hum_hz=50, name="mix")
        analysis = measure_voice(str(mix.path))
        nf = max(-80.0, min(-20.0, analysis.noise_floor_db or -60.0))

        _row(rows, mix, snr, "noisy input", mix.noisy, 0.0)
        for name, af in (
            ("afftdn (measured floor)", f"afftdn=nr=24:nf={nf:.0f}:tn=1"),
            ("anlmdn", "anlmdn=s=0.001"),
        ):
            dst = work / f"{name.split()[0]}-{snr:g}.wav"
            took = ffmpeg_af(ffmpeg, mix.path, dst, af)
            out, _ = media.decode_pcm(dst)
            _row(rows, mix, snr, name, out, took)
        for name, recipe, library in (
            ("RNNoise (ours)", Recipe(denoise=Denoise(amount_db=30)), "built"),
            ("RNNoise (wheel's library)", Recipe(denoise=Denoise(amount_db=30)), "wheel"),
            ("our chain", Recipe(highpass_hz=80, dehum="auto", denoise="auto"), "built"),
        ):
            with_library(library)
            dst = work / f"ours-{name.split()[0]}-{library}-{snr:g}.wav"
            start = time.perf_counter()
            render(str(mix.path), str(dst), recipe, "wav")
            took = time.perf_counter() - start
            out, _ = media.decode_pcm(dst)
            _row(rows, mix, snr, name, out, took)
        for r in rows[-6:]:
            print(f"  SNR {snr:g}: {r['method']:26s} PESQ {r['pesq']:.2f} STOI {r['stoi']:.3f} "
                  f"floor {r['floor_db']:.1f} dB", flush=True)  # fmt: skip
    return rows


def long_episode(work: Path, minutes: int) -> Path:
    path = work / f"episode-{minutes}min.wav"
    if path.exists():
        return path
    mix = speech.voice_mix(work / "episode-src", snr_db=15, hum_hz=50, level_step_db=6, name="ep")
    pcm = mix.noisy
    return write_tiled_wav(path, pcm, RATE, minutes * 60)


def library_rows(work: Path, seconds: float = 60.0) -> list[dict[str, Any]]:
    """Denoise alone: each library on the same frames (a minute of the episode's material)."""
    mix = speech.voice_mix(work / "episode-src", snr_db=15, hum_hz=50, level_step_db=6, name="ep")
    n = int(seconds * RATE) // rnnoise_lib.FRAME * rnnoise_lib.FRAME
    reps = -(-n // mix.noisy.shape[1])
    x = np.ascontiguousarray(np.tile(mix.noisy[0], reps)[:n], dtype=np.float32)
    frames = n // rnnoise_lib.FRAME

    def run(rnn: rnnoise_lib.Rnnoise) -> tuple[np.ndarray, float]:
        state, out = rnn.create(), np.empty_like(x)
        vad = np.empty(frames, dtype=np.float32)
        step = 16384 // rnnoise_lib.FRAME * rnnoise_lib.FRAME  # about the chain's block size
        with Clock() as clock:
            for i in range(0, n, step):
                j = i // rnnoise_lib.FRAME
                rnn.frames(state, x[i : i + step], out[i : i + step], vad[j : j + step // 480])
        rnn.destroy(state)
        return out, clock.cpu

    candidates = (
        ("pyrnnoise wheel (float weights, plain C)", rnnoise_lib.wheel()),
        ("ours, plain C, float weights", rnnoise_lib.built(simd=False, float_weights=True)),
        ("ours, SIMD (RTCD), float weights", rnnoise_lib.built(float_weights=True)),
        ("ours, SIMD (RTCD), int8 weights: the chain's", rnnoise_lib.built()),
    )
    reference: np.ndarray | None = None
    rows = []
    for name, rnn in candidates:
        run(rnn)  # warm: page in the weights
        out, took = min((run(rnn) for _ in range(3)), key=lambda r: r[1])
        if reference is None:
            reference = out
        diff = out - reference
        err = float(np.mean(diff**2)) / float(np.mean(reference**2))
        rows.append({
            "library": name,
            "ms_per_frame": round(took / frames * 1000, 3),
            "x_realtime_per_channel": round(n / RATE / took, 1),
            "max_abs_diff_vs_wheel": float(np.abs(diff).max()),
            "diff_vs_wheel_db": round(10 * np.log10(err), 1) if err > 0 else None,
        })  # fmt: skip
        print(f"  {name:46s} {rows[-1]['ms_per_frame']:.3f} ms/frame "
              f"max |diff| {rows[-1]['max_abs_diff_vs_wheel']:.2g}", flush=True)  # fmt: skip
    return rows


def speed_rows(work: Path, ffmpeg: str, minutes: int) -> dict[str, Any]:
    src = long_episode(work, minutes)
    seconds = minutes * 60
    analysis = measure_voice(str(src))
    recipe = Recipe(highpass_hz=80, dehum="auto", denoise="auto",
                    leveler=Leveler(strength=0.7), deess=Deess(amount=0.5))  # fmt: skip
    chain: dict[str, Clock] = {}
    for library in ("built", "wheel"):
        with_library(library)
        rnnoise_lib.load()  # built and cached before the clock starts (first use: ~3 s)
        with Clock() as chain[library]:
            render(str(src), str(work / "episode-out.flac"), recipe, "flac")
        print(f"  chain, {library}: {chain[library].cpu:.1f} CPU s, "
              f"{chain[library].wall:.1f} s wall", flush=True)  # fmt: skip
    with_library("built")
    plan = plan_voice(
        Recipe(highpass_hz=80, dehum=50, deess=Deess(amount=0.5)),
        analysis=None,
        hum=None,
        noise_floor_db=None,
        speech_level_db=None,
        source_rate=RATE,
    )
    af = ",".join(f"{name}={args}" for name, args in plan.pre + plan.post)
    # the FFmpeg-filter part alone, same filters, no encoder on either side
    with Clock() as cli:
        subprocess.run(
            [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-threads", "1", "-i",
             str(src), "-af", af + ",aformat=sample_fmts=s16", "-f", "null", "-"],
            check=True,
        )  # fmt: skip
    path = SignalPath(
        timing=[("asetpts", "PTS-STARTPTS")], fades=[], source_rate=RATE, rate=RATE,
        layout="mono", voice=plan,
    )  # fmt: skip
    with Clock() as filters:
        for _ in run_path(str(src), path, gain_db=0.0, ceiling_db=None,
                          tail=[("aformat", "sample_fmts=s16")]):  # fmt: skip
            pass
    out = {
        "minutes": minutes,
        "analysis_hum_hz": analysis.hum.frequency_hz if analysis.hum else None,
        "chain_cpu_seconds": round(chain["built"].cpu, 1),
        "chain_wall_seconds": round(chain["built"].wall, 1),
        "chain_x_realtime": round(seconds / chain["built"].cpu, 1),
        "chain_x_realtime_wall": round(seconds / chain["built"].wall, 1),
        "chain_wheel_cpu_seconds": round(chain["wheel"].cpu, 1),
        "chain_wheel_wall_seconds": round(chain["wheel"].wall, 1),
        "chain_wheel_x_realtime": round(seconds / chain["wheel"].cpu, 1),
        "chain_wheel_x_realtime_wall": round(seconds / chain["wheel"].wall, 1),
        "ffmpeg_filters_cpu_seconds": round(cli.cpu, 2),
        "our_filters_cpu_seconds": round(filters.cpu, 2),
        "filters_ratio": round(filters.cpu / cli.cpu, 2),
        "filters_ratio_wall": round(filters.wall / cli.wall, 2),
    }
    print(json.dumps(out), flush=True)
    return out


def pin_one_cpu() -> int:
    """Run (and let the ffmpeg CLI run) on one CPU: "× real time on one core"."""
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-scores", action="store_true")
    parser.add_argument("--skip-libraries", action="store_true")
    args = parser.parse_args()
    cpu = pin_one_cpu()
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None or not speech.have_espeak():
        print("needs Debian's ffmpeg and espeak-ng (make bench installs them)")
        sys.exit(2)
    work = Path(tempfile.gettempdir()) / "audioprep-bench-voice"
    work.mkdir(parents=True, exist_ok=True)
    measured = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows = [] if args.skip_scores else score_rows(work, ffmpeg)
    libraries = [] if args.skip_libraries else library_rows(work)
    speed = None if args.skip_speed else speed_rows(work, ffmpeg, args.minutes)
    out = ROOT / "bench" / "results" / "voice.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"measured": measured, "machine": machine(), "cpu_pinned": cpu, "rows": rows,
              "libraries": libraries, "speed": speed}  # fmt: skip
    out.write_text(json.dumps(result, indent=2))
    print(f"\nmeasured {measured}, pinned to CPU {cpu}\n")
    print("| SNR | method | PESQ | STOI | floor in room tone (dBFS) | delay (ms) |")
    print("|---:|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['snr']:g} dB | {r['method']} | {r['pesq']:.2f} | {r['stoi']:.3f} "
              f"| {r['floor_db']:.1f} | {r['delay_ms']:g} |")  # fmt: skip
    if libraries:
        print("\n| RNNoise library | ms per 10 ms frame | × real time (one channel) "
              "| max abs difference from the wheel | difference (dB re signal) |")  # fmt: skip
        print("|---|---:|---:|---:|---:|")
        for r in libraries:
            db = "bit-exact" if r["diff_vs_wheel_db"] is None else f"{r['diff_vs_wheel_db']:g}"
            print(f"| {r['library']} | {r['ms_per_frame']:.3f} | {r['x_realtime_per_channel']:g} "
                  f"| {r['max_abs_diff_vs_wheel']:.2g} | {db} |")  # fmt: skip
    if speed:
        print("\n" + json.dumps(speed))


if __name__ == "__main__":
    main()
