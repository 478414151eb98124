"""Dead letters: a job whose worker died on its last delivery becomes JobFailed, exactly once.

A worker killed mid-job can't say anything; JetStream redelivers after ack_wait, and after
`max_deliver` deliveries it gives up and publishes a MAX_DELIVERIES advisory, which stream
JOBS_DLQ captures. Every worker process runs this failer on the shared durable consumer
`dlq-failer`: it reads the original JobRequested by stream sequence and appends
JobFailed{code: "max_deliveries"} unless the job already ended (EventStore.append_terminal).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Literal

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError, ServiceUnavailableError

from audioprep.domain.errors import MAX_DELIVERIES
from audioprep.domain.events import ErrorInfo, JobFailed, JobRequested
from audioprep.shared import names
from audioprep.shared.advisories import MaxDeliveriesAdvisory, decode_advisory
from audioprep.shared.event_store import EventStore
from audioprep.shared.nats_conn import is_transient
from audioprep.shared.provision import dlq_consumer_config
from audioprep.shared.settings import Settings

log = logging.getLogger("audioprep.dead_letters")

FETCH_BATCH = 16
# A fetch that finds nothing within this time is idle, not a failure. nats-py says so with
# FetchTimeoutError or nats.errors.TimeoutError, and a batch fetch whose deadline runs out
# between its two pull requests with a plain asyncio TimeoutError: all are TimeoutError.
FETCH_TIMEOUT_S = 2.0

Outcome = Literal["failed", "already_ended", "ignored", "missing"]


async def fail_dead_letter(
    events: EventStore, advisory: MaxDeliveriesAdvisory
) -> tuple[Outcome, JobRequested | None]:
    """Turn one advisory into JobFailed{max_deliveries} unless the job already ended."""
    if (
        advisory.stream != events.names.stream
        or names.worker_consumer_kind(advisory.consumer) is None
    ):
        return "ignored", None
    request = await events.request_at(advisory.stream_seq)
    if request is None:
        return "missing", None
    deliveries = advisory.deliveries or 1
    failed = JobFailed(
        job_id=request.job_id,
        kind=request.kind,
        tenant=request.tenant,
        attempt=request.attempt_base + deliveries,
        error=ErrorInfo(
            code=MAX_DELIVERIES,
            message=(
                f"delivered {deliveries} times and no worker finished it "
                "(the worker died or hung each time)"
            ),
            retryable=False,
        ),
    )
    seq = await events.append_terminal(failed)
    return ("failed" if seq is not None else "already_ended"), request


class DeadLetterFailer:
    """Pulls advisories from JOBS_DLQ and fails their jobs; runs in every worker process."""

    def __init__(self, *, events: EventStore, js: JetStreamContext, settings: Settings) -> None:
        self.events = events
        self.js = js
        self.settings = settings

    async def _subscribe(self, *, recreate: bool) -> JetStreamContext.PullSubscription:
        if recreate:
            try:
                await self.js.consumer_info(self.settings.names.dlq_stream, names.DLQ_CONSUMER)
            except NotFoundError:
                await self.js.add_consumer(
                    self.settings.names.dlq_stream, dlq_consumer_config(self.settings)
                )
        return await self.js.pull_subscribe_bind(
            durable=names.DLQ_CONSUMER, stream=self.settings.names.dlq_stream
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Work until `stop` is set; survives server restarts and a vanished consumer."""
        sub: JetStreamContext.PullSubscription | None = None
        recreate = False
        while not stop.is_set():
            try:
                if sub is None:
                    sub = await self._subscribe(recreate=recreate)
                msgs = await sub.fetch(FETCH_BATCH, timeout=FETCH_TIMEOUT_S)
            except TimeoutError:  # idle: nothing was dead-lettered (see FETCH_TIMEOUT_S)
                continue
            except (ServiceUnavailableError, NotFoundError) as exc:
                log.warning("dlq consumer unavailable", extra={"error": repr(exc)})
                sub, recreate = None, True
                await _sleep_unless(stop, 1.0)
                continue
            except Exception as exc:
                log.warning("dlq fetch failed", extra={"error": repr(exc)})
                await _sleep_unless(stop, 1.0)
                continue
            recreate = False
            for msg in msgs:
                await self.handle(msg)

    async def handle(self, msg: Msg) -> None:
        """One advisory: fail the job, then ack; a NATS hiccup hands it back for later."""
        try:
            advisory = decode_advisory(msg.data)
        except msgspec.DecodeError:
            log.error("undecodable advisory dropped", extra={"subject": msg.subject})
            await msg.term()
            return
        try:
            outcome, request = await fail_dead_letter(self.events, advisory)
        except Exception as exc:
            level = logging.WARNING if is_transient(exc) else logging.ERROR
            log.log(level, "dead letter not handled yet", extra={"error": repr(exc)})
            with contextlib.suppress(Exception):
                await msg.nak(delay=2.0)
            return
        extra: dict[str, object] = {
            "outcome": outcome,
            "consumer": advisory.consumer,
            "stream_seq": advisory.stream_seq,
            "deliveries": advisory.deliveries,
        }
        if request is not None:
            extra.update(job_id=request.job_id, kind=request.kind)
        log.log(
            logging.WARNING if outcome == "failed" else logging.INFO, "dead letter", extra=extra
        )
        with contextlib.suppress(Exception):
            await msg.ack_sync()


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
