"""Issue 20 scenario 9: the wall clock of the API and worker processes jumps (+2 h, then -2 h,
as an NTP step does) while jobs are in flight, retrying with backoff, held near their
ack_wait deadline, and dying on every delivery (a poison job).

The processes run under libfaketime (LD_PRELOAD): their CLOCK_REALTIME follows an offset the
test writes to a file, read again on every call (FAKETIME_NO_CACHE); CLOCK_MONOTONIC is left
alone (FAKETIME_DONT_FAKE_MONOTONIC), as a real step leaves it. nats-server runs on the real
clock: ack_wait, nak delays, max_deliver and the KV lease TTL are its timers. What must hold:
nothing dead-letters early, backoff waits what it said, every job ends exactly once, and a
download link issued before a step behaves as docs/reliability.md ("Clock jumps") says.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from audioprep.domain.events import (
    Event,
    JobFailed,
    JobProgressed,
    JobRequested,
    JobRetrying,
    JobStarted,
    decode_event,
    is_terminal,
)
from audioprep.domain.kinds import KINDS
from audioprep.services.worker.dead_letters import server_timestamp
from audioprep.shared import direct_get, keys
from audioprep.shared.event_store import EventStore
from audioprep.shared.ids import new_job_id
from audioprep.shared.names import Names, worker_consumer
from audioprep.shared.storage import open_storage
from tests.faults.harness import (
    ApiProcess,
    Workers,
    audit,
    by_job,
    connected,
    fault_settings,
    flaky_http,
    private_server,
    read_stream,
    wait_terminal,
)
from tests.media import measure_duration_s, write_noise, write_tone

NAMES = Names()  # the default prefix: what `audioprep up` uses

pytestmark = pytest.mark.slow

ACK_WAIT_S = 2.0
MAX_DELIVER = 3
STEP_S = 2 * 3600  # +2 h, then back to -2 h (a 4 h step backwards)
FLAKY_FAILURES = MAX_DELIVER - 1  # the URL ingest completes on its last delivery
UPLOADS_PER_PHASE = 2

# Debian's libfaketime; the MT build because the services run threads (to_thread, obstore).
_LIB_GLOBS = (
    "/usr/lib/*/faketime/libfaketimeMT.so.1",
    "/usr/lib/faketime/libfaketimeMT.so.1",
    "/usr/local/lib/faketime/libfaketimeMT.so.1",
)


def faketime_library() -> str | None:
    for pattern in _LIB_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


class FakeClock:
    """The realtime clock of every process started through `prefix`: an offset in seconds,
    in a file libfaketime reads on every clock call. Monotonic time is not touched."""

    def __init__(self, path: Path, library: str) -> None:
        self.path = path
        self.offset_s = 0
        self.prefix = [
            "env",
            f"LD_PRELOAD={library}",
            f"FAKETIME_TIMESTAMP_FILE={path}",
            "FAKETIME_NO_CACHE=1",
            "FAKETIME_DONT_FAKE_MONOTONIC=1",
            # Its default on glibc >= 2.30 shifts timed waits on monotonic condition variables
            # by the offset (pthread_cond_timedwait): the GIL's among them, so threads stopped
            # handing the GIL over in time (0.2-0.3 s event-loop lags, missed heartbeats).
            "FAKETIME_FORCE_MONOTONIC_FIX=0",
        ]
        self.step_to(0)

    @staticmethod
    def shared_files() -> set[Path]:
        """libfaketime's per-process shared memory and semaphore (/dev/shm, named by pid)."""
        shm = Path("/dev/shm")
        return {*shm.glob("faketime_shm_*"), *shm.glob("sem.faketime_sem_*")}

    @staticmethod
    def remove_stale(files: set[Path]) -> None:
        """Remove those of processes that are gone: a SIGKILLed process can't clean up."""
        for path in files:
            pid = path.name.rsplit("_", 1)[-1]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                path.unlink(missing_ok=True)

    def step_to(self, offset_s: int) -> None:
        """Set the offset at once (written aside and renamed: a reader never sees half)."""
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(f"{offset_s:+d}\n")
        os.replace(tmp, self.path)
        self.offset_s = offset_s


