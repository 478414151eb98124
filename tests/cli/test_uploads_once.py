"""An upload is stored once: the ingest moves it into sources/ (a rerun finds it there), and
`up` runs `storage gc --yes` periodically (`storage gc --every`)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import httpx

from audioprep.domain.events import JobRequested
from audioprep.shared import keys
from audioprep.shared.event_store import EventStore
from audioprep.shared.ids import new_job_id
from audioprep.shared.names import Names
from audioprep.shared.settings import Settings
from audioprep.shared.storage import open_storage
from tests.cli.conftest import AUDIOPREP, CliStack, wait_view
from tests.media import write_tone

NAMES = Names()  # the default prefix: what `audioprep up` uses


async def test_a_completed_upload_ingest_keeps_one_copy(
    cli_stack: CliStack, media_dir: Path
) -> None:
    wav = write_tone(media_dir / "song.wav", seconds=1.0, freq=440.0)
    async with httpx.AsyncClient(base_url=cli_stack.api_url) as client:
        with wav.open("rb") as f:
            resp = await client.post("/api/audio/ingest", files={"file": ("song.wav", f)})
    job_id = resp.json()["jobId"]
    view = await wait_view(cli_stack, job_id)
    assert view["status"] == "completed", view
    storage = open_storage(cli_stack.settings.storage)
    assert await storage.list(f"uploads/{job_id}/") == []
    source = await storage.head(view["result"]["sourceKey"])  # type: ignore[index]
    assert source is not None and source.size == wav.stat().st_size


async def test_a_rerun_after_the_move_uses_the_stored_source(
    cli_stack: CliStack, media_dir: Path
) -> None:
    """A redelivered ingest (its upload already moved) and a `dlq retry` of one (a new job
    `retry_of` the old) both find their source."""
    wav = write_tone(media_dir / "song.wav", seconds=1.0, freq=440.0)
    storage = open_storage(cli_stack.settings.storage)
    events = EventStore(cli_stack.nc, cli_stack.nc.jetstream(), NAMES)

    rerun = new_job_id()  # as the first attempt left it: no upload, the source in place
    await storage.put_file(keys.source_key("default", rerun, "song.wav"), wav)
    retry = new_job_id()  # a retry of `rerun`: the upload (same key as the original's) gone
    for job_id, retry_of in ((rerun, None), (retry, rerun)):
        await events.request_job(
            JobRequested(
                job_id=job_id,
                kind="ingest",
                source="upload",
                upload_key=keys.upload_key("default", rerun, "song.wav"),
                filename="song.wav",
                retry_of=retry_of,
            )
        )
        view = await wait_view(cli_stack, job_id)
        assert view["status"] == "completed", view
        assert view["result"]["durationMs"] == 1000  # type: ignore[index]
    assert await storage.head(keys.source_key("default", retry, "song.wav")) is not None


async def test_storage_gc_every_runs_until_sigterm(cli_stack: CliStack, tmp_path: Path) -> None:
    assert Settings.from_env({}).gc_interval_s == 3600  # `up` runs it hourly by default
    assert Settings.from_env({"AUDIOPREP_GC_INTERVAL_S": "0"}).gc_interval_s == 0
    data = tmp_path / "data"
    storage = open_storage((data / "storage").resolve().as_uri())
    orphan = keys.upload_key("default", new_job_id(), "orphan.wav")  # no job was requested
    await storage.put_bytes(orphan, b"RIFF....WAVE")
    proc = await asyncio.create_subprocess_exec(
        AUDIOPREP,
        *("storage", "gc", "--yes", "--every", "1s", "--grace", "0s"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_stack.env(AUDIOPREP_DATA_DIR=str(data), AUDIOPREP_LOG_FORMAT="json"),
    )
    try:
        deadline = time.monotonic() + 30
        while await storage.head(orphan) is not None:
            assert proc.returncode is None, await proc.communicate()
            assert time.monotonic() < deadline, "the periodic gc did not delete the orphan"
            await asyncio.sleep(0.05)
        await storage.put_bytes(orphan, b"RIFF....WAVE")  # the next pass takes it too
        while await storage.head(orphan) is not None:
            assert time.monotonic() < deadline, "no second pass"
            await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), timeout=15)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err
    assert out == b""  # a service: it logs, it prints no report
    records = [json.loads(ln) for ln in err.decode().splitlines()]
    passes = [r for r in records if r["msg"] == "storage gc"]
    assert len(passes) == 2, err
    assert passes[0]["objects"] == 1 and passes[0]["reasons"] == {"upload without a job": 1}
    assert {r["level"] for r in records} == {"info"}, err
