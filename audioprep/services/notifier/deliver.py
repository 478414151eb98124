"""Making deliveries: one message per delivery on consumer `notifier-deliveries`.

For each message (a DeliveryCreated): fold the delivery's events; if it has ended, ack (this
is how a redelivery after kill -9 finds a success and sends nothing); if its next attempt is
not due yet, nak until then; else POST, record the attempt as an event (compare-and-set on
the delivery's subjects: two notifiers can't both record), then ack (ended) or nak with the
backoff delay (retrying). The message stays unacknowledged between attempts, so a notifier
that dies mid-retry loses nothing: the server hands the delivery to the next one.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime, timedelta

import msgspec
from nats.aio.msg import Msg

from audioprep.domain.events import utcnow
from audioprep.services.notifier import metrics
from audioprep.services.notifier.payload import Payloads, webhook_headers
from audioprep.services.notifier.retry import patiently
from audioprep.services.notifier.sender import Sender, SendResult
from audioprep.shared.logs import bound
from audioprep.shared.settings import Settings
from audioprep.shared.webhook_crypto import SecretBox, SecretBoxError
from audioprep.shared.webhook_events import (
    DeliveryAttempted,
    DeliveryCreated,
    DeliveryView,
    Outcome,
    decode_webhook_event,
)
from audioprep.shared.webhook_store import DeliveryStore, Endpoint, EndpointStore

log = logging.getLogger("audioprep.notifier")

JITTER = 0.2  # each wait is the schedule's step ± 20 %
EARLY_S = 0.05  # a redelivery this close to its due time just runs
DUE_TIMES_SIZE = 100_000  # deliveries waiting for a retry whose due time this process keeps


def notifier_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def retry_delay(settings: Settings, attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt `attempt` (1-based): the schedule's step for it
    (the last step repeats), with jitter so receivers coming back aren't hit all at once."""
    schedule = settings.webhook_retry_schedule_s or (60.0,)
    base = schedule[min(attempt, len(schedule)) - 1]
    return base * (rng or random).uniform(1 - JITTER, 1 + JITTER)


class DueTimes:
    """When each delivery's next attempt is due, on this process's monotonic clock.

    `next_attempt_at` in the stream is wall clock (it outlives the process, and a person reads
    it), but a wait computed from it alone moves with the clock: stepped back 2 h between an
    attempt and its redelivery, a 1-minute retry would be put off by 2 h. So a wait this
    process scheduled (or already waited for once) runs on its monotonic clock; one it learns
    from the stream (another notifier scheduled it) is read from the wall clock but never
    longer than the step that was scheduled (next attempt minus the attempt, both stamped by
    the one clock that chose them). Bounded: the oldest entries go past `size`."""

    def __init__(
        self,
        *,
        size: int = DUE_TIMES_SIZE,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = utcnow,
    ) -> None:
        self.size = size
        self.monotonic = monotonic
        self.wall = wall
        self._due: OrderedDict[str, tuple[datetime, float]] = OrderedDict()

    def scheduled(self, delivery_id: str, next_at: datetime, delay_s: float) -> None:
        """This process chose to try `delivery_id` again at `next_at`, `delay_s` from now."""
        self._due[delivery_id] = (next_at, self.monotonic() + delay_s)
        self._due.move_to_end(delivery_id)
        while len(self._due) > self.size:
            self._due.popitem(last=False)

    def wait_s(self, view: DeliveryView) -> float:
        """Seconds until `view`'s next attempt is due (0 when it is, or there is none)."""
        if view.next_attempt_at is None:
            return 0.0
        known = self._due.get(view.id)
        if known is None or known[0] != view.next_attempt_at:
            step = (view.next_attempt_at - view.updated_at).total_seconds()
            left = (view.next_attempt_at - self.wall()).total_seconds()
            self.scheduled(view.id, view.next_attempt_at, max(0.0, min(left, step)))
            known = self._due[view.id]
        return max(0.0, known[1] - self.monotonic())

    def forget(self, delivery_id: str) -> None:
        self._due.pop(delivery_id, None)


