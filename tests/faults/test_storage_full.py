"""Issue 20 scenario 5, second half: the media-storage volume fills up.

Media storage lives on its own 12 MB tmpfs; the JetStream store is elsewhere. Filled to the
last byte: uploads answer 507 `storage_full` (problem+json, Retry-After) and leave nothing
behind, renders retry with `storage_full` and, kept full past their last delivery, fail with
it; the event store is unaffected (JSON requests are still accepted, /readyz stays ready).
Space freed, the retrying jobs complete and uploads are accepted again. Real worker process.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from pathlib import Path

import pytest

from audioprep.domain.events import JobRetrying
from audioprep.shared.event_store import EventStore
from audioprep.shared.storage import open_storage
from tests.conftest import running_stack
from tests.faults.harness import (
    NAMES,
    Workers,
    audit,
    by_job,
    connected,
    fault_settings,
    fill_volume,
    private_server,
    read_stream,
    tmpfs,
    wait_terminal,
)
from tests.jobs_helpers import wait_for_job
from tests.media import measure_duration_s, write_tone

pytestmark = pytest.mark.slow

VOLUME_MB = 12
MAX_DELIVER = 3  # retries wait ≤1 s, ≤2 s: a job kept full fails within ~3 s


async def test_full_media_storage_refuses_uploads_retries_jobs_and_heals(tmp_path: Path) -> None:
    with (
        tmpfs(tmp_path / "media-volume", VOLUME_MB) as volume,
        private_server(tmp_path / "nats") as server,
    ):
        settings = fault_settings(
            server.url,
            tmp_path / "data",
            storage_url=(volume / "storage").as_uri(),
            max_deliver=MAX_DELIVER,
            ack_wait_s=3.0,
        )
        filler = volume / "filler.bin"
        tone = write_tone(tmp_path / "tone.wav", seconds=1.0).read_bytes()
        statuses: Counter[int] = Counter()
        refused: Counter[str] = Counter()
        accepted: list[str] = []
        async with connected(settings) as nc, running_stack(settings, nc, workers=0) as st:
            js = nc.jetstream()
            events = EventStore(nc, js, NAMES)
            workers = Workers(settings, tmp_path)
            workers.start()

            async def upload() -> int:
                resp = await st.client.post(
                    "/api/audio/ingest", files={"file": ("tone.wav", tone, "audio/wav")}
                )
                statuses[resp.status_code] += 1
                if resp.status_code == 202:
                    accepted.append(resp.json()["jobId"])
                elif resp.status_code == 507:
                    assert resp.headers["content-type"].startswith("application/problem+json")
                    assert int(resp.headers["retry-after"]) > 0
                    refused[resp.json()["code"]] += 1
                return resp.status_code

            async def save(gain_db: float) -> str:
                resp = await st.client.post(
                    "/api/audio/edit/save",
                    json={
                        "sourceKey": source_key,
                        "recipe": {"gainDb": gain_db},
                        "format": "wav",
                        "filename": "out",
                    },
                )
                statuses[resp.status_code] += 1
                assert resp.status_code == 202, resp.text  # the event store is unaffected
                accepted.append(resp.json()["jobId"])
                return str(resp.json()["jobId"])

            async def retried_for_full(job_id: str) -> bool:
                return any(
                    isinstance(s.event, JobRetrying) and s.event.error.code == "storage_full"
                    for s in await events.history(job_id)
                )

            async def until(predicate: object, timeout: float) -> None:
                deadline = time.monotonic() + timeout
                while not await predicate():  # type: ignore[operator]
                    assert time.monotonic() < deadline, "timed out"
                    await asyncio.sleep(0.1)

            try:
                # Room: uploads work; the first ingest is the source of the renders below.
                for _ in range(2):
                    assert await upload() == 202
                assert not await wait_terminal(events, accepted, timeout=60)
                # the view as the API shows it once the projector has it (not just the event)
                view = await wait_for_job(st.client, accepted[0], timeout=30)
                source_key = view["result"]["sourceKey"]
                before = _objects(volume)

                # Full: uploads refused with 507, nothing left behind; JSON requests accepted.
                fill_volume(filler)
                for _ in range(3):
                    assert await upload() == 507
                assert _objects(volume) == before
                ready = await st.client.get("/readyz")
                assert ready.status_code == 200 and ready.json()["jetstream"] == "ok", ready.text
                healed = [await save(-3.0 - i) for i in range(2)]
                for job_id in healed:  # they retry with storage_full ...
                    await until(lambda j=job_id: retried_for_full(j), 30)
                filler.unlink()  # ... and complete once an operator made room
                assert not await wait_terminal(events, healed, timeout=60)

                # Full again, past the last delivery: the jobs fail with storage_full.
                fill_volume(filler)
                doomed = [await save(-9.0 - i) for i in range(2)]
                assert not await wait_terminal(events, doomed, timeout=60)
                assert await upload() == 507
                filler.unlink()

                # Room again: accepted at once.
                for _ in range(2):
                    assert await upload() == 202
                unfinished = await wait_terminal(events, accepted, timeout=60)
            finally:
                workers.stop_all()
            history = by_job(await read_stream(js))
            server_errors = sum(n for s, n in statuses.items() if s >= 500 and s != 507)
            counts = audit(accepted, history, server_errors=server_errors)
            staging = [p for p in volume.rglob("*") if "#" in p.name]
            storage = open_storage(settings.storage)
            outputs_of_failed = [k for j in doomed for k in await storage.list(f"prepared/{j}")]
            retried = {
                j: sum(
                    1
                    for s in history[j]
                    if isinstance(s.event, JobRetrying) and s.event.error.code == "storage_full"
                )
                for j in healed + doomed
            }
            print(
                "\n"
                + counts.line(
                    "disk-full-storage",
                    refused_507=statuses[507],
                    refused_codes=dict(refused),
                    retried_storage_full=sum(retried.values()),
                    partial_files=len(staging) + len(outputs_of_failed),
                    readyz_when_full=200,
                    accepted_after_space_returned=2,
                )
            )
            assert not unfinished, workers.logs()
            counts.assert_clean()
            assert counts.codes == {"storage_full": 2}, counts
            assert counts.completed == len(accepted) - 2
            assert refused == {"storage_full": statuses[507]} and statuses[507] == 4
            assert staging == [] and outputs_of_failed == []
            assert all(n == MAX_DELIVER - 1 for j, n in retried.items() if j in doomed), retried
            for job_id in healed:
                view = (await st.client.get(f"/api/audio/jobs/{job_id}")).json()
                path = volume / "storage" / view["result"]["preparedKey"]
                assert abs(measure_duration_s(path) - 1.0) < 0.01
            assert not list((volume / "storage").glob("uploads/**/*.wav"))  # all moved


def _objects(volume: Path) -> set[str]:
    """Every file on the media volume but the filler (staging files included)."""
    return {
        os.path.relpath(p, volume)
        for p in volume.rglob("*")
        if p.is_file() and p.name != "filler.bin"
    }
