"""The dispatcher's nudge is the publish itself and can come before the server has stored the
event: a nudged read looks again until the event is there instead of going back to waiting
(which left such a request unreleased until the next event or the 250-ms wake-up)."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client

from audioprep.domain.events import JobRequested
from audioprep.services.worker.dispatch.dispatcher import Dispatcher, StreamReader
from audioprep.services.worker.dispatch.state import DispatchState
from audioprep.shared.event_store import EventStore
from audioprep.shared.ids import new_job_id
from audioprep.shared.settings import Settings
from tests.fairness.conftest import fair_settings, provisioned


async def test_a_nudged_read_waits_for_its_event_to_be_stored(
    nc: Client, base_settings: Settings
) -> None:
    settings = await provisioned(nc, fair_settings(base_settings))
    js = nc.jetstream()
    dispatcher = Dispatcher(nc=nc, js=js, settings=settings)
    dispatcher._reader = await StreamReader.open(
        nc, settings.names.stream, settings.names.stream_subjects
    )
    state = DispatchState(policies=settings.tenant_policies, window=2, fair=True)
    request = JobRequested(job_id=new_job_id(), kind="save", source_key="s/x.wav", format="wav")

    # the nudge came, the event is stored a moment later
    read = asyncio.create_task(dispatcher._read(state, 0.0, nudged=True))
    await asyncio.sleep(0.005)
    await EventStore(nc, js, settings.names).request_job(request)
    assert await read == 1
    assert request.job_id in state.jobs

    # not nudged (a periodic wake-up): one read, nothing new, no waiting for more
    assert await dispatcher._read(state, 0.0) == 0
    await dispatcher._reader.sub.unsubscribe()
