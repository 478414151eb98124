"""Benchmark: one save with three outputs (mp3 + opus + wav) against the same three saves one
after another, on a 30-minute speech-like source.

Run: python bench/publish.py [--minutes 30] [--recipes plain,normalized]
Both sides render as the worker does (in one process, the ingest's measurement reused, the
chain with a true-peak-limited normalisation for `normalized`); the three-output job decodes
and runs the chain once and feeds three encoders. Prints both times, the ratio and each
output's loudness, writes bench/results/publish.json. Not a test.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from audioprep.domain.recipe import Normalize, Recipe  # noqa: E402
from audioprep.services.worker.pipeline.loudness import Loudness, measure_loudness  # noqa: E402
from audioprep.services.worker.pipeline.probe import probe  # noqa: E402
from audioprep.services.worker.pipeline.render import (  # noqa: E402
    OutputSpec,
    render,
    render_outputs,
)
from bench.common import machine, row, write_result, write_tiled_wav  # noqa: E402
from tests import media, speech  # noqa: E402

FORMATS = ("mp3", "opus", "wav")
EXT = {"mp3": "mp3", "opus": "opus", "wav": "wav"}
RECIPES = {
    "plain": Recipe(fade_in_ms=500, fade_out_ms=2000),
    "normalized": Recipe(normalize=Normalize(preset="apple-podcasts"), fade_out_ms=2000),
}


def episode(work: Path, minutes: float) -> Path:
    """tests/speech.py's laptop take (44.1 kHz mono speech with noise and hum) tiled."""
    path = work / f"episode-{minutes:g}min.wav"
    if path.exists():
        return path
    take = speech.make_material("laptop", work / "take")
    pcm, rate = media.decode_pcm(take.path)
    return write_tiled_wav(path, pcm, rate, minutes * 60)


def ingest_facts(src: Path) -> tuple[Any, Loudness]:
    """What the ingest measured (the worker passes it to every render)."""
    facts = Path(str(src) + ".ingest.json")
    if not facts.exists():
        facts.write_text(json.dumps(asdict(measure_loudness(str(src)))))
    return probe(str(src)), Loudness(**json.loads(facts.read_text()))


def _passes(report: Any) -> int:
    return int(report.encode_passes) if report is not None else 1


def one_job(src: Path, out: Path, recipe: Recipe) -> tuple[float, dict[str, float], list[int]]:
    info, loud = ingest_facts(src)
    specs = [OutputSpec(str(out / f"job.{EXT[f]}"), f) for f in FORMATS]
    start = time.perf_counter()
    done = render_outputs(str(src), specs, recipe, source_info=info, source_loudness=loud)
    took = time.perf_counter() - start
    encodes = [_passes(o.loudness_report) for o in done.outputs]
    return took, {s.fmt: media.integrated_lufs(s.dst_path) for s in specs}, encodes


def three_saves(src: Path, out: Path, recipe: Recipe) -> tuple[float, dict[str, float], list[int]]:
    info, loud = ingest_facts(src)
    took = 0.0
    louds: dict[str, float] = {}
    encodes: list[int] = []
    for fmt in FORMATS:
        dst = out / f"single.{EXT[fmt]}"
        start = time.perf_counter()
        done = render(str(src), str(dst), recipe, fmt, source_info=info, source_loudness=loud)
        took += time.perf_counter() - start
        louds[fmt] = media.integrated_lufs(dst)
        encodes.append(_passes(done.loudness_report))
    return took, louds, encodes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=30.0, help="source length (30)")
    parser.add_argument("--recipes", default="plain,normalized", help="plain,normalized")
    args = parser.parse_args()
    if not speech.have_espeak():
        print("needs espeak-ng (make test installs it)")
        sys.exit(2)
    work = Path(tempfile.gettempdir()) / "audioprep-bench-publish"
    work.mkdir(parents=True, exist_ok=True)
    src = episode(work, args.minutes)
    ingest_facts(src)
    rows: list[dict[str, Any]] = []
    details: dict[str, Any] = {}
    for name in args.recipes.split(","):
        recipe = RECIPES[name]
        sequential, seq_louds, seq_encodes = three_saves(src, work, recipe)
        joint, job_louds, job_encodes = one_job(src, work, recipe)
        spread = max(job_louds.values()) - min(job_louds.values())
        details[name] = {
            "one_job_s": round(joint, 2),
            "three_saves_s": round(sequential, 2),
            "ratio": round(joint / sequential, 3),
            "one_job_lufs": job_louds,
            "three_saves_lufs": seq_louds,
            "one_job_spread_lu": round(spread, 3),
            "one_job_encodes": job_encodes,  # per output (a missed one is encoded again)
            "three_saves_encodes": seq_encodes,
        }
        print(
            f"{args.minutes:g} min, {name}: mp3+opus+wav in one job {joint:.1f} s, "
            f"three saves one after another {sequential:.1f} s, ratio {joint / sequential:.2f}; "
            f"loudness {job_louds} (spread {spread:.2f} LU), encodes per output "
            f"{job_encodes} against {seq_encodes}",
            flush=True,
        )
        rows.append(
            row(
                "18 publish",
                f"mp3+opus+wav, {args.minutes:g}-min speech, {name}: one job",
                joint,
                sequential,
                "s",
                higher_is_better=False,
                target="< 1×",
                met=joint < sequential,
                notes="baseline = the same three saves one after another",
            )
        )
    path = write_result(
        "publish", {"minutes": args.minutes, "rows": rows, "details": details, "host": machine()}
    )
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
