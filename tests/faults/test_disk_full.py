"""Full JetStream store: the store dir of a dedicated nats-server on a 24 MB tmpfs, its file
store bounded to the volume minus an 8 MB floor. Filled (by a filler stream) while POSTs
arrive: the API answers 503 with a stable code (never 500), /readyz says not ready, nothing
acknowledged is lost; space freed, it accepts again by itself (no restart)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from audioprep.domain.events import JobRequested
from audioprep.shared.names import Names
from audioprep.shared.nats_server import NatsServer
from tests.conftest import running_stack
from tests.faults.harness import by_job, connected, fault_settings, read_stream
from tests.media import write_tone

NAMES = Names()  # the default prefix: what `audioprep up` uses

pytestmark = pytest.mark.slow

TMPFS_MB = 24
FLOOR_MB = 8


@contextlib.contextmanager
def tmpfs(path: Path, size_mb: int) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip(f"SKIPPED LOUDLY: mounting a {size_mb} MB tmpfs needs root")
    path.mkdir(parents=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)], check=True
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


async def test_full_event_store_refuses_cleanly_and_heals(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "js", TMPFS_MB) as store:
        server = NatsServer(
            store / "nats", log_file=tmp_path / "nats.log", store_floor=FLOOR_MB * 1024 * 1024
        ).start()
        try:
            settings = fault_settings(server.url, tmp_path / "data")  # media storage elsewhere
            tone = write_tone(tmp_path / "t.wav", seconds=0.1).read_bytes()
            async with connected(settings) as nc, running_stack(settings, nc, workers=0) as st:
                js = nc.jetstream()
                await js.add_stream(name="FILLER", subjects=["filler.>"])
                statuses: dict[int, int] = {}
                codes: dict[str, int] = {}
                accepted: list[str] = []

                async def post() -> int:
                    resp = await st.client.post(
                        "/api/audio/ingest", files={"file": ("t.wav", tone, "audio/wav")}
                    )
                    statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
                    if resp.status_code == 202:
                        accepted.append(resp.json()["jobId"])
                    else:
                        body = resp.json()
                        codes[body["code"]] = codes.get(body["code"], 0) + 1
                        assert resp.status_code in (503, 507), resp.text
                        assert "retry-after" in resp.headers
                    return resp.status_code

                assert (await st.client.get("/readyz")).status_code == 200
                # Fill the store while POSTs arrive, until the server refuses writes.
                full = False
                filled = 0
                while not full:
                    try:
                        await js.publish("filler.x", b"x" * 200_000, timeout=2)
                        filled += 1
                    except Exception:
                        full = True
                    await post()
                refused_before = statuses.get(503, 0) + statuses.get(507, 0)
                for _ in range(5):
                    assert await post() in (503, 507)
                ready = await st.client.get("/readyz")
                assert ready.status_code == 503, ready.text
                assert ready.json()["jetstream"].startswith("error: cannot store"), ready.text
                # Free space (what an operator does: see docs/reliability.md): no restart.
                await js.delete_stream("FILLER")
                ready = await st.client.get("/readyz")
                assert ready.status_code == 200, ready.text
                for _ in range(5):
                    assert await post() == 202
                # Nothing acknowledged was lost; the stream was not reset.
                events = by_job(await read_stream(js))
                lost = [
                    j
                    for j in accepted
                    if not any(isinstance(e.event, JobRequested) for e in events.get(j, []))
                ]
                info = await js.stream_info(NAMES.stream)
                assert info.state.first_seq == 1
                assert lost == []
                assert 500 not in statuses
                print(
                    f"\n[disk-full-jetstream] accepted={len(accepted)} "
                    f"refused={sum(v for k, v in statuses.items() if k != 202)} codes={codes} "
                    f"refused_while_filling={refused_before} filler_msgs={filled} lost=0 "
                    f"server_errors=0 readyz_when_full=503 healed_without_restart=1"
                )
        finally:
            server.stop()
