"""`audioprep jobs ls`: newest first by creation, a page at a time, never an empty list while
jobs exist (jobs the projector has not written yet are folded from the stream)."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import httpx

from audioprep.domain.events import JobRequested
from audioprep.shared.event_store import EventStore
from audioprep.shared.ids import idempotent_job_id, new_job_id
from audioprep.shared.names import Names
from tests.cli.conftest import CliStack, run_cli, wait_view
from tests.faults.harness import connected, fault_settings, private_server
from tests.media import write_tone

NAMES = Names()  # the default prefix: what `audioprep up` uses


async def _upload(stack: CliStack, path: Path, headers: dict[str, str] | None = None) -> str:
    async with httpx.AsyncClient(base_url=stack.api_url) as client:
        with path.open("rb") as f:
            resp = await client.post(
                "/api/audio/ingest", files={"file": (path.name, f)}, headers=headers or {}
            )
    assert resp.status_code == 202, resp.text
    return str(resp.json()["jobId"])


def _ids(out: str) -> list[str]:
    return [ln.split()[0] for ln in out.splitlines()[1:-1]]


async def test_jobs_ls_is_newest_first_and_pages(cli_stack: CliStack, media_dir: Path) -> None:
    wav = write_tone(media_dir / "a.wav", seconds=0.5, freq=440.0)
    # An Idempotency-Key job id is a hash: pick one that sorts above the time-based ids, so
    # ordering by id (not by creation) would put this older job first.
    keys = (f"ls-{uuid.uuid4()}" for _ in range(1000))
    key = next(k for k in keys if idempotent_job_id("default", k) > "2")
    older = await _upload(cli_stack, wav, {"Idempotency-Key": key})
    middle = await _upload(cli_stack, wav)
    newest = await _upload(cli_stack, wav)
    for job_id in (older, middle, newest):
        await wait_view(cli_stack, job_id)

    r = await run_cli(cli_stack, "jobs", "ls", "--limit", "0")
    assert r.code == 0, r.err
    ids = _ids(r.out)
    assert [i for i in ids if i in (older, middle, newest)] == [newest, middle, older], r.out
    assert r.out.splitlines()[-1] == f"({len(ids)} shown, newest first)"
    docs = json.loads((await run_cli(cli_stack, "jobs", "ls", "--limit", "0", "--json")).out)
    created = [d["createdAt"] for d in docs]
    assert created == sorted(created, reverse=True)

    # A page of two, then the next page from the hint it prints.
    r = await run_cli(cli_stack, "jobs", "ls", "--limit", "2")
    assert _ids(r.out) == [newest, middle], r.out
    hint = re.search(r"older: audioprep jobs ls --before (\w+)\)$", r.out.splitlines()[-1])
    assert hint and hint.group(1) == middle, r.out
    r = await run_cli(cli_stack, "jobs", "ls", "--limit", "1", "--before", middle)
    assert _ids(r.out) == [older], r.out
    r = await run_cli(cli_stack, "jobs", "ls", "--before", newest, "--json")
    before = [d["jobId"] for d in json.loads(r.out)]
    assert before[:2] == [middle, older] and newest not in before


async def test_jobs_ls_shows_jobs_the_projector_has_not_written(
    cli_stack: CliStack, tmp_path: Path
) -> None:
    """No projector runs here: the KV bucket is empty, the stream holds three requests."""
    with private_server(tmp_path / "nats") as server:
        settings = fault_settings(server.url, tmp_path / "data")
        async with connected(settings) as nc:
            events = EventStore(nc, nc.jetstream(), NAMES)
            ids = []
            for kind in ("ingest", "save", "ingest"):
                request = JobRequested(
                    job_id=new_job_id(), kind=kind, source="url", url="http://x.test/a.mp3"
                )
                await events.request_job(request)
                ids.append(request.job_id)
        r = await run_cli(cli_stack, "jobs", "ls", "--nats-url", server.url)
        assert r.code == 0, r.err
        assert _ids(r.out) == ids[::-1], r.out
        assert all(" pending " in ln for ln in r.out.splitlines()[1:-1]), r.out
        r = await run_cli(cli_stack, "jobs", "ls", "--kind", "save", "--nats-url", server.url)
        assert _ids(r.out) == [ids[1]], r.out
