"""A late attempt — its worker was frozen or cut off past ack_wait, and another attempt ended
the job meanwhile — neither replaces nor deletes the winner's output, and records nothing.
JobRunner against the real nats-server and local storage; the handler plays both attempts:
the winner stores its file and ends the job, then the late attempt goes on."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from nats.aio.client import Client

from audioprep.domain.errors import RENDER_FAILED, Permanent
from audioprep.domain.events import JobCompleted, JobRequested, JobResult, is_terminal
from audioprep.services.worker.context import JobContext
from audioprep.services.worker.handlers.render import cleanup_render, planned_outputs
from audioprep.services.worker.job_runner import JobRunner
from audioprep.shared import names
from audioprep.shared.event_store import EventStore
from audioprep.shared.ids import new_job_id
from audioprep.shared.job_requests import render_request
from audioprep.shared.provision import provision
from audioprep.shared.settings import Settings
from audioprep.shared.storage import open_storage
from tests.services import suite_settings

WINNER = b"the winner's render"


async def _late_fails(ctx: JobContext) -> None:
    raise Permanent("the late attempt's render failed", code=RENDER_FAILED)


async def _late_stores(ctx: JobContext) -> None:
    await ctx.store_unless_ended()  # what run_render does before writing its outputs
    (output,) = planned_outputs(render_request(ctx.request))
    await ctx.storage.put_bytes(output.key, b"the late attempt's render")


@pytest.mark.parametrize("late", [_late_fails, _late_stores], ids=["fails", "stores"])
async def test_a_late_attempt_leaves_the_winners_output(
    nc: Client, base_settings: Settings, late: Callable[[JobContext], Awaitable[None]]
) -> None:
    settings = suite_settings(base_settings, f"late{new_job_id()[-6:].lower()}", dispatch="fifo")
    js = nc.jetstream()
    await provision(js, settings)
    storage = open_storage(settings.storage)
    events = EventStore(nc, js, settings.names)
    request = JobRequested(
        job_id=new_job_id(), kind="save", source_key="sources/x/in.wav", format="wav"
    )
    await events.request_job(request)
    (output,) = planned_outputs(render_request(request))

    async def handler(ctx: JobContext) -> JobResult:
        # the other attempt (the redelivery) finished first: its file, its JobCompleted
        await storage.put_bytes(output.key, WINNER)
        won = JobResult(prepared_key=output.key, size_bytes=len(WINNER), format="wav")
        await events.append_terminal(
            JobCompleted(job_id=request.job_id, kind="save", result=won, attempt=2)
        )
        await late(ctx)
        raise AssertionError("the late attempt must not get here")

    runner = JobRunner(
        nc=nc,
        js=js,
        settings=settings,
        storage=storage,
        handlers={"save": handler},
        cleanups={"save": cleanup_render},
        worker_name="late:1",
    )
    sub = await js.pull_subscribe_bind(
        durable=names.worker_consumer("save"), stream=settings.names.stream
    )
    (msg,) = await sub.fetch(1, timeout=5)
    await runner.handle(msg)

    assert await storage.read_bytes(output.key) == WINNER  # neither replaced nor deleted
    history = [s.event for s in await events.history(request.job_id)]
    assert [type(e).__name__ for e in history if is_terminal(e)] == ["JobCompleted"]
    assert [type(e).__name__ for e in history if type(e).__name__ == "JobRetrying"] == []
    info = await js.consumer_info(settings.names.stream, names.worker_consumer("save"))
    assert info.num_ack_pending == 0 and info.num_redelivered == 0  # settled, not handed back
