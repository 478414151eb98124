"""Notifier process: fan terminal job events out to endpoints and make the deliveries.

Stateless: everything it knows is in NATS (endpoint config in KV bucket `webhook_endpoints`,
deliveries as events in stream WEBHOOKS, its position in two durable consumers), so any number
of notifiers can run on any host, and one killed at any moment loses nothing.
"""

from __future__ import annotations

import asyncio
import logging

from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, NotFoundError

from audioprep.services.notifier import metrics as notifier_metrics
from audioprep.services.notifier.deliver import Deliverer
from audioprep.services.notifier.fanout import FanOut
from audioprep.services.notifier.payload import Payloads
from audioprep.services.notifier.sender import Sender
from audioprep.shared import metrics, names
from audioprep.shared.bootstrap import service_deps, stop_on_signals
from audioprep.shared.event_store import EventStore
from audioprep.shared.provision import (
    notifier_deliveries_consumer_config,
    notifier_jobs_consumer_config,
    provision_webhooks,
)
from audioprep.shared.pull_loop import PullLoop
from audioprep.shared.settings import Settings
from audioprep.shared.webhook_crypto import secret_box
from audioprep.shared.webhook_store import DeliveryStore, EndpointStore

log = logging.getLogger("audioprep.notifier")

FANOUT_CONCURRENCY = 16


async def _ensure_provisioned(js: JetStreamContext, settings: Settings) -> None:
    """A notifier started before `audioprep provision` ran (the first start after an upgrade)
    makes its stream, consumers and bucket itself; an existing setup is left as it is."""
    try:
        await js.stream_info(settings.names.webhooks_stream)
        await js.consumer_info(settings.names.stream, names.NOTIFIER_JOBS_CONSUMER)
        await js.consumer_info(settings.names.webhooks_stream, names.NOTIFIER_DELIVERIES_CONSUMER)
        await js.key_value(settings.names.webhook_endpoints_bucket)
    except (NotFoundError, BucketNotFoundError):
        log.info("webhook stream, consumers or bucket missing: provisioning them")
        await provision_webhooks(js, settings)


async def run_notifier(settings: Settings, stop: asyncio.Event | None = None) -> None:
    stop = stop or asyncio.Event()
    box = secret_box(settings)  # refuses to start without a key outside dev mode
    async with service_deps(settings, "notifier") as deps:
        await _ensure_provisioned(deps.js, settings)
        endpoints = EndpointStore(deps.nc, deps.js, settings.names)
        deliveries = DeliveryStore(deps.nc, deps.js, settings.names)
        payloads = Payloads(
            settings,
            EventStore(deps.nc, deps.js, settings.names),
            await deps.js.key_value(settings.names.jobs_bucket),
            deps.storage,
        )
        sender = Sender(settings)
        deliverer = Deliverer(
            settings=settings,
            endpoints=endpoints,
            deliveries=deliveries,
            payloads=payloads,
            sender=sender,
            box=box,
        )
        grace = settings.webhook_timeout_s + 2.0
        loops = [
            PullLoop(
                deps.js,
                stream=settings.names.stream,
                config=notifier_jobs_consumer_config(settings),
                handler=FanOut(endpoints, deliveries).handle,
                concurrency=FANOUT_CONCURRENCY,
                grace_s=grace,
            ),
            PullLoop(
                deps.js,
                stream=settings.names.webhooks_stream,
                config=notifier_deliveries_consumer_config(settings),
                handler=deliverer.handle,
                concurrency=settings.webhook_concurrency,
                grace_s=grace,
            ),
        ]
        sampler = notifier_metrics.notifier_sampler(deps.js, settings.names)
        try:
            async with metrics.serving(settings.api_host, settings.metrics_port, sampler):
                log.info(
                    "notifier ready",
                    extra={
                        "concurrency": settings.webhook_concurrency,
                        "retry_schedule_s": ",".join(
                            f"{s:g}" for s in settings.webhook_retry_schedule_s
                        ),
                        "retry_for_s": settings.webhook_retry_for_s,
                    },
                )
                await asyncio.gather(*(loop.run(stop) for loop in loops))
        finally:
            await sender.close()
        log.info("notifier stopped")


async def main(settings: Settings) -> None:
    stop = asyncio.Event()
    stop_on_signals(stop)
    await run_notifier(settings, stop)
