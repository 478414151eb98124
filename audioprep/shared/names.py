"""The name table: every stream, subject, consumer, bucket and KV key on the wire. Nothing else
builds one (docs/architecture.md, "Names").

All names come from one prefix (`Settings.names`, env `AUDIOPREP_NAME_PREFIX`). The default,
no prefix, gives the names operators see in natscli: stream `JOBS`, subjects
`jobs.<kind>.<jobId>.<event>`, KV bucket `jobs`, … A prefix `p` gives stream `p_JOBS`, subjects
`p.jobs.…`, bucket `p_jobs`, so several deployments (or test suites) share one nats-server
without seeing each other. Consumer names are scoped by their stream and stay unprefixed.
"""

from __future__ import annotations

import re
from typing import Final, Literal, get_args

from audioprep.domain.kinds import EVENT_NAMES, KINDS, TERMINAL_EVENT_NAMES, EventName, Kind

_PREFIX = re.compile(r"^[A-Za-z0-9_-]{0,32}$")
_FORBIDDEN_IN_TOKEN: Final = frozenset(". *>\t\r\n")

WebhookEventName = Literal["created", "attempted"]
WEBHOOK_EVENT_NAMES: Final[tuple[WebhookEventName, ...]] = get_args(WebhookEventName)

# Keys inside buckets (the bucket itself carries the prefix)
PROJECTOR_CHECKPOINT_KEY: Final = "checkpoint"
# KV `scheduler`: where the dispatcher resumes; KV `scheduler_lease`: who dispatches now
SCHEDULER_CHECKPOINT_KEY: Final = "checkpoint"
SCHEDULER_LEASE_KEY: Final = "leader"
# KV `presets` keeps this many revisions of each preset, so a job's preset can still be read
PRESETS_HISTORY: Final = 16
# Render-cache coalescing markers live beside the cache entries (audioprep.services.api.previews)
_RENDER_MARKER_PREFIX: Final = "inflight."
_RENDER_ALIAS_PREFIX: Final = "alias."

# Durable consumers (per stream)
DLQ_CONSUMER: Final = "dlq-failer"
NOTIFIER_JOBS_CONSUMER: Final = "notifier-jobs"
NOTIFIER_DELIVERIES_CONSUMER: Final = "notifier-deliveries"
_WORKER_CONSUMER_PREFIX: Final = "workers-"


def check_token(value: str) -> str:
    """Refuse anything that would change a subject's shape (dots, wildcards, spaces)."""
    if not value or not _FORBIDDEN_IN_TOKEN.isdisjoint(value):
        raise ValueError(f"not a subject-safe token: {value!r}")
    return value


def worker_consumer(kind: Kind) -> str:
    """Durable pull consumer name for a kind's workers (on the jobs stream)."""
    return f"{_WORKER_CONSUMER_PREFIX}{kind}"


def worker_consumer_kind(consumer: str) -> Kind | None:
    """The kind a worker consumer serves, or None for any other consumer."""
    kind = consumer.removeprefix(_WORKER_CONSUMER_PREFIX)
    if kind == consumer:
        return None
    for known in KINDS:
        if known == kind:
            return known
    return None


def webhook_endpoint_key(tenant: str, endpoint_id: str) -> str:
    """KV key of an endpoint: `<tenant>.<endpointId>`, so a tenant's keys share a prefix."""
    return f"{check_token(tenant)}.{check_token(endpoint_id)}"


def tenant_keys(tenant: str) -> str:
    """KV key filter for every key of one tenant (`<tenant>.*`)."""
    return f"{check_token(tenant)}.*"


def preset_key(tenant: str, name: str) -> str:
    """KV key of a saved preset: `<tenant>.<name>` (names are `[A-Za-z0-9_-]`, checked first)."""
    return f"{check_token(tenant)}.{check_token(name)}"


def render_marker_key(cache_key: str) -> str:
    """KV `render_cache` key of the marker that coalesces concurrent misses of one cache key."""
    return f"{_RENDER_MARKER_PREFIX}{cache_key}"


