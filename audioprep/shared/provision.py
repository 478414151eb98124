"""Idempotent provisioning of the stream, consumers and KV buckets (never at import time)."""

from __future__ import annotations

import logging

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError

from audioprep.domain import kinds
from audioprep.shared import names
from audioprep.shared.settings import Settings

log = logging.getLogger("audioprep.provision")

DUPLICATE_WINDOW_S = 120.0
MAX_ACK_PENDING = 256


def jobs_stream_config(settings: Settings) -> StreamConfig:
    """The log of record: Limits retention so it stays replayable; no deletes, no purges."""
    return StreamConfig(
        name=settings.names.stream,
        subjects=[settings.names.stream_subjects],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=float(settings.stream_max_age_s),
        duplicate_window=DUPLICATE_WINDOW_S,
        num_replicas=settings.stream_replicas,
        allow_direct=True,
        allow_atomic=True,  # a render-cache hit: request + completion in one batch
        deny_delete=True,
        deny_purge=True,
        max_msg_size=1024 * 1024,
    )


def dlq_stream_config(settings: Settings) -> StreamConfig:
    """Captures MAX_DELIVERIES advisories so a job whose worker died on its last try fails."""
    return StreamConfig(
        name=settings.names.dlq_stream,
        subjects=[settings.names.max_deliveries_advisory],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=float(settings.stream_max_age_s),
        num_replicas=settings.stream_replicas,
        allow_direct=True,
    )


def worker_consumer_config(kind: kinds.Kind, settings: Settings) -> ConsumerConfig:
    """Durable pull consumer for one kind's requests."""
    return ConsumerConfig(
        durable_name=names.worker_consumer(kind),
        filter_subject=settings.names.requested_filter(kind),
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=settings.ack_wait_s,
        max_deliver=settings.max_deliver,
        max_ack_pending=MAX_ACK_PENDING,
        num_replicas=settings.stream_replicas,
    )


def dlq_consumer_config(settings: Settings) -> ConsumerConfig:
    """Durable pull consumer the workers share to turn MAX_DELIVERIES advisories into JobFailed."""
    return ConsumerConfig(
        durable_name=names.DLQ_CONSUMER,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=30.0,
        max_deliver=-1,  # a dead letter must never itself be dropped
        max_ack_pending=64,
        num_replicas=settings.stream_replicas,
    )


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.stream_info(config.name or "")
    except NotFoundError:
        await js.add_stream(config)
        log.info("stream created", extra={"stream": config.name})
        return
    try:
        await js.update_stream(config)
    except BadRequestError as exc:
        # Some fields (storage, replicas on a single server) can't change in place; keep going.
        log.warning("stream not updated", extra={"stream": config.name, "error": str(exc)})


async def _ensure_consumer(js: JetStreamContext, stream: str, config: ConsumerConfig) -> None:
    # add_consumer with a durable name creates or updates it (the server does the diff).
    await js.add_consumer(stream, config)


async def _ensure_kv(js: JetStreamContext, config: KeyValueConfig) -> None:
    try:
        await js.key_value(config.bucket)
    except BucketNotFoundError:
        await js.create_key_value(config)
        log.info("kv bucket created", extra={"bucket": config.bucket})


async def _allow_atomic_batches(js: JetStreamContext, stream: str) -> None:
    """Let `projection rebuild` write the view in atomic batches (one fsync per batch)."""
    config = (await js.stream_info(stream)).config
    if config.allow_atomic:
        return
    config.allow_atomic = True
    try:
        await js.update_stream(config)
    except BadRequestError as exc:  # nats-server < 2.12: rebuild writes key by key instead
        log.warning("atomic batches not enabled", extra={"stream": stream, "error": str(exc)})


