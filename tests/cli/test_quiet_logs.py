"""Normal use logs nothing alarming: an idle dead-letter fetch is no warning, media calls print
no runpy warnings, and `storage gc --yes` prints its report without log lines in it."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from audioprep.services.worker.dead_letters import DeadLetterFailer
from audioprep.shared import keys, pull_loop
from audioprep.shared.event_store import EventStore
from audioprep.shared.ids import new_job_id
from audioprep.shared.names import Names
from audioprep.shared.storage import open_storage
from tests.cli.conftest import CliStack, run_cli
from tests.faults.harness import (
    Workers,
    connected,
    fault_settings,
    ingest_request,
    make_sources,
    private_server,
    wait_terminal,
)

NAMES = Names()  # the default prefix: what `audioprep up` uses


async def test_an_idle_dead_letter_fetch_is_not_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A fetch timeout this short makes nats-py's batch fetch run out of time between its two
    # pull requests on most tries, the idle case it reports with a plain TimeoutError.
    monkeypatch.setattr(pull_loop, "FETCH_TIMEOUT_S", 0.0002)
    with private_server(tmp_path / "nats") as server:
        settings = fault_settings(server.url, tmp_path / "data")
        async with connected(settings) as nc:
            js = nc.jetstream()
            failer = DeadLetterFailer(events=EventStore(nc, js, NAMES), js=js, settings=settings)
            stop = asyncio.Event()
            with caplog.at_level(logging.INFO):
                asyncio.get_running_loop().call_later(1.0, stop.set)  # a second of idling
                await asyncio.wait_for(failer.run(stop), timeout=10)
    loggers = ("audioprep.dead_letters", "audioprep.pull")
    noise = [r for r in caplog.records if r.name in loggers]
    assert not noise, [r.getMessage() + " " + str(r.__dict__.get("error")) for r in noise]


async def test_a_worker_process_logs_no_warnings_for_a_normal_job(tmp_path: Path) -> None:
    """`python -m audioprep.services.cli.main worker` (what `up` runs): no runpy RuntimeWarning per
    media child, nothing at WARNING for an ingest that goes well."""
    with private_server(tmp_path / "nats") as server:
        settings = fault_settings(server.url, tmp_path / "data", worker_concurrency=1)
        async with connected(settings) as nc:
            events = EventStore(nc, nc.jetstream(), NAMES)
            media = tmp_path / "media"
            media.mkdir()
            sources = await make_sources(settings, media, seconds=1.0)
            requests = [await ingest_request(sources) for _ in range(2)]  # two media children
            for request in requests:
                await events.request_job(request)
            workers = Workers(settings, tmp_path)
            workers.start()
            try:
                assert not await wait_terminal(events, [r.job_id for r in requests], timeout=60)
            finally:
                workers.stop_all()
            logs = workers.logs()
    assert "job completed" in logs, logs
    assert "RuntimeWarning" not in logs, logs
    assert not [ln for ln in logs.splitlines() if " WARNING " in ln or " ERROR " in ln], logs


async def test_storage_gc_yes_prints_its_report_and_no_log_lines(
    cli_stack: CliStack, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    storage = open_storage((data / "storage").resolve().as_uri())
    orphan = keys.upload_key("default", new_job_id(), "orphan.wav")  # no job was requested
    await storage.put_bytes(orphan, b"RIFF....WAVE")
    r = await run_cli(
        cli_stack, "storage", "gc", "--yes", "--grace", "0s", AUDIOPREP_DATA_DIR=str(data)
    )
    assert r.code == 0, r.err
    assert "deleting 1 objects" in r.out, r.out
    assert "upload without a job" in r.out, r.out
    assert await storage.head(orphan) is None
    for line in (r.out + r.err).splitlines():
        with pytest.raises(ValueError):  # human-readable lines only, no JSON log records
            json.loads(line)
    assert r.err == "", r.err