def render_alias_key(job_id: str) -> str:
    """KV `render_cache` key recording that an idempotent preview request joined another job
    (value: `<joined job id> <request fingerprint>`)."""
    return f"{_RENDER_ALIAS_PREFIX}{check_token(job_id)}"


def usage_key(day: str, tenant: str) -> str:
    """KV `usage` key of one tenant's day: `<yyyy-mm-dd>.<tenant>` (a day's keys share a prefix)."""
    return f"{check_token(day)}.{check_token(tenant)}"


def usage_day_keys(day: str) -> str:
    """KV `usage` key filter for every tenant of one day."""
    return f"{check_token(day)}.*"


def kv_stream(bucket: str) -> str:
    """The stream behind a KV bucket (NATS KV convention, ADR-8)."""
    return f"KV_{bucket}"


def kv_subject(bucket: str, key: str) -> str:
    """The subject a KV key is stored under (`$KV.<bucket>.<key>`)."""
    return f"$KV.{bucket}.{key}"


def kv_keys_subjects(bucket: str) -> str:
    """Every key of a bucket, as subjects (`$KV.<bucket>.>`): what a writer of it publishes to."""
    return f"$KV.{bucket}.>"


# ---- JetStream API subjects --------------------------------------------------------------------
# What nats-py sends for each call, named here so that the NATS permissions
# (audioprep/shared/nats_permissions.py) are built from the same table as everything else.
# `consumer` may be "*" in a permission (any consumer of that stream).

_JS_API: Final = "$JS.API"


def direct_get_subject(stream: str) -> str:
    """The JetStream direct-get API subject of a stream (by sequence, batches, multi_last)."""
    return f"{_JS_API}.DIRECT.GET.{stream}"


def direct_get_last_subjects(stream: str) -> str:
    """Direct get of the last message on a subject, named in the request subject
    (`$JS.API.DIRECT.GET.<stream>.<subject>`: what nats-py's KV get and get_last_msg send)."""
    return f"{_JS_API}.DIRECT.GET.{stream}.>"


def account_info_subject() -> str:
    """JetStream account info (`js.account_info()`, readiness checks)."""
    return f"{_JS_API}.INFO"


def stream_info_subject(stream: str) -> str:
    """Stream info (also what `js.key_value(bucket)` sends for the bucket's stream)."""
    return f"{_JS_API}.STREAM.INFO.{stream}"


def stream_delete_subject(stream: str) -> str:
    return f"{_JS_API}.STREAM.DELETE.{stream}"


def stream_purge_subject(stream: str) -> str:
    return f"{_JS_API}.STREAM.PURGE.{stream}"


def msg_get_subject(stream: str) -> str:
    """Get one stored message through the API (KV gets when direct get is off)."""
    return f"{_JS_API}.STREAM.MSG.GET.{stream}"


def msg_delete_subject(stream: str) -> str:
    return f"{_JS_API}.STREAM.MSG.DELETE.{stream}"


def consumer_create_subject(stream: str) -> str:
    """Create an unnamed (ephemeral, ordered) consumer; NATS can't restrict it by name."""
    return f"{_JS_API}.CONSUMER.CREATE.{stream}"


def durable_create_subject(stream: str, durable: str) -> str:
    """Create or update a durable consumer, the name in the subject (nats-py's add_consumer)."""
    return f"{_JS_API}.CONSUMER.DURABLE.CREATE.{stream}.{durable}"


def consumer_delete_subject(stream: str, consumer: str) -> str:
    return f"{_JS_API}.CONSUMER.DELETE.{stream}.{consumer}"


def consumer_info_subject(stream: str, consumer: str) -> str:
    return f"{_JS_API}.CONSUMER.INFO.{stream}.{consumer}"


def consumer_next_subject(stream: str, consumer: str) -> str:
    """Pull request of a pull consumer (`fetch`)."""
    return f"{_JS_API}.CONSUMER.MSG.NEXT.{stream}.{consumer}"


def ack_subjects(stream: str, consumer: str) -> str:
    """Where acks, naks, in-progress and terms of a consumer's messages go."""
    return f"$JS.ACK.{stream}.{consumer}.>"