class Deliverer:
    def __init__(
        self,
        *,
        settings: Settings,
        endpoints: EndpointStore,
        deliveries: DeliveryStore,
        payloads: Payloads,
        sender: Sender,
        box: SecretBox,
    ) -> None:
        self.settings = settings
        self.endpoints = endpoints
        self.deliveries = deliveries
        self.payloads = payloads
        self.sender = sender
        self.box = box
        self.name = notifier_name()
        self.due = DueTimes()

    async def handle(self, msg: Msg) -> None:
        try:
            created = decode_webhook_event(msg.data)
        except msgspec.DecodeError:
            log.error("undecodable delivery skipped", extra={"subject": msg.subject})
            await msg.term()
            return
        if not isinstance(created, DeliveryCreated):
            await msg.ack()
            return
        with bound(
            job_id=created.job_id,
            delivery_id=created.delivery_id,
            endpoint_id=created.endpoint_id,
            tenant=created.tenant,
        ):
            await self._deliver(msg, created)

    async def _deliver(self, msg: Msg, created: DeliveryCreated) -> None:
        # Always from the stream, also on a first delivery: a consumer re-created after a
        # server lost its state offers every delivery again as "first", done ones included.
        view = await self.deliveries.delivery(created.endpoint_id, created.delivery_id)
        if view is None:  # the direct get raced the write it was told about: look again soon
            await msg.nak(delay=0.5)
            return
        if view.is_final:
            self.due.forget(view.id)
            await msg.ack()  # a lost ack only brings the message back here: harmless
            return
        wait = self.due.wait_s(view)
        if wait > EARLY_S:  # redelivered early (server restart, ack_wait): not due yet
            await msg.nak(delay=wait)
            return
        now = utcnow()
        found = await self.endpoints.get(created.tenant, created.endpoint_id)
        if found is None:
            await self._end_unsent(
                msg, created, view, "endpoint_deleted", "the endpoint was deleted"
            )
            return
        endpoint = found[0]
        if endpoint.disabled:
            reason = f"the endpoint is disabled: {endpoint.disabled_reason or 'no reason given'}"
            await self._end_unsent(msg, created, view, "endpoint_disabled", reason)
            return
        try:
            secrets = self.secrets(endpoint, now)
        except SecretBoxError as exc:
            result = SendResult(None, "secret_unavailable", str(exc), 0.0)
        else:
            body = await self.payloads.body(created)
            headers = webhook_headers(created.delivery_id, body, secrets)
            await msg.in_progress()
            metrics.IN_FLIGHT.inc()
            try:
                result = await self.sender.post(endpoint.url, body, headers)
            finally:
                metrics.IN_FLIGHT.dec()
            metrics.ATTEMPT_SECONDS.observe(result.seconds)
        await self._record(msg, created, view, endpoint, result)

    def secrets(self, endpoint: Endpoint, now: datetime) -> list[str]:
        """The secrets to sign with: the current one and any rotated one still in its grace."""
        return [
            self.box.decrypt(stored.sealed, endpoint.key)
            for stored in endpoint.secrets
            if stored.expires_at is None or stored.expires_at > now
        ]

    async def _record(
        self,
        msg: Msg,
        created: DeliveryCreated,
        view: DeliveryView,
        endpoint: Endpoint,
        result: SendResult,
    ) -> None:
        now = utcnow()
        attempt = view.attempts + 1
        error, message = result.error, result.message
        next_at: datetime | None = None
        outcome: Outcome
        if result.ok:
            outcome = "delivered"
        elif result.status_code == 410:
            outcome, error = "failed", "gone"
            message = "the receiver answered 410 Gone: endpoint disabled"
        elif (now - view.created_at).total_seconds() >= self.settings.webhook_retry_for_s:
            outcome, error = "failed", "retries_exhausted"
            message = f"gave up after {attempt} attempts; last: {result.error}: {result.message}"
        else:
            outcome = "retrying"
            next_at = now + timedelta(seconds=retry_delay(self.settings, attempt))
        event = DeliveryAttempted(
            delivery_id=created.delivery_id,
            endpoint_id=created.endpoint_id,
            tenant=created.tenant,
            at=now,
            attempt=attempt,
            outcome=outcome,
            status_code=result.status_code,
            error=error,
            message=message,
            duration_ms=round(result.seconds * 1000),
            next_attempt_at=next_at,
            notifier=self.name,
        )
        if outcome != "delivered":  # a disabled endpoint is visible once the failure is
            await self._endpoint_health(endpoint, created, outcome, error, now)
        seq = await patiently(
            "record attempt", lambda: self.deliveries.append_after(event, view.seq)
        )
        if seq is None:
            await self._lost_race(msg, created)
            return
        metrics.attempt(outcome, error)
        fields = {
            "attempt": attempt,
            "outcome": outcome,
            "status_code": result.status_code,
            "error": error,
            "duration_ms": event.duration_ms,
        }
        if outcome == "delivered":
            if created.replay_of is None:
                metrics.LATENCY.observe(max(0.0, (now - created.occurred_at).total_seconds()))
            log.info("webhook delivered", extra=fields)
        elif outcome == "retrying":
            assert next_at is not None
            log.info(
                "webhook attempt failed, will retry", extra={**fields, "next_attempt_at": next_at}
            )
        else:
            log.warning("webhook delivery failed for good", extra={**fields, "detail": message})
        if outcome == "delivered":  # after the record: a success is written down first
            await self._endpoint_health(endpoint, created, outcome, error, now)
        if next_at is None:
            self.due.forget(created.delivery_id)
            await msg.ack()  # recorded first: a lost ack only brings the message back here
        else:
            delay = max(0.0, (next_at - now).total_seconds())
            self.due.scheduled(created.delivery_id, next_at, delay)
            await msg.nak(delay=delay)

    async def _end_unsent(
        self, msg: Msg, created: DeliveryCreated, view: DeliveryView, code: str, message: str
    ) -> None:
        """End a delivery without sending (its endpoint is gone or disabled)."""
        event = DeliveryAttempted(
            delivery_id=view.id,
            endpoint_id=view.endpoint_id,
            tenant=created.tenant,
            attempt=view.attempts,
            outcome="failed",
            error=code,
            message=message,
            notifier=self.name,
        )
        seq = await patiently("record end", lambda: self.deliveries.append_after(event, view.seq))
        if seq is not None:
            metrics.attempt("failed", code)
            log.info("webhook delivery dropped", extra={"error": code, "detail": message})
        await patiently("ack delivery", msg.ack_sync)

    async def _lost_race(self, msg: Msg, created: DeliveryCreated) -> None:
        """Another notifier recorded an outcome first: follow what the stream says."""
        view = await self.deliveries.delivery(created.endpoint_id, created.delivery_id)
        log.info("another notifier recorded this delivery first")
        if view is None or view.is_final:
            await patiently("ack delivery", msg.ack_sync)
            return
        await msg.nak(delay=self.due.wait_s(view))

    async def _endpoint_health(
        self,
        endpoint: Endpoint,
        created: DeliveryCreated,
        outcome: Outcome,
        error: str | None,
        now: datetime,
    ) -> None:
        """Success clears `failingSince`; 410 disables at once; failing for longer than
        AUDIOPREP_WEBHOOK_DISABLE_AFTER_S disables. Best effort: the attempt is recorded."""
        disable_after = self.settings.webhook_disable_after_s

        def change(current: Endpoint) -> Endpoint | None:
            if outcome == "delivered":
                if current.failing_since is None:
                    return None
                return _replace(current, failing_since=None, last_success_at=now, updated_at=now)
            if current.disabled:
                return None
            if error == "gone":
                reason = (
                    f"the receiver answered 410 Gone at {now.isoformat()} "
                    f"(delivery {created.delivery_id})"
                )
                return _disabled(current, reason, now)
            since = current.failing_since or now
            if (now - since).total_seconds() >= disable_after:
                days = (now - since).total_seconds() / 86400
                reason = f"failing since {since.isoformat()} ({days:.1f} days); last error: {error}"
                return _disabled(current, reason, now)
            if current.failing_since is None:
                return _replace(current, failing_since=now, updated_at=now)
            return None

        try:
            updated = await self.endpoints.update(endpoint.tenant, endpoint.id, change)
        except Exception as exc:
            log.warning("endpoint health not recorded", extra={"error": repr(exc)})
            return
        if updated is not None and updated.disabled and not endpoint.disabled:
            metrics.ENDPOINTS_DISABLED.labels("gone" if error == "gone" else "failing").inc()
            log.warning("webhook endpoint disabled", extra={"reason": updated.disabled_reason})


def _replace(endpoint: Endpoint, **changes: object) -> Endpoint:
    return msgspec.structs.replace(endpoint, **changes)


def _disabled(endpoint: Endpoint, reason: str, now: datetime) -> Endpoint:
    return _replace(
        endpoint, disabled=True, disabled_reason=reason, disabled_at=now, updated_at=now
    )
