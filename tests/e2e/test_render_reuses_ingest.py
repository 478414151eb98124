"""Renders reuse what the source's ingest measured: the title travels into the output."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Stack
from tests.e2e.test_api_support import ingest_source, local_path
from tests.jobs_helpers import wait_for_job
from tests.media import container_title, measure_duration_s, write_tone


async def test_saved_output_carries_the_source_title(stack: Stack, media_dir: Path) -> None:
    src = write_tone(media_dir / "show.flac", seconds=2.0, codec="flac", title="Morning Show")
    source_key = await ingest_source(stack, src)
    body = {"sourceKey": source_key, "recipe": {"fadeInMs": 100}, "format": "mp3"}
    resp = await stack.client.post("/api/audio/edit/save", json=body)
    assert resp.status_code == 202, resp.text
    view = await wait_for_job(stack.client, resp.json()["jobId"])
    assert view["status"] == "completed", view
    out = local_path(stack, view["result"]["preparedKey"])
    assert container_title(out) == "Morning Show"
    assert abs(measure_duration_s(out) - 2.0) <= 0.02
