"""Every name on the wire: stream, subjects, consumers, buckets. Nothing else builds them."""

from __future__ import annotations

from typing import Final, Literal, get_args

Kind = Literal["ingest", "preview", "save"]
EventName = Literal[
    "requested",
    "started",
    "progressed",
    "retrying",
    "completed",
    "failed",
    "cancel_requested",
    "cancelled",
]
KINDS: Final[tuple[Kind, ...]] = get_args(Kind)
EVENT_NAMES: Final[tuple[EventName, ...]] = get_args(EventName)

STREAM: Final = "JOBS"
STREAM_SUBJECTS: Final = "jobs.>"
JOBS_BUCKET: Final = "jobs"
RENDER_CACHE_BUCKET: Final = "render_cache"
PROJECTOR_STATE_BUCKET: Final = "projector"
PROJECTOR_CHECKPOINT_KEY: Final = "checkpoint"

DLQ_STREAM: Final = "JOBS_DLQ"
MAX_DELIVERIES_ADVISORY: Final = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.JOBS.>"
DLQ_CONSUMER: Final = "dlq-failer"


_FORBIDDEN_IN_TOKEN: Final = frozenset(". *>\t\r\n")


def check_token(value: str) -> str:
    """Refuse anything that would change a subject's shape (dots, wildcards, spaces)."""
    if not value or any(ch in _FORBIDDEN_IN_TOKEN for ch in value):
        raise ValueError(f"not a subject-safe token: {value!r}")
    return value


def max_deliveries_advisory(consumer: str) -> str:
    """Where JetStream announces that `consumer` of stream JOBS gave up on a message (and
    where the dead-letter reconciler records one whose advisory was missed)."""
    return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{STREAM}.{check_token(consumer)}"


def event_subject(kind: Kind, job_id: str, event: EventName) -> str:
    """`jobs.<kind>.<job_id>.<event>`."""
    return f"jobs.{kind}.{check_token(job_id)}.{event}"


def job_subjects(job_id: str) -> str:
    """Every event of one job, whatever its kind: `jobs.*.<id>.>`."""
    return f"jobs.*.{check_token(job_id)}.>"


def job_event_any_kind(job_id: str, event: EventName) -> str:
    """One event name of one job, whatever its kind."""
    return f"jobs.*.{check_token(job_id)}.{event}"


def requested_filter(kind: Kind) -> str:
    """What a worker consumer for `kind` takes: `jobs.<kind>.*.requested`."""
    return f"jobs.{kind}.*.requested"


def cancel_requested_filter() -> str:
    """Every cancel request, for running workers to listen to."""
    return "jobs.*.*.cancel_requested"


def kind_filter(kind: Kind | None) -> str:
    """All events of one kind (or of every kind)."""
    return f"jobs.{kind}.>" if kind else STREAM_SUBJECTS


def worker_consumer(kind: Kind) -> str:
    """Durable pull consumer name for a kind's workers."""
    return f"workers-{kind}"


def parse_subject(subject: str) -> tuple[Kind, str, EventName]:
    """Split a job event subject into (kind, job_id, event)."""
    parts = subject.split(".")
    if len(parts) != 4 or parts[0] != "jobs":
        raise ValueError(f"not a job event subject: {subject}")
    kind, job_id, event = parts[1], parts[2], parts[3]
    if kind not in KINDS or event not in EVENT_NAMES:
        raise ValueError(f"not a job event subject: {subject}")
    return kind, job_id, event


# ---- webhooks (docs/webhooks.md) ---------------------------------------------------------------
# Stream WEBHOOKS keeps one subject per delivery and event:
# `webhooks.<endpointId>.<deliveryId>.<event>`; JOBS stays the job history.
WebhookEventName = Literal["created", "attempted"]
WEBHOOK_EVENT_NAMES: Final[tuple[WebhookEventName, ...]] = get_args(WebhookEventName)
WEBHOOKS_STREAM: Final = "WEBHOOKS"
WEBHOOKS_SUBJECTS: Final = "webhooks.>"
WEBHOOK_ENDPOINTS_BUCKET: Final = "webhook_endpoints"
NOTIFIER_JOBS_CONSUMER: Final = "notifier-jobs"
NOTIFIER_DELIVERIES_CONSUMER: Final = "notifier-deliveries"
TERMINAL_EVENT_NAMES: Final[tuple[EventName, ...]] = ("completed", "failed", "cancelled")


def terminal_filters() -> list[str]:
    """What the notifier's JOBS consumer takes: every job's terminal event."""
    return [f"jobs.*.*.{name}" for name in TERMINAL_EVENT_NAMES]


def webhook_subject(endpoint_id: str, delivery_id: str, event: WebhookEventName) -> str:
    """`webhooks.<endpointId>.<deliveryId>.<event>`."""
    return f"webhooks.{check_token(endpoint_id)}.{check_token(delivery_id)}.{event}"


def delivery_subjects(endpoint_id: str, delivery_id: str) -> str:
    """Every event of one delivery."""
    return f"webhooks.{check_token(endpoint_id)}.{check_token(delivery_id)}.>"


def endpoint_delivery_subjects(endpoint_id: str) -> str:
    """Every event of every delivery of one endpoint."""
    return f"webhooks.{check_token(endpoint_id)}.>"


def deliveries_created_filter() -> str:
    """What the notifier's delivery consumer takes: one message per delivery to make."""
    return "webhooks.*.*.created"


def webhook_endpoint_key(tenant: str, endpoint_id: str) -> str:
    """KV key of an endpoint: `<tenant>.<endpointId>`, so a tenant's keys share a prefix."""
    return f"{check_token(tenant)}.{check_token(endpoint_id)}"


def parse_webhook_subject(subject: str) -> tuple[str, str, WebhookEventName]:
    """Split `webhooks.<endpointId>.<deliveryId>.<event>`."""
    parts = subject.split(".")
    if len(parts) != 4 or parts[0] != "webhooks" or parts[3] not in WEBHOOK_EVENT_NAMES:
        raise ValueError(f"not a webhook subject: {subject}")
    return parts[1], parts[2], parts[3]


# ---- saved presets (docs/publishing.md) -------------------------------------------------------
# KV bucket `presets`: one key per tenant and preset name, `<tenant>.<name>`, history kept so
# every revision a job was made from can still be read.
PRESETS_BUCKET: Final = "presets"
PRESETS_HISTORY: Final = 16


def preset_key(tenant: str, name: str) -> str:
    """KV key of a saved preset: `<tenant>.<name>` (names are `[A-Za-z0-9_-]`, checked first)."""
    return f"{check_token(tenant)}.{check_token(name)}"
