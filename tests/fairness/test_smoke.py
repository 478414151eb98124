from __future__ import annotations

from pathlib import Path

from nats.aio.client import Client

from audioprep.shared.settings import Settings
from tests.conftest import running_stack
from tests.fairness.conftest import A, caught_up, event_store, fair_settings, provisioned, upload
from tests.jobs_helpers import wait_for_job
from tests.media import write_tone


async def test_smoke(base_settings: Settings, nc: Client, media_dir: Path) -> None:
    settings = await provisioned(nc, fair_settings(base_settings))
    wav = write_tone(media_dir / "t.wav", seconds=1.0)
    async with running_stack(settings, nc) as stack:
        await caught_up(nc, settings)
        job = await upload(stack, wav, A)
        view = await wait_for_job(stack.client, job, headers=A)
        assert view["status"] == "completed", view
        hist = await event_store(stack).history(job)
        print([type(h.event).__name__ for h in hist])
        print(hist[-1].event)
        resp = await stack.client.get("/api/usage", headers=A)
        print(resp.status_code, resp.text)
