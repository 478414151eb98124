"""What a preview costs end to end over HTTP: render-cache hit versus miss.

Needs a running stack (`audioprep up`); prints medians and writes JSON:
    python -m bench.preview_cache --api http://127.0.0.1:8000 --seconds 60 --runs 10
"""

from __future__ import annotations

import argparse
import io
import json
import math
import statistics
import struct
import time
import wave
from typing import Any

import httpx


def _wav(seconds: float, rate: int = 44100) -> bytes:
    frames = bytearray()
    amp = 0.1 * 32767
    for n in range(int(seconds * rate)):
        v = int(amp * math.sin(2 * math.pi * 440 * n / rate))
        frames += struct.pack("<hh", v, v)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(frames))
    return buf.getvalue()


def _wait(client: httpx.Client, job_id: str) -> dict[str, Any]:
    while True:
        view: dict[str, Any] = client.get(f"/api/audio/jobs/{job_id}").json()
        if view["status"] in ("completed", "failed", "cancelled"):
            return view
        time.sleep(0.002)


def _preview(
    client: httpx.Client, source_key: str, recipe: dict[str, Any]
) -> tuple[float, dict[str, Any]]:
    start = time.perf_counter()
    resp = client.post("/api/audio/edit/preview", json={"sourceKey": source_key, "recipe": recipe})
    resp.raise_for_status()
    view = _wait(client, resp.json()["jobId"])
    return (time.perf_counter() - start) * 1000, view


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--api", default="http://127.0.0.1:8000")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    with httpx.Client(base_url=args.api, timeout=120) as client:
        files = {"file": ("bench.wav", _wav(args.seconds), "audio/wav")}
        job = client.post("/api/audio/ingest", files=files).json()["jobId"]
        source_key = _wait(client, job)["result"]["sourceKey"]
        misses, hits, post_only = [], [], []
        for i in range(args.runs):
            recipe = {"gainDb": -1.0 - i / 10, "fadeInMs": 500}
            ms, view = _preview(client, source_key, recipe)
            assert view["status"] == "completed" and not view["result"].get("fromCache"), view
            misses.append(ms)
            for _ in range(2):
                start = time.perf_counter()
                resp = client.post(
                    "/api/audio/edit/preview", json={"sourceKey": source_key, "recipe": recipe}
                )
                post_only.append((time.perf_counter() - start) * 1000)
                assert resp.json()["status"] == "completed", resp.text
                ms, view = _preview(client, source_key, recipe)
                assert view["result"]["fromCache"], view
                hits.append(ms)
    result = {
        "source_seconds": args.seconds,
        "runs": args.runs,
        "miss_ms_median": round(statistics.median(misses), 1),
        "hit_ms_median": round(statistics.median(hits), 1),
        "hit_post_only_ms_median": round(statistics.median(post_only), 1),
        "hit_ms_p90": round(sorted(hits)[int(len(hits) * 0.9) - 1], 1),
        "ratio_miss_over_hit": round(statistics.median(misses) / statistics.median(hits), 1),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
