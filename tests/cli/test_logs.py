"""Logs are JSON lines with job ids, and one trace id flows from the HTTP request to the worker."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from audioprep.shared import logs
from tests.cli.conftest import CliStack, wait_view
from tests.media import write_tone

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logs.JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def json_lines() -> Iterator[Lines]:
    handler = Lines()
    logger = logging.getLogger("audioprep")
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


async def _upload(stack: CliStack, path: Path, headers: dict[str, str]) -> str:
    async with httpx.AsyncClient(base_url=stack.api_url) as client:
        with path.open("rb") as f:
            resp = await client.post(
                "/api/audio/ingest", files={"file": (path.name, f)}, headers=headers
            )
    assert resp.status_code == 202, resp.text
    return str(resp.json()["jobId"])


def _for_job(lines: Lines, job_id: str) -> list[dict[str, object]]:
    docs = [json.loads(line) for line in lines.lines]  # every line is one JSON document
    assert all({"ts", "level", "logger", "msg"} <= d.keys() for d in docs)
    return [d for d in docs if d.get("job_id") == job_id]


async def test_trace_id_flows_from_request_to_worker_logs(
    cli_stack: CliStack, media_dir: Path, json_lines: Lines
) -> None:
    wav = write_tone(media_dir / "l.wav", seconds=1.0, freq=440.0)
    job_id = await _upload(cli_stack, wav, {"traceparent": TRACEPARENT})
    await wait_view(cli_stack, job_id)
    mine = _for_job(json_lines, job_id)
    by_msg = {d["msg"]: d for d in mine}
    requested = by_msg["job requested"]
    assert requested["logger"] == "audioprep.api" and requested["trace_id"] == TRACE_ID
    for msg in ("job started", "job completed"):
        line = by_msg[msg]
        assert line["logger"] == "audioprep.worker"
        assert (line["kind"], line["attempt"], line["trace_id"]) == ("ingest", 1, TRACE_ID)
    # Handler logs (pipeline steps) inherit the bound job fields.
    assert all(d["trace_id"] == TRACE_ID for d in mine)


async def test_a_request_without_traceparent_starts_a_trace(
    cli_stack: CliStack, media_dir: Path, json_lines: Lines
) -> None:
    wav = write_tone(media_dir / "n.wav", seconds=1.0, freq=440.0)
    job_id = await _upload(cli_stack, wav, {"traceparent": "garbage"})
    await wait_view(cli_stack, job_id)
    mine = _for_job(json_lines, job_id)
    trace_ids = {d.get("trace_id") for d in mine}
    assert len(trace_ids) == 1
    (trace_id,) = trace_ids
    assert isinstance(trace_id, str) and len(trace_id) == 32 and trace_id != "0" * 32
    assert {d["logger"] for d in mine} >= {"audioprep.api", "audioprep.worker"}


def test_formatters_and_bound_fields() -> None:
    record = logging.LogRecord("audioprep.x", logging.INFO, __file__, 1, "hello", None, None)
    record.job_id = "J1"
    with logs.bound(job_id="ignored", kind="save", trace_id="t"):
        doc = json.loads(logs.JsonFormatter().format(record))
        console = logs.ConsoleFormatter().format(record)
    assert doc["msg"] == "hello" and doc["job_id"] == "J1"  # explicit extra wins
    assert doc["kind"] == "save" and doc["trace_id"] == "t"
    assert "kind=save" in console and "job_id=J1" in console
    assert "kind" not in json.loads(logs.JsonFormatter().format(record))  # unbound again


def test_traceparent_parsing() -> None:
    assert logs.trace_id_of(TRACEPARENT) == TRACE_ID
    assert logs.parse_traceparent(logs.new_traceparent()) is not None
    for bad in ("", "garbage", f"ff-{TRACE_ID}-00f067aa0ba902b7-01", f"00-{'0' * 32}-00f0-01"):
        assert logs.parse_traceparent(bad) is None
