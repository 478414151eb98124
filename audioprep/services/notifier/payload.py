"""What a delivery sends: `{"type", "timestamp", "data": <the job view>}`, signed per attempt.

`data` is the view `GET /api/audio/jobs/{id}` answers with (the same fold of the job's events
the projector writes to KV), with a fresh `downloadUrl` on every attempt: a retry a day later
still carries a link that works.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import Any

import msgspec
from nats.js.kv import KeyValue

from audioprep.domain.views import JobView
from audioprep.shared import signing
from audioprep.shared.event_store import EventStore
from audioprep.shared.job_views import JobViews
from audioprep.shared.settings import Settings
from audioprep.shared.storage import Storage
from audioprep.shared.webhook_crypto import signature_header
from audioprep.shared.webhook_events import DeliveryCreated

log = logging.getLogger("audioprep.notifier")

LINK_TTL_S = signing.DEFAULT_TTL_S


class WebhookBody(msgspec.Struct, frozen=True, kw_only=True):
    type: str
    timestamp: datetime
    data: JobView | dict[str, Any]


_encoder = msgspec.json.Encoder()


class Payloads:
    """Builds bodies (job view + fresh link) and the Standard Webhooks headers."""

    def __init__(
        self, settings: Settings, events: EventStore, jobs_kv: KeyValue, storage: Storage
    ) -> None:
        self.settings = settings
        self.events = events
        self.views = JobViews(jobs_kv, events)
        self.storage = storage

    async def view(self, created: DeliveryCreated) -> JobView | None:
        """The job's view folded from its events (one batched direct get): never behind the
        event that ended it, as the KV view can be for a few milliseconds after it."""
        return await self.views.fresh(created.job_id)

    async def _link(self, key: str) -> str | None:
        if self.storage.is_local:
            return signing.download_url(
                self.settings.base_url, self.settings.signing_secret, key, ttl_s=LINK_TTL_S
            )
        return await self.storage.sign_get(key, timedelta(seconds=LINK_TTL_S))

    async def with_download_url(self, view: JobView) -> JobView:
        result = view.result
        key = (result.preview_key or result.prepared_key) if result else None
        if key is None or view.status != "completed":
            return view
        try:
            url = await self._link(key)
            if result is not None and result.outputs:  # a save with several outputs
                outputs = [
                    msgspec.structs.replace(o, download_url=await self._link(o.prepared_key))
                    for o in result.outputs
                ]
                view = msgspec.structs.replace(
                    view, result=msgspec.structs.replace(result, outputs=outputs)
                )
        except Exception as exc:  # as the API: a link that can't be signed is left out
            log.warning(
                "download link not signed", extra={"job_id": view.job_id, "error": repr(exc)}
            )
            return view
        return msgspec.structs.replace(view, download_url=url) if url else view

    async def body(self, created: DeliveryCreated) -> bytes:
        view = await self.view(created)
        data: JobView | dict[str, Any]
        if view is None:  # the job aged out of stream JOBS: say what is known
            data = {"jobId": created.job_id, "kind": created.kind, "tenant": created.tenant}
        else:
            data = await self.with_download_url(view)
        return _encoder.encode(
            WebhookBody(type=created.event, timestamp=created.occurred_at, data=data)
        )


def webhook_headers(delivery_id: str, body: bytes, secrets: list[str]) -> dict[str, str]:
    """`webhook-id`, `webhook-timestamp` (now) and `webhook-signature` (one per secret)."""
    timestamp = int(time.time())
    return {
        "webhook-id": delivery_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(secrets, delivery_id, timestamp, body),
    }
