"""Least-privilege NATS users, one per service, built from the name table (docs/security.md).

Each service user is allowed the subjects its code sends to and listens on, and nothing else;
every grant carries its reason, which `render_config` writes into the config as a comment.
`audioprep nats-config` prints the config for the configured prefix; `deploy/nats-prod.conf` is
its output for the default prefix (tests/unit/test_nats_config.py fails when the two differ).

Users are named after their role (`api`, `worker`, …); a prefixed deployment's are
`<prefix>-<role>`, so several deployments on one server keep apart. Every service uses the
inbox prefix `_INBOX.<user>` (nats_conn.py), so no user can read another's replies.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal, get_args

from audioprep.domain.kinds import KINDS
from audioprep.shared import names
from audioprep.shared.names import Names
from audioprep.shared.nats_conn import user_inbox_prefix

Role = Literal["admin", "api", "worker", "projector", "notifier"]
ROLES: Final[tuple[Role, ...]] = get_args(Role)
REGENERATE: Final = "audioprep nats-config > deploy/nats-prod.conf"
_ENV_UNSAFE: Final = re.compile(r"[^A-Z0-9_]")


@dataclass(frozen=True, slots=True)
class Grant:
    """Subjects allowed for one reason."""

    reason: str
    subjects: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ServiceUser:
    """One NATS user: what it is for, what it may publish and subscribe to."""

    role: Role
    user: str
    password_env: str
    summary: str
    publish: tuple[Grant, ...]
    subscribe: tuple[Grant, ...]
    allow_responses: bool = False  # may answer requests it received (their reply subject only)
    everything: bool = False  # `>` for both (the operator's user)

    def publish_subjects(self) -> list[str]:
        return _flatten(self.publish)

    def subscribe_subjects(self) -> list[str]:
        return _flatten(self.subscribe)


def _flatten(grants: Iterable[Grant]) -> list[str]:
    seen: dict[str, None] = {}
    for grant in grants:
        for subject in grant.subjects:
            seen.setdefault(subject, None)
    return list(seen)


def user_name(n: Names, role: Role) -> str:
    """`api` for the default prefix, `<prefix>-api` for a prefixed deployment."""
    return f"{n.prefix}-{role}" if n.prefix else role


def password_env(n: Names, role: Role) -> str:
    """`AUDIOPREP_NATS_API_PASSWORD`, `AUDIOPREP_NATS_<PREFIX>_API_PASSWORD` with a prefix."""
    middle = f"{n.prefix}_{role}" if n.prefix else role
    return f"AUDIOPREP_NATS_{_ENV_UNSAFE.sub('_', middle.upper())}_PASSWORD"


# ---- grant builders: one place per kind of access ----------------------------------------------


def _grant(reason: str, *subjects: str) -> Grant:
    return Grant(reason, subjects)


def _stream_read(stream: str, reason: str) -> Grant:
    """Stream info and direct gets (by sequence, batched `next_by_subj`, last on a subject)."""
    return _grant(
        reason,
        names.stream_info_subject(stream),
        names.direct_get_subject(stream),
        names.direct_get_last_subjects(stream),
    )


def _kv_read(bucket: str, reason: str) -> Grant:
    """Open a bucket (stream info) and get keys (direct get, or the API's message get)."""
    stream = names.kv_stream(bucket)
    return _grant(
        reason,
        names.stream_info_subject(stream),
        names.direct_get_subject(stream),
        names.direct_get_last_subjects(stream),
        names.msg_get_subject(stream),
    )


def _kv_write(bucket: str, reason: str) -> Grant:
    """Read a bucket and put, create, update (CAS) and delete its keys."""
    read = _kv_read(bucket, reason)
    return Grant(reason, (*read.subjects, names.kv_keys_subjects(bucket)))


def _ordered_consumer(stream: str, reason: str) -> Grant:
    """An ephemeral ordered consumer (created unnamed) and its flow-control replies."""
    return _grant(
        reason, names.consumer_create_subject(stream), names.flow_control_subjects(stream)
    )


def _kv_list(bucket: str) -> Grant:
    """shared/kv_read.py's fallback when one direct get can't answer a listing (more than 1024
    keys, or the replica that answered was behind the leader): an ordered consumer on the
    bucket's stream. Unlike nats-py's KV watch it needs no consumer info."""
    return _ordered_consumer(
        names.kv_stream(bucket),
        "a listing one direct get can't answer reads the bucket's stream with an ordered "
        "consumer (shared/kv_read.py)",
    )


def _durable_pull(stream: str, consumers: Sequence[str], reason: str) -> Grant:
    """Info, fetch and ack (ack, nak, in-progress, term) on existing durable pull consumers;
    no create, update or delete."""
    subjects: list[str] = []
    for consumer in consumers:
        subjects += [
            names.consumer_info_subject(stream, consumer),
            names.consumer_next_subject(stream, consumer),
            names.ack_subjects(stream, consumer),
        ]
    return Grant(reason, tuple(subjects))


def _inbox(user: str) -> Grant:
    return _grant(
        "replies to this user's requests (JetStream API answers, acks, direct gets), "
        "on its own inbox prefix",
        f"{user_inbox_prefix(user)}.>",
    )


# ---- the users ---------------------------------------------------------------------------------


def _admin(n: Names) -> ServiceUser:
    return ServiceUser(
        role="admin",
        user=user_name(n, "admin"),
        password_env=password_env(n, "admin"),
        summary="Provisioning (`audioprep provision` / `audioprep up`), `audioprep projection "
        "rebuild`, operator commands and natscli: everything, on the whole server.",
        publish=(_grant("everything", ">"),),
        subscribe=(_grant("everything", ">"),),
        everything=True,
    )


def _api(n: Names) -> ServiceUser:
    user = user_name(n, "api")
    worker_consumers = [names.worker_consumer(kind) for kind in KINDS]
    return ServiceUser(
        role="api",
        user=user,
        password_env=password_env(n, "api"),
        summary="The HTTP API: creates jobs and cancel requests, reads job events (poll "
        "fallback, SSE, idempotent replays) and the views, answers render-cache hits, keeps "
        "webhook endpoints and presets; never writes a view, never starts, fails or retries a "
        "job. It creates no consumer on a stream with durables: SSE reads by direct get and "
        "waits on a core subscription, so it can't touch the worker consumers.",
        publish=(
            _grant(
                "new jobs (JobRequested, create-once) and cancel requests",
                n.event_filter("requested"),
                n.event_filter("cancel_requested"),
            ),
            _grant(
                "a render-cache hit is answered by the API itself: JobRequested + JobCompleted "
                "of a preview, in one atomic batch",
                n.event_filter("completed", "preview"),
            ),
            _stream_read(
                n.stream,
                "a job's events by direct get (poll before the projector caught up, SSE from "
                "the last id sent, idempotent replays); stream info for the stream's end when "
                "a webhook is registered and for /metrics",
            ),
            _kv_read(n.jobs_bucket, "the job views (KV jobs): read only"),
            _ordered_consumer(
                names.kv_stream(n.jobs_bucket),
                "polls read a watch-fed copy of the views (shared/view_cache.py): an ordered "
                "consumer on the views' stream",
            ),
            _kv_write(
                n.render_cache_bucket,
                "render cache: hits, the markers that coalesce identical previews in flight "
                "and idempotent replays, dropping entries whose file is gone",
            ),
            _grant(
                "/metrics: queue depth (read-only info of the worker consumers)",
                *(names.consumer_info_subject(n.stream, c) for c in worker_consumers),
            ),
            _kv_read(
                n.projector_state_bucket,
                "/metrics: the projector's checkpoint (read only), so a stuck projector shows",
            ),
            _grant(
                "fair dispatch: ask the leading dispatcher about tenant limits and queue "
                "positions (core request/reply)",
                n.scheduler_admit_subject,
                n.scheduler_position_subject,
            ),
            _kv_read(
                n.usage_bucket,
                "GET /api/usage: the usage projection (read only); an admin key's all-tenant "
                "read of a day asks the leader for its last revision (message get), then one "
                "multi_last direct get (shared/kv_read.py)",
            ),
            _kv_list(n.usage_bucket),
            _kv_write(
                n.webhook_endpoints_bucket,
                "webhook endpoints: register, rotate the secret, enable, delete (CAS), and list "
                "a tenant's (the leader's last revision, then a multi_last direct get)",
            ),
            _kv_list(n.webhook_endpoints_bucket),
            _stream_read(
                n.webhooks_stream,
                "a webhook's deliveries and their attempts: the fold of its events in WEBHOOKS "
                "(batched direct get)",
            ),
            _grant(
                "a replay is a new delivery (DeliveryCreated, create-once)",
                n.webhook_event_filter("created"),
            ),
            _kv_write(
                n.presets_bucket,
                "saved presets: create, replace (CAS), delete, read one when a preview or save "
                "names it, and list a tenant's (the leader's last revision, then a multi_last "
                "direct get)",
            ),
            _kv_list(n.presets_bucket),
        ),
        subscribe=(
            _inbox(user),
            _grant(
                "SSE wake-ups: a core subscription on one job's subjects (jobs.*.<id>.>), the "
                "same events direct get reads; `jobs.>` is refused",
                n.every_job_event(),
            ),
        ),
    )


def _worker(n: Names) -> ServiceUser:
    user = user_name(n, "worker")
    worker_consumers = [names.worker_consumer(kind) for kind in KINDS]
    return ServiceUser(
        role="worker",
        user=user,
        password_env=password_env(n, "worker"),
        summary="Workers: take released requests from their kinds' durable consumers, publish "
        "the job's progress and outcome, watch cancel requests, fill the render cache, turn "
        "MAX_DELIVERIES advisories into JobFailed; they read the stream, no view. Every worker "
        "also runs the fair dispatcher (docs/fairness.md): the leading one folds the job "
        "events by direct get, releases requests, cancels jobs nobody started, keeps its "
        "lease, checkpoint and the usage projection in KV and answers the API's questions. "
        "No stream or consumer management.",
        publish=(
            _grant(
                "the dispatcher releases waiting requests (JobReleased, once per request)",
                n.event_filter("released"),
            ),
            _grant(
                "a job's run and its end-once outcome; JobFailed from the dead-letter failer; "
                "JobCancelled also by the dispatcher for a job nobody started",
                *(
                    n.event_filter(event)
                    for event in (
                        "started",
                        "progressed",
                        "retrying",
                        "completed",
                        "failed",
                        "cancelled",
                    )
                ),
            ),
            _stream_read(
                n.stream,
                "job events by direct get: the dispatcher's fold, a render's source facts (the "
                "ingest's JobCompleted), a redelivered job's history; stream info for /metrics "
                "and the dead-letter reconciler",
            ),
            _grant(
                "a released job's request from the stream's leader when a direct get (any "
                "replica) says it is not there (a replica catching up)",
                names.msg_get_subject(n.stream),
            ),
            _durable_pull(n.stream, worker_consumers, "take work: the worker consumers"),
            _stream_read(n.dlq_stream, "dead letters: the MAX_DELIVERIES advisories"),
            _durable_pull(n.dlq_stream, [names.DLQ_CONSUMER], "the dead-letter failer's consumer"),
            _grant(
                "the dead-letter reconciler records a dead letter whose advisory was missed, "
                "and the failer removes an advisory JetStream fired twice (docs/reliability.md)",
                *(n.max_deliveries_advisory_of(c) for c in worker_consumers),
                names.msg_delete_subject(n.dlq_stream),
            ),
            _kv_write(n.render_cache_bucket, "render cache: a finished preview is recorded"),
            _kv_write(n.scheduler_bucket, "the dispatcher's checkpoint"),
            _kv_write(n.scheduler_lease_bucket, "the dispatcher's leader lease (CAS, expiring)"),
            _kv_write(n.usage_bucket, "the usage projection, written by the leading dispatcher"),
        ),
        subscribe=(
            _inbox(user),
            _grant("cancel requests reach the worker running the job", n.cancel_requested_filter()),
            _grant(
                "the dispatcher's nudges: every job event but progress (it reads by direct "
                "get, no consumer)",
                *n.dispatch_filters(),
            ),
            _grant(
                "the dispatcher's questions (only the leading one answers, in a queue group)",
                n.scheduler_admit_subject,
                n.scheduler_position_subject,
                n.scheduler_status_subject,
            ),
        ),
        allow_responses=True,  # the dispatcher answers to the asker's inbox
    )


def _projector(n: Names) -> ServiceUser:
    user = user_name(n, "projector")
    return ServiceUser(
        role="projector",
        user=user,
        password_env=password_env(n, "projector"),
        summary="The projector: reads the whole stream in order (ordered consumer) and writes "
        "the views and its checkpoint. It publishes no job event.",
        publish=(
            _stream_read(n.stream, "stream info (where to resume, lag) and direct gets"),
            _ordered_consumer(n.stream, "the whole stream in order: an ordered consumer"),
            _kv_write(n.jobs_bucket, "the views: written only by the projector, with CAS"),
            _kv_write(n.projector_state_bucket, "its checkpoint"),
        ),
        subscribe=(_inbox(user),),
    )


def _notifier(n: Names) -> ServiceUser:
    user = user_name(n, "notifier")
    return ServiceUser(
        role="notifier",
        user=user,
        password_env=password_env(n, "notifier"),
        summary="The notifier (docs/webhooks.md): takes terminal job events from its consumer "
        "on JOBS, creates one delivery per interested endpoint in WEBHOOKS, makes the "
        "deliveries from its consumer there and records every attempt; keeps endpoint health "
        "in KV. No job event, no stream or consumer management.",
        publish=(
            _stream_read(
                n.stream,
                "a payload is the job's view folded from its events (batched direct get); "
                "stream info for /metrics",
            ),
            _durable_pull(n.stream, [names.NOTIFIER_JOBS_CONSUMER], "fan-out: terminal job events"),
            _kv_read(n.jobs_bucket, "the view from KV once a job's events aged out (read only)"),
            _stream_read(
                n.webhooks_stream,
                "a delivery's events, folded before every attempt; stream info at start (is "
                "it provisioned?)",
            ),
            _durable_pull(
                n.webhooks_stream,
                [names.NOTIFIER_DELIVERIES_CONSUMER],
                "deliveries to make (held unacknowledged between attempts)",
            ),
            _grant(
                "delivery events: DeliveryCreated (create-once) and DeliveryAttempted (CAS on "
                "the delivery's subjects)",
                *(n.webhook_event_filter(event) for event in names.WEBHOOK_EVENT_NAMES),
            ),
            _kv_write(
                n.webhook_endpoints_bucket,
                "a tenant's endpoints at fan-out (the leader's last revision, then a "
                "multi_last direct get); failing-since, last success and disabling recorded "
                "with CAS",
            ),
            _kv_list(n.webhook_endpoints_bucket),
        ),
        subscribe=(_inbox(user),),
    )


def service_users(n: Names) -> tuple[ServiceUser, ...]:
    """Every user of one deployment, in ROLES order."""
    return (_admin(n), _api(n), _worker(n), _projector(n), _notifier(n))


# ---- rendering ---------------------------------------------------------------------------------

_WIDTH: Final = 96


def _comment(text: str, indent: str) -> list[str]:
    """`text` as `#` lines of at most _WIDTH characters."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        if line and len(indent) + 2 + len(line) + 1 + len(word) > _WIDTH:
            lines.append(f"{indent}# {line}")
            line = word
        else:
            line = f"{line} {word}" if line else word
    if line:
        lines.append(f"{indent}# {line}")
    return lines


def _quote(subject: str) -> str:
    return json.dumps(subject)  # a double-quoted string; subjects hold no escapes


def _allow(grants: Sequence[Grant], indent: str) -> list[str]:
    out = [f"{indent}allow = ["]
    seen: set[str] = set()
    for grant in grants:
        fresh = [s for s in grant.subjects if s not in seen]
        if not fresh:
            continue
        out += _comment(grant.reason, indent + "  ")
        out += [f"{indent}  {_quote(s)}," for s in fresh]
        seen.update(fresh)
    out.append(f"{indent}]")
    return out


def _variable(n: Names, role: Role) -> str:
    return _ENV_UNSAFE.sub("_", (f"{n.prefix}_{role}" if n.prefix else role).upper())


def _user_block(n: Names, u: ServiceUser) -> list[str]:
    pad = "  "
    out = _comment(u.summary, pad)
    out.append(f"{pad}{_variable(n, u.role)} = {{")
    if u.everything:
        out += [f'{pad}  publish = ">"', f'{pad}  subscribe = ">"']
    else:
        out.append(f"{pad}  publish = {{")
        out += _allow(u.publish, pad + "    ")
        out.append(f"{pad}  }}")
        out.append(f"{pad}  subscribe = {{")
        out += _allow(u.subscribe, pad + "    ")
        out.append(f"{pad}  }}")
        if u.allow_responses:
            out.append(f"{pad}  allow_responses = true")
    out.append(f"{pad}}}")
    return out


def _deployments(prefixes: Sequence[Names]) -> list[Names]:
    if not prefixes:
        raise ValueError("at least one name prefix is needed")
    seen: dict[str, str] = {}
    for n in prefixes:
        variable = _variable(n, "api")
        if variable in seen:
            raise ValueError(f"prefixes {seen[variable]!r} and {n.prefix!r} give the same users")
        seen[variable] = n.prefix
    return list(prefixes)


def render_authorization(deployments: Sequence[Names]) -> str:
    """The `authorization { … }` block: every user of each deployment, each grant's reason as a
    comment above its subjects."""
    out = ["authorization {"]
    every = _deployments(deployments)
    for n in every:
        if len(every) > 1:
            label = f"prefix {n.prefix!r}" if n.prefix else "the default prefix"
            out += ["", f"  # ---- the deployment with {label}"]
        for u in service_users(n):
            out += ["", *_user_block(n, u)]
    out += ["", "  users = ["]
    for n in every:
        for u in service_users(n):
            out.append(
                f"    {{user: {_quote(u.user)}, password: ${u.password_env}, "
                f"permissions: ${_variable(n, u.role)}}}"
            )
    out += ["  ]", "}"]
    return "\n".join(out) + "\n"


def render_config(deployments: Sequence[Names], include: str = "nats.conf") -> str:
    """A whole server config: `include` (the server settings) plus the users."""
    every = _deployments(deployments)
    envs = [u.password_env for n in every for u in service_users(n)]
    users = ", ".join(u.user for n in every for u in service_users(n))
    head = (
        f"Production nats-server config: {include} plus one user per service ({users}), each "
        "allowed only the subjects its code uses (least privilege). Generated by `audioprep "
        "nats-config` from audioprep/shared/nats_permissions.py: don't edit, regenerate "
        f"(`{REGENERATE}`). Passwords come from the server's environment; it refuses to "
        "start when one is missing:"
    )
    tail = (
        "Services connect with AUDIOPREP_NATS_URL=nats://<user>:<password>@host:4222 and use "
        "the inbox prefix `_INBOX.<user>` (audioprep/shared/nats_conn.py), so no service can "
        "read another's replies. docs/security.md says what each user may do."
    )
    lines = _comment(head, "")
    lines += [f"#   {env}" for env in envs]
    lines += _comment(tail, "")
    lines += [f"include {_quote(include)}", ""]
    return "\n".join(lines) + "\n" + render_authorization(every)
