"""The notifier's Prometheus metrics (served on AUDIOPREP_METRICS_PORT like workers')."""

from __future__ import annotations

from nats.js import JetStreamContext
from prometheus_client import Counter, Gauge, Histogram

from audioprep.shared import names
from audioprep.shared.metrics import Sampler, sample_stream
from audioprep.shared.names import Names

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400)

CREATED = Counter(
    "audioprep_webhook_deliveries_scheduled", "Deliveries created (one per endpoint and job end)"
)
ATTEMPTS = Counter(
    "audioprep_webhook_attempts",
    "Delivery attempts by outcome (delivered, retrying, failed) and error code",
    ["outcome", "code"],
)
ENDED = Counter(
    "audioprep_webhook_deliveries_ended",
    "Deliveries that ended, by outcome (delivered, failed)",
    ["outcome"],
)
LATENCY = Histogram(
    "audioprep_webhook_latency_seconds",
    "Time from a job's terminal event to the receiver's 2xx (retries included; replays not)",
    buckets=_LATENCY_BUCKETS,
)
ATTEMPT_SECONDS = Histogram(
    "audioprep_webhook_attempt_seconds",
    "Duration of one HTTP attempt (DNS, connect, request, response head)",
    buckets=_LATENCY_BUCKETS[:11],
)
IN_FLIGHT = Gauge("audioprep_webhook_in_flight", "HTTP attempts this notifier is making now")
QUEUE_PENDING = Gauge(
    "audioprep_webhook_queue_pending",
    "Messages not yet delivered to a notifier, by consumer (jobs: terminal events to fan out; "
    "deliveries: deliveries to make)",
    ["consumer"],
)
QUEUE_ACK_PENDING = Gauge(
    "audioprep_webhook_queue_ack_pending",
    "Messages held by notifiers, by consumer (for deliveries: in flight or waiting to retry)",
    ["consumer"],
)
ENDPOINTS_DISABLED = Counter(
    "audioprep_webhook_endpoints_disabled", "Endpoints disabled by the notifier", ["reason"]
)


def attempt(outcome: str, code: str | None) -> None:
    ATTEMPTS.labels(outcome, code or "ok").inc()
    if outcome != "retrying":
        ENDED.labels(outcome).inc()


async def sample_queues(js: JetStreamContext, n: Names) -> None:
    for stream, consumer, label in (
        (n.stream, names.NOTIFIER_JOBS_CONSUMER, "jobs"),
        (n.webhooks_stream, names.NOTIFIER_DELIVERIES_CONSUMER, "deliveries"),
    ):
        info = await js.consumer_info(stream, consumer)
        QUEUE_PENDING.labels(label).set(info.num_pending or 0)
        QUEUE_ACK_PENDING.labels(label).set(info.num_ack_pending or 0)


def notifier_sampler(js: JetStreamContext, n: Names) -> Sampler:
    async def sample() -> None:
        await sample_queues(js, n)
        await sample_stream(js, n)

    return sample
