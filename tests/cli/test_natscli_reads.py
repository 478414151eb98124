"""The natscli commands of docs/operators.md, reproduced with nats-py, stay true.

natscli can't be installed here, so each read is done the way the command does it (same stream,
subject filter and deliver policy; see tests/cli/natscli.py) against a job that went through the
real stack.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest

from audioprep.shared import logs
from audioprep.shared.event_store import EventStore
from audioprep.shared.names import Names
from audioprep.shared.nats_conn import connect
from audioprep.shared.nats_server import NatsServer
from tests.cli import natscli
from tests.cli.conftest import CliStack, wait_view
from tests.media import write_tone

NAMES = Names()  # the default prefix: what `audioprep up` uses

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


@pytest.fixture(scope="module")
async def save_job(cli_stack: CliStack, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A save job (with its ingest) run through HTTP with a known trace id."""
    wav = write_tone(tmp_path_factory.mktemp("natscli") / "n.wav", seconds=1.0, freq=440.0)
    headers = {"traceparent": f"00-{TRACE_ID}-b7ad6b7169203331-01"}
    async with httpx.AsyncClient(base_url=cli_stack.api_url, headers=headers) as client:
        with wav.open("rb") as f:
            resp = await client.post("/api/audio/ingest", files={"file": ("n.wav", f)})
        ingest = await wait_view(cli_stack, resp.json()["jobId"])
        body = {"sourceKey": ingest["result"]["sourceKey"], "format": "opus"}  # type: ignore[index]
        resp = await client.post("/api/audio/edit/save", json=body)
        assert resp.status_code == 202, resp.text
    job_id = str(resp.json()["jobId"])
    assert (await wait_view(cli_stack, job_id))["status"] == "completed"
    return job_id


def _is_compact_json(data: bytes) -> dict[str, object]:
    doc = json.loads(data)
    assert json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode() == data
    assert isinstance(doc, dict)
    return doc


def _iso_utc(value: object) -> datetime:
    assert isinstance(value, str) and value.endswith("Z"), value
    return datetime.fromisoformat(value)


async def test_stream_info(cli_stack: CliStack) -> None:
    """`nats stream info JOBS`."""
    info = await natscli.stream_info(cli_stack.nc.jetstream())
    c = info.config
    assert c.subjects == ["jobs.>"]
    assert (c.deny_delete, c.deny_purge, c.allow_direct) == (True, True, True)
    assert str(getattr(c.retention, "value", c.retention)) == "limits"
    assert c.duplicate_window == 120
    text = natscli.render_stream_info(info)
    assert "Subjects: jobs.>" in text and "Allows Purge: false" in text


async def test_follow_one_job_and_view_the_stream(cli_stack: CliStack, save_job: str) -> None:
    """`nats sub --stream JOBS 'jobs.*.<id>.>'` and `nats stream view JOBS`."""
    js = cli_stack.nc.jetstream()
    msgs = await natscli.follow_job(js, save_job)
    types = [_is_compact_json(m.data)["type"] for m in msgs]
    assert types[:2] == ["JobRequested", "JobStarted"] and types[-1] == "JobCompleted"
    assert all(m.subject.startswith(f"jobs.save.{save_job}.") for m in msgs)
    assert all((m.headers or {})["traceparent"].split("-")[1] == TRACE_ID for m in msgs)
    assert (msgs[0].headers or {})["Nats-Msg-Id"] == save_job
    for m in msgs:
        _iso_utc(json.loads(m.data)["at"])
    seqs = [m.metadata.sequence.stream for m in msgs]
    assert seqs == sorted(seqs)

    # `nats stream view JOBS` from the job's first message: every payload reads as compact JSON.
    viewed = await natscli.read_range(js, NAMES.stream_subjects, start_seq=seqs[0])
    assert viewed[0].metadata.sequence.stream == seqs[0]
    assert {m.metadata.sequence.stream for m in viewed} >= set(seqs)
    for m in viewed:
        _is_compact_json(m.data)
    assert f"[{seqs[0]}] Subject: jobs.save.{save_job}.requested" in natscli.render_view(viewed)
    assert "Received JetStream message: stream: JOBS seq" in natscli.render_sub(msgs)


async def test_kv_get_and_last_for(cli_stack: CliStack, save_job: str) -> None:
    """`nats kv get jobs <id>` and `nats stream get JOBS --last-for jobs.save.<id>.completed`."""
    js = cli_stack.nc.jetstream()
    entry = await natscli.kv_get(js, save_job)
    view = _is_compact_json(entry.value or b"")
    assert (view["jobId"], view["status"], view["progress"]) == (save_job, "completed", 100)
    _iso_utc(view["updatedAt"])
    last = await natscli.last_for(js, NAMES.event_subject("save", save_job, "completed"))
    event = _is_compact_json(last.data or b"")
    assert event["type"] == "JobCompleted"
    assert str(event["result"]["preparedKey"]).endswith(".opus")  # type: ignore[index]
    assert view["seq"] == last.seq
    assert f"Item: JOBS#{last.seq}" in natscli.render_get(last)


async def test_replay_from_a_time(cli_stack: CliStack, save_job: str) -> None:
    """`nats sub --stream JOBS --since <duration> 'jobs.save.>'` (deliver by start time)."""
    js = cli_stack.nc.jetstream()
    first = (await natscli.follow_job(js, save_job))[0]
    since = first.metadata.timestamp - timedelta(milliseconds=1)  # metadata is in µs
    replayed = await natscli.read_range(js, "jobs.save.>", since=since)
    assert first.metadata.sequence.stream in {m.metadata.sequence.stream for m in replayed}
    assert all(m.metadata.timestamp >= since for m in replayed)
    assert all(m.subject.startswith("jobs.save.") for m in replayed)


async def test_backup_and_restore_to_a_new_server(
    cli_stack: CliStack, save_job: str, tmp_path: Path
) -> None:
    """`nats stream backup JOBS DIR`, then `nats stream restore DIR` on a fresh server."""
    b = await natscli.backup(cli_stack.nc, tmp_path / "backup")
    assert (tmp_path / "backup" / "backup.json").exists() and b.size > 0
    assert json.loads((tmp_path / "backup" / "backup.json").read_text())["config"]["name"] == "JOBS"

    other = NatsServer(tmp_path / "restored-store").start()
    try:
        settings = cli_stack.settings.with_(nats_url=other.url)
        nc = await connect(settings, "restore-test")
        try:
            info = await natscli.restore(nc, tmp_path / "backup")
            assert info["state"]["last_seq"] == b.state["last_seq"]
            js = nc.jetstream()
            history = await EventStore(nc, js, NAMES).history(save_job)
            assert [s.event.name for s in history][-1] == "completed"
            last = await natscli.last_for(js, NAMES.event_subject("save", save_job, "completed"))
            assert logs.trace_id_of((last.headers or {})["traceparent"]) == TRACE_ID
            restored = await js.stream_info(NAMES.stream)
            assert restored.config.deny_purge and restored.state.messages == b.state["messages"]
        finally:
            await nc.close()
    finally:
        other.stop()