_PROBE = (
    "import sys, time\nfor _ in sys.stdin:\n    print(time.time(), time.monotonic(), flush=True)\n"
)


class Probe:
    """A Python process under the same faked clock: what time.time/time.monotonic say."""

    def __init__(self, clock: FakeClock) -> None:
        self.proc = subprocess.Popen(
            [*clock.prefix, sys.executable, "-c", _PROBE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def read(self) -> tuple[float, float, float, float]:
        """(its wall, its monotonic, our wall, our monotonic) at about the same moment."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        wall, mono = (float(x) for x in self.proc.stdout.readline().split())
        return wall, mono, time.time(), time.monotonic()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        self.proc.wait(timeout=5)


@dataclass
class Seen:
    """One job event as it arrived here: our monotonic and wall clock, and the event."""

    mono: float
    wall: float
    event: Event


async def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def _hours(seconds: float) -> str:
    return f"{round(seconds / 3600):+d}h"


def group_members(pgid: int) -> list[int]:
    """The processes of a worker's process group but the worker itself: its forkserver and
    the media child it runs (and multiprocessing's resource tracker)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            pid = int(stat.parent.name)
            if int(fields[2]) == pgid and pid != pgid:
                found.append(pid)
    return found


async def wait_no_pull_requests(js: JetStreamContext, timeout: float = 10.0) -> None:
    """Until no worker consumer has a pull request waiting (they expire after 2 s)."""
    deadline = time.monotonic() + timeout
    while True:
        infos = [await js.consumer_info(NAMES.stream, worker_consumer(k)) for k in KINDS]
        if all(not info.num_waiting for info in infos):
            return
        assert time.monotonic() < deadline, "pull requests still waiting"
        await asyncio.sleep(0.1)


def signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


async def test_clock_jumps_dead_letter_nothing_early(tmp_path: Path) -> None:
    library = faketime_library()
    if library is None:
        pytest.skip("SKIPPED LOUDLY: libfaketime not installed (make system-deps: faketime)")
    clock = FakeClock(tmp_path / "faketime.rc", library)
    shared_before = clock.shared_files()
    with private_server(tmp_path / "nats") as server:  # the real clock
        # one job per worker: a worker killed for the poison job holds nothing else
        settings = fault_settings(
            server.url,
            tmp_path / "data",
            ack_wait_s=ACK_WAIT_S,
            max_deliver=MAX_DELIVER,
            worker_concurrency=1,
        )
        async with connected(settings) as nc:
            js = nc.jetstream()
            events = EventStore(nc, js, NAMES)
            storage = open_storage(settings.storage)
            media = tmp_path / "media"
            media.mkdir()
            tone = write_tone(media / "tone.wav", seconds=1.0, freq=440.0)
            seen: list[Seen] = []

            async def on_event(msg: Msg) -> None:
                seen.append(Seen(time.monotonic(), time.time(), decode_event(msg.data)))

            await nc.subscribe(NAMES.stream_subjects, cb=on_event)

            def of(job_id: str, kind: type[Event]) -> list[Seen]:
                return [s for s in seen if s.event.job_id == job_id and isinstance(s.event, kind)]

            def ended(job_id: str) -> bool:
                return any(is_terminal(s.event) for s in seen if s.event.job_id == job_id)

            async def source(name: str, path: Path) -> str:
                key = keys.source_key("default", new_job_id(), name)
                await storage.put_file(key, path)
                return key

            # Straight to the stream: the slow render (frozen mid-way across both steps, held
            # by its worker's heartbeats), the render whose link is checked, the poison job.
            slow = JobRequested(
                job_id=new_job_id(),
                kind="save",
                source_key=await source("long.wav", write_tone(media / "long.wav", seconds=30)),
                recipe={"normalize": {"preset": "spotify"}, "fadeOutMs": 500},
                format="mp3",
                filename="slow",
            )
            linked = JobRequested(
                job_id=new_job_id(),
                kind="save",
                source_key=await source("tone.wav", tone),
                recipe={"gainDb": -3.0},
                format="wav",
                filename="linked",
            )
            poison_id = new_job_id()
            poison_upload = keys.upload_key("default", poison_id, "poison.wav")
            await storage.put_file(poison_upload, write_noise(media / "poison.wav", seconds=60))
            poison = JobRequested(
                job_id=poison_id,
                kind="ingest",
                source="upload",
                upload_key=poison_upload,
                filename="poison.wav",
            )

            probe = Probe(clock)
            api = ApiProcess(settings, tmp_path, prefix=clock.prefix).start()
            workers = Workers(settings, tmp_path)
            poison_starts: asyncio.Queue[int] = asyncio.Queue()

            async def on_poison_started(msg: Msg) -> None:
                event = decode_event(msg.data)
                assert isinstance(event, JobStarted)
                await poison_starts.put(int(event.worker.rsplit(":", 1)[1]))

            async def killer() -> None:  # whichever worker starts the poison job dies
                while True:
                    victim = workers.by_pid(await poison_starts.get())
                    if victim is not None and victim.poll() is None:
                        await asyncio.to_thread(workers.kill, victim)
                        workers.start(clock.prefix)  # under the clock as it is now

            await nc.subscribe(
                NAMES.event_subject("ingest", poison.job_id, "started"), cb=on_poison_started
            )
            kill_task = asyncio.create_task(killer())
            accepted: list[str] = []
            statuses: dict[int, int] = {}
            links: dict[str, int] = {}  # what the link answered, when
            probe_readings: list[str] = []
            frozen: list[int] = []
            started_at = time.monotonic()

            async def post(http: httpx.AsyncClient, path: str, **kw: object) -> str:
                resp = await http.post(path, **kw)  # type: ignore[arg-type]
                statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
                assert resp.status_code == 202, resp.text
                job_id: str = resp.json()["jobId"]
                accepted.append(job_id)
                return job_id

            async def uploads(http: httpx.AsyncClient) -> None:
                for _ in range(UPLOADS_PER_PHASE):
                    files = {"file": ("tone.wav", tone.read_bytes(), "audio/wav")}
                    await post(http, "/api/audio/ingest", files=files)

            async def link_of(http: httpx.AsyncClient, job_id: str) -> str:
                resp = await http.get(f"/api/audio/jobs/{job_id}")
                assert resp.status_code == 200, resp.text
                url: str = resp.json()["downloadUrl"]
                return url

            async def download(http: httpx.AsyncClient, url: str, when: str) -> httpx.Response:
                parts = urlsplit(url)
                resp = await http.get(f"{parts.path}?{parts.query}")
                links[when] = resp.status_code
                return resp

            def step_to(offset_s: int) -> None:
                clock.step_to(offset_s)
                wall, mono, our_wall, our_mono = probe.read()
                assert abs(wall - our_wall - offset_s) < 5, (wall - our_wall, offset_s)
                assert abs(mono - our_mono) < 1  # CLOCK_MONOTONIC did not move
                probe_readings.append(f"{_hours(wall - our_wall)}:{mono - our_mono:+.2f}s")

            try:
                step_to(0)
                # The first worker alone takes the slow render, so it leads dispatch all along
                # (never killed: a killed leader's lease would stall releases for its TTL).
                leader = workers.start(clock.prefix)
                await events.request_job(slow)
                await _wait_for(lambda: bool(of(slow.job_id, JobStarted)), 60, "slow start")
                # Its other fetch loops' pull requests (made while its slot was free) must
                # expire first, or one of them takes the next job and holds it while the
                # render is frozen (a busy worker holds what it fetched until a slot frees).
                await wait_no_pull_requests(js)
                workers.start(clock.prefix)
                workers.start(clock.prefix)
                await events.request_job(linked)
                await events.request_job(poison)
                await api.ready()
                async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:
                    with flaky_http(tone.read_bytes(), FLAKY_FAILURES) as (web, hits):
                        flaky = await post(
                            http,
                            "/api/audio/ingest",
                            json={"source": "url", "url": f"{web}/flaky.wav"},
                        )
                        await uploads(http)
                        await _wait_for(
                            lambda: any(
                                isinstance(s.event, JobProgressed) and s.event.progress > 1
                                for s in of(slow.job_id, JobProgressed)
                            ),
                            60,
                            "the slow render under way",
                        )
                        frozen = group_members(leader.pid)  # its media child stops rendering
                        signal_all(frozen, signal.SIGSTOP)
                        frozen_at = time.monotonic()
                        await _wait_for(
                            lambda: (
                                ended(linked.job_id)
                                and bool(of(flaky, JobRetrying))
                                and bool(of(poison.job_id, JobStarted))
                            ),
                            60,
                            "the linked render, a retry waiting, the poison job's first death",
                        )
                        link_before = await link_of(http, linked.job_id)
                        first = await download(http, link_before, "before")
                        assert first.status_code == 200, first.text

                        # +2 h: jobs in flight, a retry in its backoff, a render frozen
                        step_to(+STEP_S)
                        await uploads(http)
                        expired = await download(http, link_before, "old_after_+2h")
                        assert expired.status_code == 403, expired.text
                        assert expired.json()["code"] == "link_expired", expired.text
                        link_after = await link_of(http, linked.job_id)  # poll for a new one
                        assert link_after != link_before
                        fresh = await download(http, link_after, "new_after_+2h")
                        assert fresh.status_code == 200 and fresh.content == first.content
                        await _wait_for(
                            lambda: (
                                len(of(poison.job_id, JobStarted)) >= 2
                                and all(of(j, JobStarted) for j in accepted)
                            ),
                            30,
                            "the poison job's second delivery, the uploads started",
                        )

                        # -2 h: four hours back
                        step_to(-STEP_S)
                        await uploads(http)
                        again = await download(http, link_before, "old_after_-2h")
                        assert again.status_code == 200 and again.content == first.content
                        later = await download(http, link_after, "new_after_-2h")
                        assert later.status_code == 200
                        slow_running_at_steps = not ended(slow.job_id)
                        # Frozen past two ack_waits whatever the steps took (they take ~2 s
                        # since workers no longer hold fetched jobs): only heartbeats keep
                        # the render from being redelivered.
                        held = 2 * ACK_WAIT_S + 1.0 - (time.monotonic() - frozen_at)
                        await asyncio.sleep(max(0.0, held))
                        frozen_s = time.monotonic() - frozen_at
                        signal_all(frozen, signal.SIGCONT)

                        job_ids = [*accepted, slow.job_id, linked.job_id, poison.job_id]
                        unfinished = await wait_terminal(events, job_ids, timeout=60)
                        flaky_hits = hits.get("/flaky.wav", 0)
                last = workers.alive()  # SIGTERMed at -2 h: they drain and exit 0
            finally:
                signal_all(frozen, signal.SIGCONT)
                kill_task.cancel()
                probe.close()
                api.stop()
                workers.stop_all()
                clock.remove_stale(clock.shared_files() - shared_before)
            drained = [p.returncode for p in last]
            elapsed = time.monotonic() - started_at

            history = by_job(await read_stream(js))
            result = audit(
                job_ids,
                history,
                server_errors=sum(n for code, n in statuses.items() if code >= 500),
            )
            # the clocks the services really used: the `at` of their events against ours
            api_clock = {
                _hours(s.event.at.timestamp() - s.wall)
                for s in seen
                if isinstance(s.event, JobRequested) and s.event.job_id in accepted
            }
            worker_clock = {  # JobReleased (the dispatcher) and what workers record
                _hours(s.event.at.timestamp() - s.wall)
                for s in seen
                if not isinstance(s.event, JobRequested)
            }
            # backoff: each JobRetrying's delay against when the next delivery's JobStarted
            # was stored, both times from nats-server's (real) clock. The nak follows the
            # JobRetrying, so the gap can't be shorter than the delay.
            gaps: list[tuple[float, float]] = []
            stored = await direct_get.next_by_subject(
                nc, NAMES.stream, NAMES.job_subjects(flaky), 1, 100, 5.0
            )
            timeline = [(server_timestamp(m), decode_event(m.data)) for m in stored]
            for i, (at, event) in enumerate(timeline):
                if isinstance(event, JobRetrying) and at is not None:
                    nxt = next((t for t, e in timeline[i + 1 :] if isinstance(e, JobStarted)), None)
                    if nxt is not None:
                        gaps.append((event.delay_ms / 1000, (nxt - at).total_seconds()))

            def deliveries(job_id: str) -> int:
                return sum(isinstance(s.event, JobStarted) for s in history.get(job_id, []))

            failed = {
                j: deliveries(j)
                for j in job_ids
                if any(isinstance(s.event, JobFailed) for s in history.get(j, []))
            }
            early = [j for j, n in failed.items() if n < MAX_DELIVER]
            dead = [s.event for s in history[poison.job_id] if isinstance(s.event, JobFailed)]
            # the poison job's events in stream order: its max_deliveries after its last start
            poison_order = [type(s.event).__name__ for s in history[poison.job_id]]
            dlq = await js.stream_info(settings.names.dlq_stream)
            print(
                result.line(
                    "clock-jump",
                    steps=f"{_hours(STEP_S)},{_hours(-STEP_S)}",
                    clock_api="/".join(sorted(api_clock)),
                    clock_workers="/".join(sorted(worker_clock)),
                    monotonic_moved=";".join(probe_readings),
                    dead_lettered_early=len(early),
                    poison_deliveries=deliveries(poison.job_id),
                    dlq_entries=dlq.state.messages,
                    backoff_said_vs_took_s=",".join(f"{d:.1f}/{g:.1f}" for d, g in gaps),
                    frozen_render_deliveries=deliveries(slow.job_id),
                    frozen_s=round(frozen_s, 1),
                    links=",".join(f"{k}:{v}" for k, v in links.items()),
                    drained_exit_codes=",".join(str(c) for c in drained),
                    kills=workers.killed,
                    seconds=round(elapsed, 1),
                )
            )
            assert not unfinished, f"stuck: {sorted(unfinished)}\n{workers.logs()}"
            result.assert_clean()
            # the services really ran on the stepped clock
            assert api_clock == {"+0h", _hours(STEP_S), _hours(-STEP_S)}, api_clock
            assert {_hours(STEP_S), _hours(-STEP_S)} <= worker_clock, worker_clock
            # nothing dead-lettered early: only the poison job failed, after max_deliver tries
            assert early == [] and list(failed) == [poison.job_id], failed
            assert result.codes == {"max_deliveries": 1}, result.codes
            assert len(dead) == 1 and dead[0].attempt == MAX_DELIVER, dead
            assert deliveries(poison.job_id) == MAX_DELIVER
            assert dlq.state.messages == 1
            assert poison_order[-1] == "JobFailed", poison_order
            assert poison_order.count("JobStarted") == MAX_DELIVER, poison_order
            # the frozen render was held by heartbeats across both steps: one delivery
            assert slow_running_at_steps and deliveries(slow.job_id) == 1
            assert frozen_s > 2 * ACK_WAIT_S
            outputs = await storage.list(f"prepared/{slow.job_id}/")
            assert len(outputs) == 1, outputs
            path = storage.local_path(outputs[0])
            assert path is not None and abs(measure_duration_s(path) - 30.0) < 0.1
            # the URL ingest waited the backoff it recorded (a wall-clock wait would be 0 s
            # or 2 h here) and completed on its last delivery: not dead-lettered
            flaky_events = [s.event for s in history[flaky]]
            assert sum(isinstance(e, JobRetrying) for e in flaky_events) == FLAKY_FAILURES
            assert type(flaky_events[-1]).__name__ == "JobCompleted", flaky_events[-1]
            assert flaky_hits > FLAKY_FAILURES  # its 503s, then the file
            assert len(gaps) == FLAKY_FAILURES
            for said, took in gaps:
                assert said - 0.05 <= took <= said + 10.0, gaps
            assert drained and all(code == 0 for code in drained), drained
            assert statuses == {202: len(accepted)}, statuses
