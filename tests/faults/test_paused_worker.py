"""Issue 20 scenario 1: a worker frozen (SIGSTOP) mid-render past ack_wait while another
takes its job over. Exactly one terminal event, one complete output; the late worker, woken
up, records nothing."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

import pytest
from nats.aio.msg import Msg

from audioprep.domain.events import (
    JobProgressed,
    JobRequested,
    JobStarted,
    decode_event,
    is_terminal,
)
from audioprep.shared import keys
from audioprep.shared.event_store import EventStore
from audioprep.shared.ids import new_job_id
from audioprep.shared.names import Names
from tests.faults.harness import (
    Workers,
    by_job,
    connected,
    fault_settings,
    private_server,
    read_stream,
    tally,
    wait_terminal,
)
from tests.media import measure_duration_s, write_tone

NAMES = Names()  # the default prefix: what `audioprep up` uses

pytestmark = pytest.mark.slow

ACK_WAIT_S = 2.0
SOURCE_S = 120.0


async def _wait_for(predicate: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)


async def test_a_paused_worker_past_ack_wait_ends_the_job_once(tmp_path: Path) -> None:
    with private_server(tmp_path / "nats") as server:
        settings = fault_settings(
            server.url, tmp_path / "data", ack_wait_s=ACK_WAIT_S, worker_concurrency=1
        )
        async with connected(settings) as nc:
            events = EventStore(nc, nc.jetstream(), NAMES)
            from audioprep.shared.storage import open_storage

            storage = open_storage(settings.storage)
            media = tmp_path / "media"
            media.mkdir()
            tone = write_tone(media / "long.wav", seconds=SOURCE_S, freq=440.0)
            source_key = keys.source_key("default", new_job_id(), "long.wav")
            await storage.put_file(source_key, tone)
            starts: list[tuple[int, int]] = []  # (attempt, worker pid)
            progressed: list[int] = []  # progress of the first attempt
            ended: list[str] = []

            async def on_event(msg: Msg) -> None:
                event = decode_event(msg.data)
                if isinstance(event, JobStarted):
                    starts.append((event.attempt, int(event.worker.rsplit(":", 1)[1])))
                elif isinstance(event, JobProgressed) and event.attempt == 1:
                    progressed.append(event.progress)
                elif is_terminal(event):
                    ended.append(type(event).__name__)

            await nc.subscribe("jobs.>", cb=on_event)
            workers = Workers(settings, tmp_path)
            first = workers.start()
            request = JobRequested(
                job_id=new_job_id(),
                kind="save",
                source_key=source_key,
                recipe={"normalize": {"preset": "spotify"}, "fadeOutMs": 500},
                format="mp3",
                filename="paused",
            )
            try:
                await events.request_job(request)
                await _wait_for(lambda: len(starts) >= 1, 30)
                assert starts[0][1] == first.pid
                second = workers.start()  # idle, ready to take the job over
                # freeze it mid-render: once its media child reports work done
                await _wait_for(lambda: any(p > 1 for p in progressed), 30)
                os.killpg(first.pid, signal.SIGSTOP)  # frozen: no heartbeats, no progress
                paused_at = time.monotonic()
                await _wait_for(lambda: bool(ended), 90)  # the second worker finished it
                frozen_s = time.monotonic() - paused_at
                os.killpg(first.pid, signal.SIGCONT)
                # the woken worker finishes its own media call and finds the job ended
                log = tmp_path / "worker-1.log"
                await _wait_for(lambda: "already" in log.read_text(errors="replace"), 90)
                unfinished = await wait_terminal(events, [request.job_id], timeout=30)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(first.pid, signal.SIGCONT)
                workers.stop_all()
            history = by_job(await read_stream(nc.jetstream()))
            counts = tally([request.job_id], history)
            terminals = [s for s in history[request.job_id] if is_terminal(s.event)]
            takers = {pid for _, pid in starts}
            print(
                counts.line(
                    "paused-worker",
                    frozen_s=round(frozen_s, 1),
                    ack_wait_s=ACK_WAIT_S,
                    workers_started_it=len(takers),
                    terminal_events=len(terminals),
                )
            )
            assert not unfinished
            assert second.pid in takers and first.pid in takers  # it really was taken over
            assert frozen_s >= 1.5 * ACK_WAIT_S * 0.9
            assert len(terminals) == 1 and counts.completed == 1
            assert counts.lost == counts.duplicates == 0
            outputs = await storage.list(f"prepared/{request.job_id}/")
            assert len(outputs) == 1, outputs
            path = storage.local_path(outputs[0])
            assert path is not None
            assert abs(measure_duration_s(path) - SOURCE_S) < 0.1
