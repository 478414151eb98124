"""Webhook delivery events (stream WEBHOOKS) and their fold into a delivery's view.

One delivery = one message about one job's end to one endpoint; its `id` is the
`webhook-id` header receivers de-duplicate on. Events, on
`webhooks.<endpointId>.<deliveryId>.<event>`:

- `DeliveryCreated` — the notifier saw a terminal job event the endpoint wants (or the API
  was asked to replay an earlier delivery). Appended exactly once per delivery id.
- `DeliveryAttempted` — one try and its outcome: `delivered` (a 2xx), `retrying` (with
  `nextAttemptAt`) or `failed` (410 Gone, retries exhausted, endpoint deleted or disabled).

The deliveries list of the API is the fold of these events (`fold_delivery`), nothing else.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime
from typing import ClassVar, Literal, get_args

import msgspec

from audioprep.domain.events import utcnow
from audioprep.domain.kinds import EventName, Kind
from audioprep.shared.ids import new_job_id
from audioprep.shared.names import Names, WebhookEventName

WebhookType = Literal["job.completed", "job.failed", "job.cancelled"]
WEBHOOK_TYPES: tuple[WebhookType, ...] = get_args(WebhookType)
TYPE_OF_EVENT: dict[EventName, WebhookType] = {
    "completed": "job.completed",
    "failed": "job.failed",
    "cancelled": "job.cancelled",
}
Outcome = Literal["delivered", "retrying", "failed"]
DeliveryStatus = Literal["pending", "retrying", "delivered", "failed"]
FINAL_STATUSES: frozenset[str] = frozenset({"delivered", "failed"})
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32, as job ids


def _b32(value: int, length: int) -> str:
    out = []
    for _ in range(length):
        out.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(out))


def delivery_id_for(endpoint_id: str, job_id: str, webhook_type: str) -> str:
    """The delivery of one job's end to one endpoint: the same inputs, the same id, so a
    notifier that handles a terminal event twice (kill -9 before its ack) creates nothing new."""
    digest = hashlib.sha256(f"{endpoint_id}\x00{job_id}\x00{webhook_type}".encode()).digest()
    return "msg_" + _b32(int.from_bytes(digest[:17], "big") >> 6, 26)


def new_delivery_id() -> str:
    """A fresh, time-sorted delivery id (replays)."""
    return "msg_" + new_job_id()


class _WebhookEvent(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    rename="camel",
    omit_defaults=True,
    tag_field="type",
):
    name: ClassVar[WebhookEventName]

    delivery_id: str
    endpoint_id: str
    tenant: str
    at: datetime = msgspec.field(default_factory=utcnow)
    v: int = 1


class DeliveryCreated(_WebhookEvent, tag="DeliveryCreated", frozen=True, kw_only=True):
    """A delivery to make: which job ended how, and when (the body's `timestamp`)."""

    name = "created"
    event: WebhookType
    job_id: str
    kind: Kind
    job_seq: int = 0
    occurred_at: datetime
    replay_of: str | None = None


class DeliveryAttempted(_WebhookEvent, tag="DeliveryAttempted", frozen=True, kw_only=True):
    """One try. `attempt` counts HTTP requests; a delivery ended without a request (endpoint
    deleted or disabled) repeats the previous count. `error` is a stable code."""

    name = "attempted"
    attempt: int
    outcome: Outcome
    status_code: int | None = None
    error: str | None = None
    message: str | None = None
    duration_ms: int | None = None
    next_attempt_at: datetime | None = None
    notifier: str | None = None


WebhookEvent = DeliveryCreated | DeliveryAttempted

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(WebhookEvent)


def encode_webhook_event(event: WebhookEvent) -> bytes:
    return _encoder.encode(event)


def decode_webhook_event(data: bytes) -> WebhookEvent:
    event: WebhookEvent = _decoder.decode(data)
    return event


def subject_of(names: Names, event: WebhookEvent) -> str:
    return names.webhook_subject(event.endpoint_id, event.delivery_id, event.name)


class AttemptInfo(msgspec.Struct, frozen=True, kw_only=True, rename="camel", omit_defaults=True):
    attempt: int
    at: datetime
    outcome: Outcome
    status_code: int | None = None
    error: str | None = None
    message: str | None = None
    duration_ms: int | None = None


class DeliveryView(msgspec.Struct, frozen=True, kw_only=True, rename="camel", omit_defaults=True):
    """What `GET /api/webhooks/{id}/deliveries` lists; `seq` is the last event folded in."""

    id: str
    endpoint_id: str
    event: WebhookType
    job_id: str
    kind: Kind
    status: DeliveryStatus
    attempts: int
    created_at: datetime
    updated_at: datetime
    occurred_at: datetime
    seq: int
    last_status_code: int | None = None
    last_error: str | None = None
    last_message: str | None = None
    next_attempt_at: datetime | None = None
    delivered_at: datetime | None = None
    replay_of: str | None = None
    history: list[AttemptInfo] = msgspec.field(default_factory=list)

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES


def pending_delivery(event: DeliveryCreated, seq: int) -> DeliveryView:
    """A delivery's view right after it was created: pending, no attempt yet."""
    return DeliveryView(
        id=event.delivery_id,
        endpoint_id=event.endpoint_id,
        event=event.event,
        job_id=event.job_id,
        kind=event.kind,
        status="pending",
        attempts=0,
        created_at=event.at,
        updated_at=event.at,
        occurred_at=event.occurred_at,
        seq=seq,
        replay_of=event.replay_of,
    )


def fold_delivery(
    view: DeliveryView | None, event: WebhookEvent, seq: int, *, keep_history: bool = True
) -> DeliveryView | None:
    """Apply one event to a delivery's view (pure). Events after the end change nothing."""
    if isinstance(event, DeliveryCreated):
        return view if view is not None else pending_delivery(event, seq)
    if view is None or view.is_final:
        return view
    history = view.history
    if keep_history:
        info = AttemptInfo(
            attempt=event.attempt,
            at=event.at,
            outcome=event.outcome,
            status_code=event.status_code,
            error=event.error,
            message=event.message,
            duration_ms=event.duration_ms,
        )
        history = [*history, info]
    return msgspec.structs.replace(
        view,
        status=event.outcome,
        attempts=max(view.attempts, event.attempt),
        updated_at=event.at,
        seq=seq,
        last_status_code=event.status_code,
        last_error=event.error,
        last_message=event.message,
        next_attempt_at=event.next_attempt_at if event.outcome == "retrying" else None,
        delivered_at=event.at if event.outcome == "delivered" else None,
        history=history,
    )


def fold_deliveries(
    events: Iterable[tuple[int, WebhookEvent]], *, keep_history: bool = False
) -> dict[str, DeliveryView]:
    """Fold events of many deliveries (stream order) into one view per delivery id."""
    views: dict[str, DeliveryView] = {}
    for seq, event in events:
        folded = fold_delivery(views.get(event.delivery_id), event, seq, keep_history=keep_history)
        if folded is not None:
            views[event.delivery_id] = folded
    return views
