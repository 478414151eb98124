"""A worker given a release that carries `attemptBase` appends JobStarted while it reads the
request (job_runner.py): the job runs with the request's fields and records its events once;
a cancel stored after the release stops it before the handler; a request that is gone ends
the job failed instead of leaving it running. JobRunner against the real nats-server, the
release written as the dispatcher writes it (expected last sequence = the request's)."""

from __future__ import annotations

from nats.aio.client import Client
from nats.js import JetStreamContext

from audioprep.domain.errors import INTERNAL_ERROR
from audioprep.domain.events import (
    JobCancelled,
    JobCancelRequested,
    JobCompleted,
    JobFailed,
    JobReleased,
    JobRequested,
    JobResult,
    JobStarted,
)
from audioprep.services.worker.context import JobContext
from audioprep.services.worker.job_runner import JobRunner
from audioprep.shared import names
from audioprep.shared.event_store import EventStore
from audioprep.shared.ids import new_job_id
from audioprep.shared.provision import provision
from audioprep.shared.settings import Settings
from audioprep.shared.storage import open_storage
from tests.services import suite_settings


async def _setup(nc: Client, base: Settings) -> tuple[Settings, JetStreamContext, EventStore]:
    settings = suite_settings(base, f"rel{new_job_id()[-6:].lower()}", dispatch="fair")
    js = nc.jetstream()
    await provision(js, settings)
    return settings, js, EventStore(nc, js, settings.names)


async def _release(
    events: EventStore, attempt_base: int = 0, *, points_at: int | None = None
) -> JobRequested:
    """A request and its release (pointing at the request, or at `points_at`)."""
    request = JobRequested(
        job_id=new_job_id(),
        kind="save",
        source_key="sources/x/in.wav",
        format="flac",
        attempt_base=attempt_base,
    )
    request_seq = await events.request_job(request)
    release = JobReleased(
        job_id=request.job_id,
        kind="save",
        request_seq=request_seq if points_at is None else points_at,
        attempt_base=attempt_base,
    )
    assert await events.append_expecting(release, request_seq) is not None
    return request


async def _deliver(
    nc: Client, js: JetStreamContext, settings: Settings, ran: list[JobContext]
) -> None:
    async def handler(ctx: JobContext) -> JobResult:
        ran.append(ctx)
        return JobResult(prepared_key="prepared/x/out.flac", size_bytes=1, format="flac")

    runner = JobRunner(
        nc=nc,
        js=js,
        settings=settings,
        storage=open_storage(settings.storage),
        handlers={"save": handler},
        worker_name="early:1",
    )
    sub = await js.pull_subscribe_bind(
        durable=names.worker_consumer("save"), stream=settings.names.stream
    )
    (msg,) = await sub.fetch(1, timeout=5)
    await runner.handle(msg)


async def test_a_release_with_its_attempt_base_starts_and_completes_once(
    nc: Client, base_settings: Settings
) -> None:
    settings, js, events = await _setup(nc, base_settings)
    request = await _release(events, attempt_base=2)  # a `dlq retry`: attempts go on
    ran: list[JobContext] = []
    await _deliver(nc, js, settings, ran)

    history = await events.history(request.job_id)
    assert [type(s.event) for s in history] == [
        JobRequested,
        JobReleased,
        JobStarted,
        JobCompleted,
    ]
    started, completed = history[2], history[3]
    assert started.seq == history[1].seq + 1  # right after the release, expecting it
    assert isinstance(started.event, JobStarted) and started.event.attempt == 3
    assert isinstance(completed.event, JobCompleted) and completed.event.attempt == 3
    (ctx,) = ran
    assert ctx.request == request  # the request read while JobStarted was appended
    assert ctx.own_seq == started.seq  # so the terminal event needed no reads


async def test_a_cancel_after_the_release_stops_it_before_the_handler(
    nc: Client, base_settings: Settings
) -> None:
    settings, js, events = await _setup(nc, base_settings)
    request = await _release(events)
    await events.append(JobCancelRequested(job_id=request.job_id, kind="save"))
    ran: list[JobContext] = []
    await _deliver(nc, js, settings, ran)

    assert ran == []
    history = await events.history(request.job_id)
    assert [type(s.event) for s in history][-1] is JobCancelled
    assert not any(isinstance(s.event, JobStarted) for s in history)


async def test_a_release_whose_request_is_gone_ends_the_job_failed(
    nc: Client, base_settings: Settings
) -> None:
    settings, js, events = await _setup(nc, base_settings)
    # JOBS allows no deletes: the release names a sequence the stream does not have, as one
    # whose request aged out (max_age) would
    request = await _release(events, points_at=10**9)
    ran: list[JobContext] = []
    await _deliver(nc, js, settings, ran)

    assert ran == []
    history = await events.history(request.job_id)
    assert [type(s.event) for s in history] == [
        JobRequested,
        JobReleased,
        JobStarted,
        JobFailed,
    ]
    failed = history[-1].event
    assert isinstance(failed, JobFailed) and failed.error.code == INTERNAL_ERROR
    info = await js.consumer_info(settings.names.stream, names.worker_consumer("save"))
    assert info.num_ack_pending == 0 and info.num_pending == 0  # termed, not redelivered