def flow_control_subjects(stream: str) -> str:
    """Flow-control replies of push (ordered) consumers on a stream."""
    return f"$JS.FC.{stream}.>"


def stream_leader_stepdown_subject(stream: str) -> str:
    """The JetStream API subject asking a clustered stream's leader to step down (what
    `nats stream cluster step-down` sends; a KV bucket's stream is `kv_stream(bucket)`)."""
    return f"$JS.API.STREAM.LEADER.STEPDOWN.{check_token(stream)}"


class Names:
    """Every prefixed name of one deployment. Built once (in `Settings`), then only read."""

    __slots__ = (
        "_jobs",
        "_webhooks",
        "dlq_stream",
        "jobs_bucket",
        "max_deliveries_advisory",
        "prefix",
        "presets_bucket",
        "projector_state_bucket",
        "render_cache_bucket",
        "scheduler_admit_subject",
        "scheduler_bucket",
        "scheduler_lease_bucket",
        "scheduler_position_subject",
        "scheduler_status_subject",
        "stream",
        "stream_subjects",
        "usage_bucket",
        "webhook_endpoints_bucket",
        "webhooks_stream",
        "webhooks_subjects",
    )

    def __init__(self, prefix: str = "") -> None:
        if not _PREFIX.match(prefix):
            raise ValueError(f"name prefix must be up to 32 of [A-Za-z0-9_-]: {prefix!r}")
        self.prefix = prefix
        subject = f"{prefix}." if prefix else ""
        name = f"{prefix}_" if prefix else ""
        self._jobs = f"{subject}jobs"
        self._webhooks = f"{subject}webhooks"
        # stream JOBS: the one history of every job
        self.stream = f"{name}JOBS"
        self.stream_subjects = f"{self._jobs}.>"
        # KV buckets
        self.jobs_bucket = f"{name}jobs"
        self.render_cache_bucket = f"{name}render_cache"
        self.projector_state_bucket = f"{name}projector"
        self.webhook_endpoints_bucket = f"{name}webhook_endpoints"
        self.presets_bucket = f"{name}presets"
        # fair dispatch (docs/fairness.md): checkpoint, leader lease, per-tenant daily usage,
        # and the core request subjects the dispatcher answers (admission, queue position)
        self.scheduler_bucket = f"{name}scheduler"
        self.scheduler_lease_bucket = f"{name}scheduler_lease"
        self.usage_bucket = f"{name}usage"
        self.scheduler_admit_subject = f"{subject}scheduler.admit"
        self.scheduler_position_subject = f"{subject}scheduler.position"
        self.scheduler_status_subject = f"{subject}scheduler.status"
        # dead letters: the server's MAX_DELIVERIES advisories for the jobs stream
        self.dlq_stream = f"{name}JOBS_DLQ"
        self.max_deliveries_advisory = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{self.stream}.>"
        # stream WEBHOOKS: `webhooks.<endpointId>.<deliveryId>.<event>`
        self.webhooks_stream = f"{name}WEBHOOKS"
        self.webhooks_subjects = f"{self._webhooks}.>"

    def __repr__(self) -> str:
        return f"Names(prefix={self.prefix!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Names) and other.prefix == self.prefix

    def __hash__(self) -> int:
        return hash(self.prefix)

    # ---- JOBS subjects -------------------------------------------------------------------------

    def max_deliveries_advisory_of(self, consumer: str) -> str:
        """Where JetStream announces that `consumer` of the jobs stream gave up on a message
        (and where the dead-letter reconciler records one whose advisory was missed)."""
        return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{self.stream}.{check_token(consumer)}"

    def event_subject(self, kind: Kind, job_id: str, event: EventName) -> str:
        """`jobs.<kind>.<job_id>.<event>`."""
        return f"{self._jobs}.{kind}.{check_token(job_id)}.{event}"

    def job_subjects(self, job_id: str) -> str:
        """Every event of one job, whatever its kind: `jobs.*.<id>.>`."""
        return f"{self._jobs}.*.{check_token(job_id)}.>"

    def job_event_any_kind(self, job_id: str, event: EventName) -> str:
        """One event name of one job, whatever its kind."""
        return f"{self._jobs}.*.{check_token(job_id)}.{event}"

    def requested_filter(self, kind: Kind | None = None) -> str:
        """What a worker consumer for `kind` takes: `jobs.<kind>.*.requested` (None: any kind)."""
        return f"{self._jobs}.{kind or '*'}.*.requested"

    def released_filter(self, kind: Kind | None = None) -> str:
        """What a worker consumer takes under fair dispatch: `jobs.<kind>.*.released`."""
        return f"{self._jobs}.{kind or '*'}.*.released"

    def dispatch_filters(self) -> list[str]:
        """Every job event the dispatcher folds: all but progress (the busiest, and no news)."""
        return [f"{self._jobs}.*.*.{name}" for name in EVENT_NAMES if name != "progressed"]

    def cancel_requested_filter(self) -> str:
        """Every cancel request, for running workers to listen to."""
        return f"{self._jobs}.*.*.cancel_requested"

    def event_filter(self, event: EventName, kind: Kind | None = None) -> str:
        """One event name of every job (of one kind or of all): `jobs.<kind|*>.*.<event>`."""
        return f"{self._jobs}.{kind or '*'}.*.{event}"

    def every_job_event(self) -> str:
        """Every job event subject (`jobs.*.*.>`): what a per-job subscription falls under."""
        return f"{self._jobs}.*.*.>"

    def kind_filter(self, kind: Kind | None) -> str:
        """All events of one kind (or of every kind)."""
        return f"{self._jobs}.{kind}.>" if kind else self.stream_subjects

    def terminal_filters(self) -> list[str]:
        """Every job's terminal event (the notifier's JOBS consumer)."""
        return [f"{self._jobs}.*.*.{name}" for name in TERMINAL_EVENT_NAMES]

    def parse_subject(self, subject: str) -> tuple[Kind, str, EventName]:
        """Split a job event subject into (kind, job_id, event)."""
        rest = subject.removeprefix(f"{self._jobs}.")
        parts = rest.split(".")
        if rest == subject or len(parts) != 3:
            raise ValueError(f"not a job event subject: {subject}")
        kind, job_id, event = parts
        for known_kind in KINDS:
            if known_kind == kind:
                for known_event in EVENT_NAMES:
                    if known_event == event:
                        return known_kind, job_id, known_event
        raise ValueError(f"not a job event subject: {subject}")

    # ---- WEBHOOKS subjects (docs/webhooks.md) --------------------------------------------------

    def webhook_subject(self, endpoint_id: str, delivery_id: str, event: WebhookEventName) -> str:
        """`webhooks.<endpointId>.<deliveryId>.<event>`."""
        return f"{self._webhooks}.{check_token(endpoint_id)}.{check_token(delivery_id)}.{event}"

    def delivery_subjects(self, endpoint_id: str, delivery_id: str) -> str:
        """Every event of one delivery."""
        return f"{self._webhooks}.{check_token(endpoint_id)}.{check_token(delivery_id)}.>"

    def endpoint_delivery_subjects(self, endpoint_id: str) -> str:
        """Every event of every delivery of one endpoint."""
        return f"{self._webhooks}.{check_token(endpoint_id)}.>"

    def webhook_event_filter(self, event: WebhookEventName) -> str:
        """One webhook event name of every delivery: `webhooks.*.*.<event>`."""
        return f"{self._webhooks}.*.*.{event}"

    def deliveries_created_filter(self) -> str:
        """What the notifier's delivery consumer takes: one message per delivery to make."""
        return f"{self._webhooks}.*.*.created"

    def parse_webhook_subject(self, subject: str) -> tuple[str, str, WebhookEventName]:
        """Split `webhooks.<endpointId>.<deliveryId>.<event>`."""
        rest = subject.removeprefix(f"{self._webhooks}.")
        parts = rest.split(".")
        if rest != subject and len(parts) == 3:
            for known in WEBHOOK_EVENT_NAMES:
                if known == parts[2]:
                    return parts[0], parts[1], known
        raise ValueError(f"not a webhook subject: {subject}")
