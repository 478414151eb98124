"""Dead letters: a job whose worker died on its last delivery becomes JobFailed, exactly once.

A worker killed mid-job can't say anything; JetStream redelivers after ack_wait, and after
`max_deliver` deliveries it gives up and publishes a MAX_DELIVERIES advisory, which stream
JOBS_DLQ captures. Every worker process runs this failer on the shared durable consumer
`dlq-failer`: it reads the original JobRequested by stream sequence and appends
JobFailed{code: "max_deliveries"} unless the job already ended (EventStore.append_terminal).
An advisory repeated for a message that already has an entry in JOBS_DLQ (JetStream can fire
one twice) ends nothing and is removed, so the DLQ keeps one entry per dead letter.

Advisories can also be missed: JOBS_DLQ had no leader, or could not store, when JetStream
published one (advisories are fire-and-forget). The reconciler (also in every worker process,
at start and then every `reconcile_interval_s`) finds those from the consumers' own state: a
message at or below the point a worker consumer has settled (its ack floor, or everything it
delivered when nothing is pending) was acked, terminated or given up after `max_deliver`.
Workers record a terminal event before they ack or term, so a settled request without one is
a dead letter. It is failed through the same path, and an entry recorded in JOBS_DLQ.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Literal

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo
from nats.js.errors import NotFoundError

from audioprep.domain.errors import MAX_DELIVERIES
from audioprep.domain.events import ErrorInfo, JobFailed, JobRequested, is_terminal
from audioprep.domain.kinds import KINDS, Kind
from audioprep.shared import direct_get, names
from audioprep.shared.advisories import MaxDeliveriesAdvisory, decode_advisory
from audioprep.shared.event_store import EventStore
from audioprep.shared.nats_conn import is_transient
from audioprep.shared.provision import dlq_consumer_config
from audioprep.shared.pull_loop import PullLoop
from audioprep.shared.settings import Settings

log = logging.getLogger("audioprep.dead_letters")

HANDLE_GRACE_S = 5.0  # on stop, an advisory being handled gets this long to finish
ADVISORY_TYPE = "io.nats.jetstream.advisory.v1.max_deliver"
# The reconciler: how often (at least; 2 × ack_wait by default), how far back its first pass
# looks, how many requests one direct get returns and how many jobs it checks at once.
RECONCILE_MIN_INTERVAL_S = 2.0
RECONCILE_LOOKBACK_S = 24 * 3600.0
RECONCILE_BATCH = 256
RECONCILE_CONCURRENCY = 16

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


def advisory_record(advisory: MaxDeliveriesAdvisory) -> bytes:
    """A MAX_DELIVERIES advisory as JetStream writes it, marked as written by the reconciler."""
    at = advisory.timestamp or datetime.now(UTC)
    return json.dumps(
        {
            "type": ADVISORY_TYPE,
            "id": f"reconciled-{advisory.consumer}-{advisory.stream_seq}",
            "timestamp": at.isoformat().replace("+00:00", "Z"),
            "stream": advisory.stream,
            "consumer": advisory.consumer,
            "stream_seq": advisory.stream_seq,
            "deliveries": advisory.deliveries,
            "reconciled": True,
        }
    ).encode()


class DeadLetterFailer:
    """Pulls advisories from JOBS_DLQ and fails their jobs; runs in every worker process."""

    def __init__(self, *, events: EventStore, js: JetStreamContext, settings: Settings) -> None:
        self.events = events
        self.js = js
        self.settings = settings

    async def run(self, stop: asyncio.Event) -> None:
        """Work until `stop` is set; survives server restarts and a vanished consumer."""
        loop = PullLoop(
            self.js,
            stream=self.settings.names.dlq_stream,
            config=dlq_consumer_config(self.settings),
            handler=self.handle,
            concurrency=1,
            grace_s=HANDLE_GRACE_S,
            fetchers=1,
        )
        await loop.run(stop)

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
        if outcome == "already_ended":
            await self._drop_if_repeated(msg, advisory, extra)
        with contextlib.suppress(Exception):
            await msg.ack_sync()

    async def _drop_if_repeated(
        self, msg: Msg, advisory: MaxDeliveriesAdvisory, extra: dict[str, object]
    ) -> None:
        """Remove this entry from JOBS_DLQ when an earlier one names the same message."""
        own = msg.metadata.sequence.stream
        try:
            if await self._earlier_entry(msg.subject, advisory, own):
                await self.js.delete_msg(self.settings.names.dlq_stream, own)
                log.info("repeated dead-letter advisory removed", extra=extra)
        except Exception as exc:  # the repeat stays listed; nothing else depends on it
            log.warning("repeated advisory not removed", extra={**extra, "error": repr(exc)})

    async def _earlier_entry(self, subject: str, advisory: MaxDeliveriesAdvisory, own: int) -> bool:
        seq = 1
        while seq < own:
            try:
                raw = await self.js.get_msg(
                    self.settings.names.dlq_stream, seq, subject=subject, next=True, direct=True
                )
            except NotFoundError:
                return False
            if raw.seq is None or raw.seq >= own:
                return False
            if raw.data:
                with contextlib.suppress(msgspec.DecodeError):
                    earlier = decode_advisory(raw.data)
                    if (earlier.consumer, earlier.stream_seq) == (
                        advisory.consumer,
                        advisory.stream_seq,
                    ):
                        return True
            seq = raw.seq + 1
        return False


def reconcile_interval_s(settings: Settings) -> float:
    """Every 2 × ack_wait: JetStream gives up on a message one ack_wait after its last try."""
    return max(RECONCILE_MIN_INTERVAL_S, 2.0 * settings.ack_wait_s)


def settled_upto(info: ConsumerInfo) -> int:
    """The stream sequence up to which `info`'s consumer is done with every message it
    delivered: acked, terminated, or given up after max_deliver. A message naked with a
    delay or waiting for redelivery stays pending, so it is never below this point."""
    floor = (info.ack_floor.stream_seq if info.ack_floor else 0) or 0
    if info.num_ack_pending == 0 and info.delivered is not None:
        return max(floor, info.delivered.stream_seq or 0)
    return floor


class DeadLetterReconciler:
    """Ends dead letters whose MAX_DELIVERIES advisory never reached JOBS_DLQ (see above)."""

    def __init__(
        self,
        *,
        events: EventStore,
        js: JetStreamContext,
        settings: Settings,
        lookback_s: float = RECONCILE_LOOKBACK_S,
    ) -> None:
        self.events = events
        self.js = js
        self.settings = settings
        self.lookback_s = lookback_s
        # (consumer, its creation time) → the stream seq its requests were checked up to; a
        # re-created consumer delivers everything again, so it starts over.
        self.checked: dict[tuple[str, datetime | None], int] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """A pass at start, then one every `reconcile_interval_s` until `stop` is set."""
        interval = reconcile_interval_s(self.settings)
        while not stop.is_set():
            try:
                await self.reconcile()
            except Exception as exc:  # NATS away: the next pass starts where this one did
                log.warning("dead-letter reconcile failed", extra={"error": repr(exc)})
            await _sleep_unless(stop, interval)

    async def reconcile(self) -> list[str]:
        """One pass over every worker consumer; returns the jobs it failed."""
        ended: list[str] = []
        for kind in KINDS:
            ended += await self._reconcile_consumer(kind)
        return ended

    async def _reconcile_consumer(self, kind: Kind) -> list[str]:
        consumer = names.worker_consumer(kind)
        try:
            info = await self.js.consumer_info(self.events.names.stream, consumer)
        except NotFoundError:  # not provisioned yet, or being re-created by a worker
            return []
        max_deliver = info.config.max_deliver or -1
        if max_deliver <= 0:  # unlimited deliveries: JetStream never gives up on a message
            return []
        settled = settled_upto(info)
        key = (consumer, info.created)
        after = self.checked.get(key)
        if after is None:  # the first pass (of this consumer)
            after = await self._lookback_seq()
        ended: list[str] = []
        limit = asyncio.Semaphore(RECONCILE_CONCURRENCY)
        while after < settled:
            # what the consumer delivers: releases (fair dispatch) or requests (fifo)
            work = info.config.filter_subject or self.events.names.requested_filter(kind)
            found = await self._requests(work, after)
            found = [(seq, subject) for seq, subject in found if seq <= settled]
            if not found:
                break
            checked = await asyncio.gather(
                *(self._check(limit, consumer, max_deliver, s, subj) for s, subj in found)
            )
            ended += [job_id for job_id in checked if job_id]
            after = found[-1][0]
        self.checked[key] = max(after, settled)
        return ended

    async def _check(
        self,
        limit: asyncio.Semaphore,
        consumer: str,
        max_deliver: int,
        seq: int,
        subject: str,
    ) -> str | None:
        """Fail the job requested at `seq` if it never ended; its id when this call did."""
        try:
            _, job_id, _ = self.events.names.parse_subject(subject)
        except ValueError:
            return None
        async with limit:
            last = await self.events.last_event(job_id)
            if last is not None and is_terminal(last.event):
                return None
            advisory = MaxDeliveriesAdvisory(
                stream=self.events.names.stream,
                consumer=consumer,
                stream_seq=seq,
                deliveries=max_deliver,
                timestamp=datetime.now(UTC),
            )
            outcome, request = await fail_dead_letter(self.events, advisory)
            if outcome != "failed" or request is None:
                return None
            log.warning(
                "dead letter reconciled (its advisory was missed)",
                extra={"job_id": job_id, "kind": request.kind, "consumer": consumer},
            )
            try:  # an entry in JOBS_DLQ, so `audioprep dlq list` shows it
                await self.js.publish(
                    self.events.names.max_deliveries_advisory_of(consumer),
                    advisory_record(advisory),
                    headers={"Nats-Msg-Id": f"reconciled:{consumer}:{seq}"},
                    timeout=self.events.timeout,
                )
            except Exception as exc:
                log.warning("dead letter not recorded in JOBS_DLQ", extra={"error": repr(exc)})
            return job_id

    async def _requests(self, subject: str, after: int) -> list[tuple[int, str]]:
        """(seq, subject) of up to RECONCILE_BATCH requests after `after`: one batched direct
        get; payloads are not decoded here (one bad message must not stop the scan)."""
        found = await direct_get.next_by_subject(
            self.events.nc,
            self.events.names.stream,
            subject,
            after + 1,
            RECONCILE_BATCH,
            self.events.timeout,
        )
        return [(direct_get.sequence(m), direct_get.subject_of(m)) for m in found]

    async def _lookback_seq(self) -> int:
        """The stream sequence just before the first event of the `lookback_s` up to the
        stream's newest event. Both ends are the server's clock (the time it stored each
        message), not this worker's: a worker whose clock runs ahead (a wrong RTC at boot,
        a host NTP has not stepped yet) would otherwise look back less, or not at all."""
        subject = names.direct_get_subject(self.events.names.stream)
        newest = await self.events.nc.request(
            subject,
            json.dumps({"last_by_subj": self.events.names.stream_subjects}).encode(),
            timeout=self.events.timeout,
        )
        stored_at = server_timestamp(newest)
        if stored_at is None and (newest.headers or {}).get("Status") == "404":
            return 0  # an empty stream: nothing to look back at
        since = (stored_at or datetime.now(UTC)) - timedelta(seconds=self.lookback_s)
        reply = await self.events.nc.request(
            subject,
            json.dumps({"start_time": since.isoformat().replace("+00:00", "Z")}).encode(),
            timeout=self.events.timeout,
        )
        headers = reply.headers or {}
        if "Nats-Sequence" in headers:
            return int(headers["Nats-Sequence"]) - 1
        info = await self.js.stream_info(self.events.names.stream)  # nothing that recent
        return int(info.state.last_seq or 0)


def server_timestamp(msg: Msg) -> datetime | None:
    """When the server stored a direct-get message (`Nats-Time-Stamp`, its own clock)."""
    stamp = (msg.headers or {}).get("Nats-Time-Stamp")
    if not stamp:
        return None
    try:  # RFC 3339 with nanoseconds; fromisoformat keeps microseconds
        return datetime.fromisoformat(stamp)
    except ValueError:
        return None


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
