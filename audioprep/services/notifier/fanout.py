"""Terminal job events → one DeliveryCreated per interested endpoint.

Consumer `notifier-jobs` on stream JOBS takes every `completed`, `failed` and `cancelled`
event. For each, the tenant's endpoints are read (one batched direct get) and a delivery is
created for each endpoint that wants it; only then is the job event acked. Delivery ids are
derived from (endpoint, job, type) and created with expected-last-subject-sequence 0, so a
notifier killed before its ack creates nothing twice when the event comes back.
"""

from __future__ import annotations

import logging

import msgspec
from nats.aio.msg import Msg

from audioprep.domain.events import decode_event
from audioprep.services.notifier import metrics
from audioprep.shared.logs import bound
from audioprep.shared.webhook_events import TYPE_OF_EVENT, DeliveryCreated, delivery_id_for
from audioprep.shared.webhook_store import DeliveryStore, EndpointStore

log = logging.getLogger("audioprep.notifier")


class FanOut:
    def __init__(self, endpoints: EndpointStore, deliveries: DeliveryStore) -> None:
        self.endpoints = endpoints
        self.deliveries = deliveries

    async def handle(self, msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        try:
            event = decode_event(msg.data)
        except msgspec.DecodeError:
            log.error("undecodable job event skipped", extra={"seq": seq, "subject": msg.subject})
            await msg.term()
            return
        webhook_type = TYPE_OF_EVENT.get(event.name)
        if webhook_type is None:
            await msg.ack()
            return
        with bound(job_id=event.job_id, kind=event.kind, tenant=event.tenant):
            wanted = [
                endpoint
                for endpoint in await self.endpoints.for_tenant(event.tenant)
                if endpoint.wants(webhook_type, event.kind, seq)
            ]
            for endpoint in wanted:
                created = DeliveryCreated(
                    delivery_id=delivery_id_for(endpoint.id, event.job_id, webhook_type),
                    endpoint_id=endpoint.id,
                    tenant=event.tenant,
                    event=webhook_type,
                    job_id=event.job_id,
                    kind=event.kind,
                    job_seq=seq,
                    occurred_at=event.at,
                )
                if await self.deliveries.create(created):
                    metrics.CREATED.inc()
                    log.info(
                        "delivery created",
                        extra={
                            "delivery_id": created.delivery_id,
                            "endpoint_id": endpoint.id,
                            "event": webhook_type,
                        },
                    )
            await msg.ack()  # a lost ack brings the event back: its deliveries exist already
