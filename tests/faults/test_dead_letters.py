"""A MAX_DELIVERIES advisory becomes JobFailed{max_deliveries} exactly once, and never for a
job that already ended (against a real server; the advisory is the server's JSON shape)."""

from __future__ import annotations

import json
from pathlib import Path

from audioprep.domain.events import JobCompleted, JobFailed, JobRequested, JobResult
from audioprep.services.worker.dead_letters import fail_dead_letter
from audioprep.shared.advisories import decode_advisory
from audioprep.shared.event_store import EventStore
from audioprep.shared.ids import new_job_id
from audioprep.shared.names import Names
from tests.faults.harness import connected, fault_settings, private_server

NAMES = Names()  # the default prefix: what `audioprep up` uses


def advisory(seq: int, consumer: str = "workers-ingest", deliveries: int = 5) -> bytes:
    return json.dumps(
        {
            "type": "io.nats.jetstream.advisory.v1.max_deliver",
            "id": "x",
            "timestamp": "2026-11-25T15:00:00.123456789Z",
            "stream": "JOBS",
            "consumer": consumer,
            "stream_seq": seq,
            "deliveries": deliveries,
        }
    ).encode()


async def test_advisory_fails_the_job_once(tmp_path: Path) -> None:
    with private_server(tmp_path / "nats") as server:
        settings = fault_settings(server.url, tmp_path / "data")
        async with connected(settings) as nc:
            js = nc.jetstream()
            events = EventStore(nc, js, NAMES)
            dead = JobRequested(job_id=new_job_id(), kind="ingest", source="upload", attempt_base=2)
            dead_seq = await events.request_job(dead)
            done = JobRequested(job_id=new_job_id(), kind="save", source_key="k", format="wav")
            done_seq = await events.request_job(done)
            await events.append(
                JobCompleted(job_id=done.job_id, kind="save", result=JobResult(), attempt=5)
            )

            first = await fail_dead_letter(events, decode_advisory(advisory(dead_seq)))
            again = await fail_dead_letter(events, decode_advisory(advisory(dead_seq)))
            finished = await fail_dead_letter(
                events, decode_advisory(advisory(done_seq, "workers-save"))
            )
            other = await fail_dead_letter(
                events, decode_advisory(advisory(dead_seq, "someone-else"))
            )
            gone = await fail_dead_letter(events, decode_advisory(advisory(10_000)))
            assert [first[0], again[0], finished[0], other[0], gone[0]] == [
                "failed",
                "already_ended",
                "already_ended",
                "ignored",
                "missing",
            ]
            ends = [s.event for s in await events.history(dead.job_id)]
            failed = [e for e in ends if isinstance(e, JobFailed)]
            assert len(failed) == 1
            assert failed[0].error.code == "max_deliveries" and failed[0].attempt == 7
            assert not any(
                isinstance(s.event, JobFailed) for s in await events.history(done.job_id)
            )
