"""Webhook endpoints (KV bucket `webhook_endpoints`) and delivery events (stream WEBHOOKS).

Endpoints are configuration: one KV entry per endpoint under `<tenant>.<endpointId>`, written
with compare-and-set (the API edits them, notifiers record health and disable them).
Deliveries are events; `DeliveryStore` is the only writer and reader of stream WEBHOOKS.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import msgspec
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import (
    KeyNotFoundError,
    KeyWrongLastSequenceError,
)
from nats.js.kv import KeyValue

from audioprep.domain.kinds import Kind
from audioprep.shared import direct_get, kv_read, names
from audioprep.shared.ids import new_job_id
from audioprep.shared.js_publish import publish_after
from audioprep.shared.names import Names
from audioprep.shared.webhook_events import (
    DeliveryCreated,
    DeliveryView,
    WebhookEvent,
    WebhookType,
    decode_webhook_event,
    encode_webhook_event,
    fold_deliveries,
    fold_delivery,
    subject_of,
)

MAX_ENDPOINTS_PER_TENANT = 100
CAS_RETRIES = 20
DIRECT_BATCH = 256
_ENDPOINT_ID_RE = re.compile(r"^ep_[0-9A-HJKMNP-TV-Z]{26}$")
_DELIVERY_ID_RE = re.compile(r"^msg_[0-9A-HJKMNP-TV-Z]{26}$")


def new_endpoint_id() -> str:
    return "ep_" + new_job_id()


def is_endpoint_id(value: str) -> bool:
    return bool(_ENDPOINT_ID_RE.match(value))


def is_delivery_id(value: str) -> bool:
    return bool(_DELIVERY_ID_RE.match(value))


class StoredSecret(msgspec.Struct, frozen=True, kw_only=True, rename="camel", omit_defaults=True):
    """One signing secret, encrypted (shared/webhook_crypto.py); `expires_at` set once rotated."""

    sealed: str
    created_at: datetime
    expires_at: datetime | None = None


class Endpoint(msgspec.Struct, frozen=True, kw_only=True, rename="camel", omit_defaults=True):
    """An endpoint's configuration and health, as stored in KV."""

    id: str
    tenant: str
    url: str
    events: list[WebhookType]
    kinds: list[Kind] = msgspec.field(default_factory=list)  # empty: every kind
    description: str | None = None
    created_at: datetime
    updated_at: datetime
    # Terminal job events with a higher JOBS sequence are delivered (the stream's end when the
    # endpoint was made: no clocks involved, nothing older is sent).
    jobs_from_seq: int = 0
    secrets: list[StoredSecret] = msgspec.field(default_factory=list)  # newest first
    disabled: bool = False
    disabled_reason: str | None = None
    disabled_at: datetime | None = None
    failing_since: datetime | None = None
    last_success_at: datetime | None = None

    @property
    def key(self) -> str:
        return names.webhook_endpoint_key(self.tenant, self.id)

    def wants(self, webhook_type: str, kind: str, jobs_seq: int) -> bool:
        return (
            not self.disabled
            and webhook_type in self.events
            and (not self.kinds or kind in self.kinds)
            and jobs_seq > self.jobs_from_seq
        )


_endpoint_encoder = msgspec.json.Encoder()
_endpoint_decoder = msgspec.json.Decoder(Endpoint)


def encode_endpoint(endpoint: Endpoint) -> bytes:
    return _endpoint_encoder.encode(endpoint)


def decode_endpoint(data: bytes) -> Endpoint:
    return _endpoint_decoder.decode(data)


class TooManyEndpoints(Exception):
    """A tenant already has MAX_ENDPOINTS_PER_TENANT endpoints."""


