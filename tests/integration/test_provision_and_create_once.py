"""Against a real nats-server: provisioning is idempotent, a job can be requested once."""

from __future__ import annotations

import pytest
from nats.aio.client import Client

from audioprep.domain.events import JobRequested, JobStarted
from audioprep.shared.event_store import EventStore, JobAlreadyExists
from audioprep.shared.ids import new_job_id
from audioprep.shared.names import Names
from audioprep.shared.provision import provision
from audioprep.shared.settings import Settings

NAMES = Names()  # the default prefix: what `audioprep up` uses


async def test_provisioning_twice_is_a_no_op(nc: Client, base_settings: Settings) -> None:
    js = nc.jetstream()
    before = await js.stream_info(NAMES.stream)
    await provision(js, base_settings)
    await provision(js, base_settings)
    after = await js.stream_info(NAMES.stream)
    assert after.config.subjects == ["jobs.>"]
    assert after.config.deny_delete and after.config.deny_purge
    assert after.config.allow_direct
    assert after.state.messages >= before.state.messages
    info = await js.consumer_info(NAMES.stream, "workers-save")
    assert info.config.filter_subject == "jobs.save.*.requested"
    assert info.config.max_deliver == base_settings.max_deliver


async def test_duplicate_job_requested_is_rejected(nc: Client) -> None:
    store = EventStore(nc, nc.jetstream(), NAMES)
    job_id = new_job_id()
    first = JobRequested(job_id=job_id, kind="ingest", source="url", url="https://a.test/x")
    seq = await store.request_job(first)
    # The same id again, even for another kind, can't create a second job.
    again = JobRequested(job_id=job_id, kind="save", source_key="k", format="wav")
    with pytest.raises(JobAlreadyExists):
        await store.request_job(again)
    history = await store.history(job_id)
    # A session worker may already be working on it; what matters is one request only.
    requests = [e for e in history if isinstance(e.event, JobRequested)]
    assert [e.seq for e in requests] == [seq]
    assert requests[0].event == first


async def test_history_and_last_event(nc: Client) -> None:
    store = EventStore(nc, nc.jetstream(), NAMES)
    job_id = new_job_id()
    await store.request_job(JobRequested(job_id=job_id, kind="ingest", source="upload"))
    await store.append(JobStarted(job_id=job_id, kind="ingest", attempt=1))
    await store.append(JobStarted(job_id=job_id, kind="ingest", attempt=1))  # deduplicated
    history = await store.history(job_id)
    names = [type(e.event).__name__ for e in history]
    assert names[:2] == ["JobRequested", "JobStarted"]
    assert names.count("JobStarted") == 1  # the second append was deduplicated
    last = await store.last_event(job_id)
    assert last is not None and last.seq >= history[1].seq