async def provision(js: JetStreamContext, settings: Settings) -> None:
    """Create or update everything audioprep needs; safe to run any number of times."""
    await _ensure_stream(js, jobs_stream_config(settings))
    await _ensure_stream(js, dlq_stream_config(settings))
    for kind in kinds.KINDS:
        await _ensure_consumer(js, settings.names.stream, worker_consumer_config(kind, settings))
    await _ensure_consumer(js, settings.names.dlq_stream, dlq_consumer_config(settings))
    n = settings.names
    buckets = (n.jobs_bucket, n.projector_state_bucket, n.render_cache_bucket)
    for bucket in buckets:
        config = KeyValueConfig(
            bucket=bucket,
            history=1,
            storage=StorageType.FILE,
            replicas=settings.stream_replicas,
            direct=True,  # gets skip the JSON/base64 API path (poll, projector); CLI default
        )
        await _ensure_kv(js, config)
    await _allow_atomic_batches(js, names.kv_stream(n.jobs_bucket))
    await provision_webhooks(js, settings)
    await provision_presets(js, settings)


# ---- webhooks (docs/webhooks.md) ---------------------------------------------------------------

# Deliveries waiting for a retry stay unacknowledged on the delivery consumer (nak with a delay),
# so its max_ack_pending bounds how many can wait at once across all endpoints.
MAX_PENDING_DELIVERIES = 50_000


def webhooks_stream_config(settings: Settings) -> StreamConfig:
    """Delivery events: append-only like JOBS; kept longer than a delivery can retry."""
    max_age = max(float(settings.webhook_retention_s), settings.webhook_retry_for_s + 3600.0)
    return StreamConfig(
        name=settings.names.webhooks_stream,
        subjects=[settings.names.webhooks_subjects],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=max_age,
        duplicate_window=DUPLICATE_WINDOW_S,
        num_replicas=settings.stream_replicas,
        allow_direct=True,
        deny_delete=True,
        deny_purge=True,
        max_msg_size=64 * 1024,
    )


def notifier_jobs_consumer_config(settings: Settings) -> ConsumerConfig:
    """The notifiers' durable consumer of terminal job events (fan-out to endpoints)."""
    return ConsumerConfig(
        durable_name=names.NOTIFIER_JOBS_CONSUMER,
        filter_subjects=settings.names.terminal_filters(),
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=settings.webhook_ack_wait_s,
        max_deliver=-1,  # a terminal event is never dropped: it is naked until it fans out
        max_ack_pending=1024,
        num_replicas=settings.stream_replicas,
    )


def notifier_deliveries_consumer_config(settings: Settings) -> ConsumerConfig:
    """The notifiers' durable consumer of deliveries to make (one message per delivery, held
    unacknowledged with nak(delay) between attempts)."""
    return ConsumerConfig(
        durable_name=names.NOTIFIER_DELIVERIES_CONSUMER,
        filter_subject=settings.names.deliveries_created_filter(),
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        # past one attempt (the notifier marks the message in progress before it POSTs), so a
        # slow receiver never gets the same delivery from two notifiers at once
        ack_wait=max(settings.webhook_ack_wait_s, settings.webhook_timeout_s + 1.0),
        max_deliver=-1,  # the notifier decides when a delivery has failed for good
        max_ack_pending=MAX_PENDING_DELIVERIES,
        num_replicas=settings.stream_replicas,
    )


async def provision_webhooks(js: JetStreamContext, settings: Settings) -> None:
    """Stream WEBHOOKS, the two notifier consumers and KV bucket webhook_endpoints."""
    await _ensure_stream(js, webhooks_stream_config(settings))
    await _ensure_consumer(js, settings.names.stream, notifier_jobs_consumer_config(settings))
    await _ensure_consumer(
        js, settings.names.webhooks_stream, notifier_deliveries_consumer_config(settings)
    )
    await _ensure_kv(
        js,
        KeyValueConfig(
            bucket=settings.names.webhook_endpoints_bucket,
            history=1,
            storage=StorageType.FILE,
            replicas=settings.stream_replicas,
            direct=True,
        ),
    )


# ---- saved presets (docs/publishing.md) -------------------------------------------------------


async def provision_presets(js: JetStreamContext, settings: Settings) -> None:
    """KV bucket `presets`, with history: a preset's earlier revisions stay readable."""
    await _ensure_kv(
        js,
        KeyValueConfig(
            bucket=settings.names.presets_bucket,
            history=names.PRESETS_HISTORY,
            storage=StorageType.FILE,
            replicas=settings.stream_replicas,
            direct=True,
        ),
    )
