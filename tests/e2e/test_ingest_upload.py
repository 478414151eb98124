"""Issue 3 end to end: upload → JobRequested → worker → projector → KV → poll completed."""

from __future__ import annotations

import random
from pathlib import Path

from tests.conftest import Stack
from tests.jobs_helpers import wait_for_job
from tests.media import sine_lufs, write_tone


async def _upload(stack: Stack, path: Path, content_type: str = "audio/wav") -> str:
    with path.open("rb") as f:
        resp = await stack.client.post(
            "/api/audio/ingest", files={"file": (path.name, f, content_type)}
        )
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["status"] == "pending"
    return str(body["jobId"])


async def test_wav_upload_completes_with_measured_facts(stack: Stack, media_dir: Path) -> None:
    wav = write_tone(media_dir / "tone.wav", seconds=3.0, freq=997.0, amplitude_dbfs=-20.0)
    job_id = await _upload(stack, wav)
    view = await wait_for_job(stack.client, job_id)
    assert view["status"] == "completed", view
    result = view["result"]
    assert abs(result["durationMs"] - 3000) <= 20
    assert result["sampleRate"] == 44100
    assert result["channels"] == 2
    assert result["container"] == "wav"
    assert abs(result["loudness"]["integratedLufs"] - sine_lufs(-20.0)) < 0.5
    assert result["sourceKey"].startswith(f"sources/{job_id}/")
    assert result["peaksKey"] == f"peaks/{job_id}.json"
    peaks_path = stack.settings.data_dir / "storage" / result["peaksKey"]
    assert peaks_path.stat().st_size > 100
    assert view["progress"] == 100


async def test_mp3_upload_completes(stack: Stack, media_dir: Path) -> None:
    mp3 = write_tone(media_dir / "tone.mp3", seconds=3.0, freq=440.0, codec="libmp3lame")
    job_id = await _upload(stack, mp3, "audio/mpeg")
    view = await wait_for_job(stack.client, job_id)
    assert view["status"] == "completed", view
    result = view["result"]
    assert abs(result["durationMs"] - 3000) <= 50  # mp3 encoder padding is trimmed by PyAV
    assert result["codec"] == "mp3"
    assert result["channels"] == 2


async def test_random_bytes_fail_with_a_code(stack: Stack, media_dir: Path) -> None:
    junk = media_dir / "junk.mp3"
    # Seeded: a few random files in a thousand start with an MPEG sync word (corrupt_media).
    junk.write_bytes(b"\x00" + random.Random(20261125).randbytes(64 * 1024))
    job_id = await _upload(stack, junk, "audio/mpeg")
    view = await wait_for_job(stack.client, job_id)
    assert view["status"] == "failed", view
    assert view["error"]["code"] == "unsupported_media"
    assert view["error"]["retryable"] is False


async def test_unknown_job_is_problem_404(stack: Stack) -> None:
    resp = await stack.client.get("/api/audio/jobs/01ZZZZZZZZZZZZZZZZZZZZZZZZ")
    assert resp.status_code == 404
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert resp.json()["code"] == "job_not_found"
