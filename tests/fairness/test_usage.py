"""Usage metering: each finished job's events carry what it used; the per-tenant, per-day
projection (GET /api/usage, `audioprep usage`) sums exactly those figures; an admin key sees
every tenant; the processing quota refuses once it is used up; metrics count per tenant."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from prometheus_client import REGISTRY

from audioprep.domain.events import JobCompleted, JobRequested, JobRetrying, JobUsage
from audioprep.shared.nats_server import REPO_ROOT
from audioprep.shared.settings import Settings
from audioprep.shared.tenant_limits import TenantLimits
from tests.conftest import running_stack
from tests.fairness.conftest import (
    ADMIN,
    HEADERS,
    call,
    caught_up,
    event_store,
    fair_settings,
    post_upload,
    provisioned,
    upload,
    wait_until,
)
from tests.jobs_helpers import wait_for_job
from tests.media import write_tone

FIELDS = ("processing_ms", "input_audio_ms", "output_audio_ms", "bytes_stored")


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_usage_sums_the_jobs_own_figures(
    base_settings: Settings, nc: Client, media_dir: Path
) -> None:
    settings = await provisioned(
        nc,
        fair_settings(base_settings, tenants={"tb": TenantLimits(max_processing_s_per_day=0.001)}),
    )
    short = write_tone(media_dir / "short.wav", seconds=1.0)
    longer = write_tone(media_dir / "longer.wav", seconds=2.5, channels=1)
    before = metric("audioprep_tenant_processing_seconds_total", tenant="ta")
    async with running_stack(settings, nc) as stack:
        await caught_up(nc, settings)
        jobs = {"ta": [await upload(stack, short, HEADERS["ta"])], "tb": []}
        jobs["tb"].append(await upload(stack, longer, HEADERS["tb"]))
        views = [
            await wait_for_job(stack.client, j, headers=HEADERS[t]) for t in jobs for j in jobs[t]
        ]
        assert all(v["status"] == "completed" for v in views), views
        save = await call(
            stack,
            "POST",
            "/api/audio/edit/save",
            json={
                "sourceKey": views[0]["result"]["sourceKey"],
                "format": "wav",
                "recipe": {"trim": {"startMs": 200}},
            },
            headers=HEADERS["ta"],
        )
        assert save.status_code == 202, save.text
        jobs["ta"].append(save.json()["jobId"])
        done = await wait_for_job(stack.client, jobs["ta"][-1], headers=HEADERS["ta"])
        assert done["status"] == "completed", done

        # what the jobs' own events say
        expected: dict[str, Counter[str]] = {}
        store = event_store(stack)
        for tenant, ids in jobs.items():
            sums: Counter[str] = Counter()
            for job_id in ids:
                for stored in await store.history(job_id):
                    event = stored.event
                    if isinstance(event, JobRequested):
                        sums["requested"] += 1
                        sums["upload_bytes"] += event.upload_bytes or 0
                    if isinstance(event, JobCompleted):
                        sums["completed"] += 1
                    used = getattr(event, "usage", None)
                    if isinstance(used, JobUsage) and isinstance(event, JobCompleted | JobRetrying):
                        for field in FIELDS:
                            sums[field] += getattr(used, field)
            expected[tenant] = sums
        ta = expected["ta"]
        assert ta["processing_ms"] > 0 and ta["output_audio_ms"] == 800
        assert ta["input_audio_ms"] == 1000 + 1000  # the ingest read 1 s, the save its source
        assert ta["upload_bytes"] == short.stat().st_size
        assert ta["bytes_stored"] > short.stat().st_size  # source, peaks, the saved wav

        def row_of(answer: dict[str, Any], tenant: str) -> dict[str, Any]:
            return next(r for r in answer["totals"] if r["tenant"] == tenant)

        async def projected() -> bool:
            answer = (await call(stack, "GET", "/api/usage", headers=HEADERS["ta"])).json()
            rows = [r for r in answer["totals"] if r["tenant"] == "ta"]
            return bool(rows) and rows[0]["completed"] == 2

        await wait_until(projected, 10, "the usage projection to count ta's jobs")
        today = datetime.now(UTC).date().isoformat()
        mine = (
            await call(stack, "GET", f"/api/usage?from={today}&to={today}", headers=HEADERS["ta"])
        ).json()
        assert mine["tenant"] == "ta" and {r["tenant"] for r in mine["days"]} == {"ta"}
        row = row_of(mine, "ta")
        assert row["requested"] == ta["requested"] == 2
        assert row["processingSeconds"] == ta["processing_ms"] / 1000
        assert row["inputAudioSeconds"] == ta["input_audio_ms"] / 1000
        assert row["outputAudioSeconds"] == ta["output_audio_ms"] / 1000
        assert row["bytesStored"] == ta["bytes_stored"]
        assert row["uploadBytes"] == ta["upload_bytes"]

        # an admin key sees every tenant; another tenant's key may not ask for ta
        everyone = (await call(stack, "GET", "/api/usage", headers=ADMIN)).json()
        assert everyone["tenant"] is None
        assert {"ta", "tb"} <= {r["tenant"] for r in everyone["totals"]}
        assert row_of(everyone, "tb")["bytesStored"] == expected["tb"]["bytes_stored"]
        refused = await call(stack, "GET", "/api/usage?tenant=ta", headers=HEADERS["tb"])
        assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
        bad = await call(stack, "GET", "/api/usage?from=2026-13-45", headers=HEADERS["tb"])
        assert bad.status_code == 400 and bad.json()["code"] == "invalid_date"
        shape = await call(stack, "GET", "/api/usage?from=yesterday", headers=HEADERS["tb"])
        assert shape.status_code == 422 and shape.json()["code"] == "validation_error"

        # tb's processing quota (1 ms a day) is used up by its one ingest
        over = await post_upload(stack, longer, HEADERS["tb"])
        assert over.status_code == 429 and over.json()["code"] == "quota_exceeded", over.text
        assert over.json()["quota"] == "processing_s_per_day"
        assert int(over.headers["retry-after"]) >= 1

        # the same figures from the CLI, and per-tenant metrics in this (worker) process
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIOPREP_")}
        env.update(
            AUDIOPREP_NATS_URL=settings.nats_url,
            AUDIOPREP_NAME_PREFIX=settings.names.prefix,
            PYTHONPATH=str(REPO_ROOT),
        )
        proc = await asyncio.create_subprocess_exec(  # not subprocess.run: this loop must
            sys.executable,  # keep running, the dispatcher answering --queues lives here
            "-m",
            "audioprep.services.cli.main",
            "usage",
            "--json",
            "--queues",
            env=env,
            stdout=asyncio.subprocess.PIPE,
        )
        stdout, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
        assert proc.returncode == 0
        doc = json.loads(stdout)
        cli_ta = next(r for r in doc["totals"] if r["tenant"] == "ta")
        assert cli_ta["processingMs"] == ta["processing_ms"]
        assert cli_ta["bytesStored"] == ta["bytes_stored"]
        assert doc["dispatch"]["mode"] == "fair"
        spent = metric("audioprep_tenant_processing_seconds_total", tenant="ta") - before
        assert abs(spent - ta["processing_ms"] / 1000) < 0.01