class EndpointStore:
    """CRUD on KV bucket `webhook_endpoints`; a tenant's listing by shared/kv_read.py."""

    def __init__(
        self, nc: Client, js: JetStreamContext, names: Names, *, timeout: float = 5.0
    ) -> None:
        self.nc = nc
        self.js = js
        self.names = names
        self.timeout = timeout
        self._kv: KeyValue | None = None

    async def kv(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self.js.key_value(self.names.webhook_endpoints_bucket)
        return self._kv

    async def get(self, tenant: str, endpoint_id: str) -> tuple[Endpoint, int] | None:
        if not is_endpoint_id(endpoint_id):
            return None
        kv = await self.kv()
        try:
            entry = await kv.get(names.webhook_endpoint_key(tenant, endpoint_id))
        except KeyNotFoundError:
            return None
        if not entry.value or entry.revision is None:
            return None
        return decode_endpoint(entry.value), entry.revision

    async def create(self, endpoint: Endpoint) -> None:
        if len(await self.for_tenant(endpoint.tenant)) >= MAX_ENDPOINTS_PER_TENANT:
            raise TooManyEndpoints(endpoint.tenant)
        kv = await self.kv()
        await kv.create(endpoint.key, encode_endpoint(endpoint))

    async def update(
        self, tenant: str, endpoint_id: str, change: Callable[[Endpoint], Endpoint | None]
    ) -> Endpoint | None:
        """Apply `change` with compare-and-set, re-reading on conflict. `change` returning None
        (or the same object) writes nothing. None when the endpoint does not exist."""
        kv = await self.kv()
        for _ in range(CAS_RETRIES):
            found = await self.get(tenant, endpoint_id)
            if found is None:
                return None
            current, revision = found
            new = change(current)
            if new is None or new is current:
                return current
            try:
                await kv.update(current.key, encode_endpoint(new), last=revision)
            except KeyWrongLastSequenceError:
                continue
            return new
        raise RuntimeError(f"could not update endpoint {endpoint_id}: too much contention")

    async def delete(self, tenant: str, endpoint_id: str) -> bool:
        if await self.get(tenant, endpoint_id) is None:
            return False
        kv = await self.kv()
        await kv.delete(names.webhook_endpoint_key(tenant, endpoint_id))
        return True

    async def for_tenant(self, tenant: str) -> list[Endpoint]:
        """Every endpoint of a tenant, oldest first: as the bucket stream's leader has them (one
        multi_last direct get checked against the leader's last revision, shared/kv_read.py),
        so an endpoint just registered is never missed, also right after a leader change."""
        found = await kv_read.read_latest(
            self.nc,
            self.names.webhook_endpoints_bucket,
            names.tenant_keys(tenant),
            timeout=self.timeout,
        )
        endpoints = [decode_endpoint(e.value) for e in found.values() if e.value]
        return sorted(endpoints, key=lambda e: e.id)


@dataclass(frozen=True, slots=True)
class StoredWebhookEvent:
    seq: int
    event: WebhookEvent


class DeliveryStore:
    """Appends delivery events to stream WEBHOOKS and folds them back."""

    def __init__(
        self, nc: Client, js: JetStreamContext, names: Names, *, timeout: float = 5.0
    ) -> None:
        self.nc = nc
        self.js = js
        self.names = names
        self.timeout = timeout

    async def create(self, event: DeliveryCreated) -> int | None:
        """Append a delivery's DeliveryCreated once: its seq, or None when it already exists
        (also after the duplicate window: expected-last-subject-sequence 0 on the delivery's
        subjects)."""
        ack = await self._publish_expecting(event, 0, msg_id=f"{event.delivery_id}:created")
        return None if ack is None or ack.duplicate else ack.seq

    async def append_after(self, event: WebhookEvent, last_seq: int) -> int | None:
        """Append `event` if the delivery's last event is still `last_seq` (optimistic
        concurrency: two notifiers can't both record an outcome); its seq, or None."""
        ack = await self._publish_expecting(event, last_seq)
        return None if ack is None else ack.seq

    async def _publish_expecting(
        self, event: WebhookEvent, last_seq: int, *, msg_id: str | None = None
    ) -> PubAck | None:
        """Publish if the delivery's subjects still end at `last_seq`; None when they moved on."""
        return await publish_after(
            self.js,
            subject_of(self.names, event),
            encode_webhook_event(event),
            filter_subject=self.names.delivery_subjects(event.endpoint_id, event.delivery_id),
            last_seq=last_seq,
            timeout=self.timeout,
            headers={"Nats-Msg-Id": msg_id} if msg_id is not None else None,
        )

    async def events(self, subject: str, *, after_seq: int = 0) -> list[StoredWebhookEvent]:
        """Every event on `subject` (a filter) in stream order, by batched direct gets."""
        out: list[StoredWebhookEvent] = []
        next_seq = after_seq + 1
        while True:
            msgs = await direct_get.next_by_subject(
                self.nc, self.names.webhooks_stream, subject, next_seq, DIRECT_BATCH, self.timeout
            )
            got = [
                StoredWebhookEvent(seq=direct_get.sequence(m), event=decode_webhook_event(m.data))
                for m in msgs
            ]
            out.extend(got)
            if len(got) < DIRECT_BATCH:
                return out
            next_seq = got[-1].seq + 1

    async def delivery(self, endpoint_id: str, delivery_id: str) -> DeliveryView | None:
        """One delivery with its attempts."""
        view: DeliveryView | None = None
        for stored in await self.events(self.names.delivery_subjects(endpoint_id, delivery_id)):
            view = fold_delivery(view, stored.event, stored.seq)
        return view

    async def deliveries(self, endpoint_id: str, *, limit: int = 50) -> list[DeliveryView]:
        """The endpoint's deliveries, newest first: the fold of its events in the stream."""
        stored = await self.events(self.names.endpoint_delivery_subjects(endpoint_id))
        views = fold_deliveries((s.seq, s.event) for s in stored)
        ordered = sorted(views.values(), key=lambda v: (v.created_at, v.id), reverse=True)
        return ordered[:limit]
