"""A job gets one terminal event, whoever tries to end it and however often."""

from __future__ import annotations

import asyncio
from pathlib import Path

from audioprep.domain.events import (
    ErrorInfo,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobProgressed,
    JobRequested,
    JobResult,
)
from audioprep.shared.event_store import EventStore
from audioprep.shared.ids import new_job_id
from audioprep.shared.names import Names
from tests.faults.harness import connected, fault_settings, private_server

NAMES = Names()  # the default prefix: what `audioprep up` uses


async def test_only_the_first_terminal_event_lands(tmp_path: Path) -> None:
    with private_server(tmp_path / "nats") as server:
        settings = fault_settings(server.url, tmp_path / "data")
        async with connected(settings) as nc:
            events = EventStore(nc, nc.jetstream(), NAMES)
            job_id = new_job_id()
            await events.request_job(JobRequested(job_id=job_id, kind="save", source_key="k"))
            await events.append(JobProgressed(job_id=job_id, kind="save", progress=50))
            # Racers: two completions (a redelivered job), a dead letter and a late cancel.
            racers = [
                JobCompleted(job_id=job_id, kind="save", result=JobResult(size_bytes=1)),
                JobCompleted(job_id=job_id, kind="save", result=JobResult(size_bytes=2)),
                JobFailed(
                    job_id=job_id, kind="save", error=ErrorInfo(code="max_deliveries", message="x")
                ),
                JobCancelled(job_id=job_id, kind="save"),
            ]
            seqs = await asyncio.gather(*(events.append_terminal(e) for e in racers))
            assert sum(s is not None for s in seqs) == 1, seqs
            # Later attempts, also after more events of the job, change nothing.
            await events.append(JobProgressed(job_id=job_id, kind="save", progress=99))
            assert await events.append_terminal(racers[2]) is None
            history = await events.history(job_id)
            ends = [s for s in history if s.event.terminal]
            assert len(ends) == 1
            assert (await events.terminal_event(job_id)) == ends[0]
