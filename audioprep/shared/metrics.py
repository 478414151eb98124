"""Prometheus metrics: one registry per process, small hook functions, a tiny scrape server.

Counters and histograms are process-local (the API counts requests, workers count outcomes, the
projector counts what it applied); Prometheus adds them up across targets. Gauges that describe
the shared system (queue depth, stream position, projector lag) are sampled from NATS when a
scrape arrives, so they are never stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from audioprep.domain import kinds
from audioprep.domain.events import Event, JobFailed, JobRequested, JobUsage
from audioprep.shared import names
from audioprep.shared.names import Names

log = logging.getLogger("audioprep.metrics")
# `*_created` timestamps double the output and no dashboard of ours uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]

Sampler = Callable[[], Awaitable[None]]

SAMPLE_TIMEOUT_S = 2.0
_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

JOBS_REQUESTED = Counter(
    "audioprep_jobs_requested", "Jobs accepted by the API (JobRequested published)", ["kind"]
)
JOBS_STARTED = Counter("audioprep_jobs_started", "Job attempts started by workers", ["kind"])
JOBS_COMPLETED = Counter("audioprep_jobs_completed", "Jobs completed by workers", ["kind"])
JOBS_FAILED = Counter(
    "audioprep_jobs_failed", "Jobs failed for good (JobFailed), by error code", ["kind", "code"]
)
JOBS_CANCELLED = Counter("audioprep_jobs_cancelled", "Jobs cancelled on request", ["kind"])
JOB_RETRIES = Counter(
    "audioprep_job_retries", "Attempts that failed with a retryable error", ["kind", "code"]
)
JOB_DELIVERIES = Counter(
    "audioprep_job_deliveries",
    "Requests fetched from the work consumers (redelivered=true: not the first delivery)",
    ["kind", "redelivered"],
)
JOB_DURATION = Histogram(
    "audioprep_job_duration_seconds",
    "Time from JobRequested to the job's terminal event (queueing and retries included)",
    ["kind", "outcome"],
    buckets=_DURATION_BUCKETS,
)
JOB_RUN = Histogram(
    "audioprep_job_run_seconds",
    "Time one worker attempt spent on a job",
    ["kind", "outcome"],
    buckets=_DURATION_BUCKETS,
)
RENDER_SECONDS = Histogram(
    "audioprep_render_seconds",
    "Run time of completed preview/save renders, by output format",
    ["kind", "format"],
    buckets=_DURATION_BUCKETS,
)
JOBS_ACTIVE = Gauge("audioprep_jobs_active", "Jobs this worker is running now", ["kind"])
QUEUE_PENDING = Gauge(
    "audioprep_queue_pending", "Requests waiting in a work consumer (num_pending)", ["kind"]
)
QUEUE_ACK_PENDING = Gauge(
    "audioprep_queue_ack_pending", "Requests delivered to a worker, not acked yet", ["kind"]
)
STREAM_LAST_SEQ = Gauge("audioprep_stream_last_seq", "Last sequence in stream JOBS")


@functools.cache
def _gauge(name: str, documentation: str) -> Gauge:
    """Registered on first use, so a process exports only the gauges it actually sets."""
    return Gauge(name, documentation)


def projector_applied_seq() -> Gauge:
    return _gauge(
        "audioprep_projector_applied_seq", "Stream sequence of the last event the projector applied"
    )


def projector_lag() -> Gauge:
    return _gauge(
        "audioprep_projector_lag_events", "Events in stream JOBS the projector has not applied yet"
    )


def projector_checkpoint_lag() -> Gauge:
    return _gauge(
        "audioprep_projector_checkpoint_lag_events",
        "Stream last sequence minus the projector's saved checkpoint (seen from the API)",
    )


PROJECTOR_EVENTS = Counter(
    "audioprep_projector_events", "Events folded into the view by the projector", ["type"]
)

# ---- per tenant (docs/fairness.md, "Metrics"): a bounded label set ------------------------------
# The first `AUDIOPREP_METRICS_MAX_TENANTS` tenants a process sees get their own label value;
# any further tenant is counted as `other`. Tenants exist only through the API-keys file, so
# in practice every tenant has its label; the cap keeps a mistake from exploding the series.
OTHER_TENANT = "other"
_tenant_labels: set[str] = set()

TENANT_JOBS = Counter(
    "audioprep_tenant_jobs", "Jobs ended by workers, per tenant", ["tenant", "kind", "outcome"]
)
TENANT_PROCESSING_SECONDS = Counter(
    "audioprep_tenant_processing_seconds", "Worker time spent on the tenant's jobs", ["tenant"]
)
TENANT_AUDIO_SECONDS = Counter(
    "audioprep_tenant_audio_seconds",
    "Audio read (input) and written (output) by the tenant's completed jobs",
    ["tenant", "direction"],
)
TENANT_BYTES_STORED = Counter(
    "audioprep_tenant_bytes_stored", "Bytes the tenant's completed jobs left in storage", ["tenant"]
)
TENANT_QUEUED = Gauge(
    "audioprep_tenant_queued", "Jobs waiting for dispatch (leading dispatcher only)", ["tenant"]
)
TENANT_RUNNING = Gauge(
    "audioprep_tenant_running",
    "Jobs released or running, the tenant's running cap counts these (leading dispatcher only)",
    ["tenant"],
)
DISPATCH_LEADING = Gauge("audioprep_dispatch_leading", "1 while this process dispatches")
JOBS_RELEASED = Counter(
    "audioprep_jobs_released", "Requests released to the workers by the dispatcher", ["kind"]
)
ADMISSIONS = Counter(
    "audioprep_admissions",
    "Submits checked against tenant limits, by answer (ok, a refusal code, or unanswered)",
    ["answer"],
)


def tenant_label(tenant: str, limit: int = 50) -> str:
    """The tenant's label value, or `other` once `limit` tenants have their own."""
    if tenant in _tenant_labels:
        return tenant
    if len(_tenant_labels) >= limit:
        return OTHER_TENANT
    _tenant_labels.add(tenant)
    return tenant


def tenant_job_ended(
    tenant: str, kind: str, outcome: str, usage: JobUsage | None, limit: int
) -> None:
    label = tenant_label(tenant, limit)
    TENANT_JOBS.labels(label, kind, outcome).inc()
    if usage is None:
        return
    TENANT_PROCESSING_SECONDS.labels(label).inc(usage.processing_ms / 1000)
    if usage.input_audio_ms:
        TENANT_AUDIO_SECONDS.labels(label, "input").inc(usage.input_audio_ms / 1000)
    if usage.output_audio_ms:
        TENANT_AUDIO_SECONDS.labels(label, "output").inc(usage.output_audio_ms / 1000)
    if usage.bytes_stored:
        TENANT_BYTES_STORED.labels(label).inc(usage.bytes_stored)


def tenant_attempt_used(tenant: str, usage: JobUsage, limit: int) -> None:
    """A retried attempt's processing time (the job itself has not ended)."""
    TENANT_PROCESSING_SECONDS.labels(tenant_label(tenant, limit)).inc(usage.processing_ms / 1000)


def dispatch_leading(leading: bool) -> None:
    DISPATCH_LEADING.set(1 if leading else 0)
    if not leading:
        TENANT_QUEUED.clear()
        TENANT_RUNNING.clear()


def dispatch_counts(counts: Mapping[str, Any], limit: int) -> None:
    """Per-tenant queue gauges from the leading dispatcher (`other` sums the rest)."""
    queued: dict[str, int] = {}
    running: dict[str, int] = {}
    for tenant, c in counts.items():
        label = tenant_label(tenant, limit)
        queued[label] = queued.get(label, 0) + c.waiting + c.released
        running[label] = running.get(label, 0) + c.released + c.running
    TENANT_QUEUED.clear()
    TENANT_RUNNING.clear()
    for label, value in queued.items():
        TENANT_QUEUED.labels(label).set(value)
    for label, value in running.items():
        TENANT_RUNNING.labels(label).set(value)


def job_released(kind: str) -> None:
    JOBS_RELEASED.labels(kind).inc()


def admission(answer: str) -> None:
    ADMISSIONS.labels(answer).inc()


_runs: dict[str, tuple[float, JobRequested]] = {}


# ---- API ---------------------------------------------------------------------------------------


def job_requested(kind: str) -> None:
    JOBS_REQUESTED.labels(kind).inc()


# ---- workers -----------------------------------------------------------------------------------


def job_delivered(kind: str, num_delivered: int | None) -> None:
    JOB_DELIVERIES.labels(kind, "true" if (num_delivered or 1) > 1 else "false").inc()


def run_begins(request: JobRequested) -> None:
    """A delivery is being handled: counts as active until `run_ends`."""
    _runs[request.job_id] = (time.monotonic(), request)
    JOBS_ACTIVE.labels(request.kind).inc()


def run_ends(request: JobRequested) -> None:
    if _runs.pop(request.job_id, None) is not None:
        JOBS_ACTIVE.labels(request.kind).dec()


def job_started(kind: str) -> None:
    JOBS_STARTED.labels(kind).inc()


def job_ended(event: Event, *, recorded: bool = True) -> None:
    """A terminal event (completed, failed, cancelled) was published for a running job."""
    if not recorded:
        return  # another delivery had already ended the job: not an outcome of ours
    kind, outcome = event.kind, event.name
    if isinstance(event, JobFailed):
        JOBS_FAILED.labels(kind, event.error.code).inc()
    elif outcome == "completed":
        JOBS_COMPLETED.labels(kind).inc()
    else:
        JOBS_CANCELLED.labels(kind).inc()
    run = _runs.get(event.job_id)
    if run is None:
        return
    started, request = run
    seconds = time.monotonic() - started
    JOB_RUN.labels(kind, outcome).observe(seconds)
    JOB_DURATION.labels(kind, outcome).observe(
        max(0.0, (datetime.now(UTC) - request.at).total_seconds())
    )
    if outcome == "completed" and kind in ("preview", "save"):
        RENDER_SECONDS.labels(kind, request.format or "unknown").observe(seconds)


def job_retrying(request: JobRequested, code: str) -> None:
    JOB_RETRIES.labels(request.kind, code).inc()
    run = _runs.get(request.job_id)
    if run is not None:
        JOB_RUN.labels(request.kind, "retrying").observe(time.monotonic() - run[0])


# ---- projector ---------------------------------------------------------------------------------


def projector_applied(seq: int, event_type: str, pending: int | None = None) -> None:
    """One event folded; `pending` (the consumer's num_pending) is the lag right now."""
    PROJECTOR_EVENTS.labels(event_type).inc()
    projector_applied_seq().set(seq)
    if pending is not None:
        projector_lag().set(pending)


def projector_applied_many(counts: Mapping[str, int], seq: int, pending: int | None) -> None:
    """A batch of events folded: per type how many, the last sequence, the lag right now."""
    for event_type, n in counts.items():
        PROJECTOR_EVENTS.labels(event_type).inc(n)
    projector_applied_seq().set(seq)
    if pending is not None:
        projector_lag().set(pending)


# ---- sampling from NATS at scrape time ---------------------------------------------------------


async def sample_queues(js: JetStreamContext, n: Names) -> None:
    for kind in kinds.KINDS:
        info = await js.consumer_info(n.stream, names.worker_consumer(kind))
        QUEUE_PENDING.labels(kind).set(info.num_pending or 0)
        QUEUE_ACK_PENDING.labels(kind).set(info.num_ack_pending or 0)


async def sample_stream(js: JetStreamContext, n: Names) -> int:
    info = await js.stream_info(n.stream)
    last = int(info.state.last_seq or 0)
    STREAM_LAST_SEQ.set(last)
    return last


def worker_sampler(js: JetStreamContext, n: Names) -> Sampler:
    async def sample() -> None:
        await sample_queues(js, n)
        await sample_stream(js, n)

    return sample


def projector_sampler(js: JetStreamContext, n: Names, applied_seq: Callable[[], int]) -> Sampler:
    async def sample() -> None:
        last = await sample_stream(js, n)
        applied = applied_seq()
        projector_applied_seq().set(applied)
        projector_lag().set(max(0, last - applied))

    return sample


def api_sampler(js: JetStreamContext, n: Names) -> Sampler:
    async def sample() -> None:
        await sample_queues(js, n)
        last = await sample_stream(js, n)
        state = await js.key_value(n.projector_state_bucket)
        try:
            entry = await state.get(names.PROJECTOR_CHECKPOINT_KEY)
            checkpoint = int(entry.value or b"0")
        except KeyNotFoundError:
            checkpoint = 0
        projector_checkpoint_lag().set(max(0, last - checkpoint))

    return sample


async def render(sampler: Sampler | None = None, registry: CollectorRegistry = REGISTRY) -> bytes:
    """Sample the NATS-backed gauges (best effort, bounded), then the text exposition."""
    if sampler is not None:
        try:
            await asyncio.wait_for(sampler(), timeout=SAMPLE_TIMEOUT_S)
        except Exception as exc:  # a scrape must answer even when NATS is slow or down
            log.warning("metrics sampling failed", extra={"error": f"{type(exc).__name__}: {exc}"})
    return generate_latest(registry)


# ---- the metrics port of workers and the projector ---------------------------------------------


async def _serve_one(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, sampler: Sampler | None
) -> None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
        parts = head.split(b"\r\n", 1)[0].split()
        path = parts[1].split(b"?", 1)[0] if len(parts) >= 2 else b""
        if parts[:1] == [b"GET"] and path in (b"/metrics", b"/"):
            status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, await render(sampler)
        else:
            status, ctype, body = "404 Not Found", "text/plain", b"try /metrics\n"
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
    except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


@contextlib.asynccontextmanager
async def serving(host: str, port: int, sampler: Sampler | None = None) -> AsyncIterator[int]:
    """Serve GET /metrics on host:port while the block runs; port 0 = off (yields 0).

    A port already taken is logged and skipped: the service keeps running without metrics.
    """
    if not port:
        yield 0
        return
    try:
        server = await asyncio.start_server(
            lambda r, w: _serve_one(r, w, sampler), host=host, port=port
        )
    except OSError as exc:
        log.warning(
            "metrics port unavailable; running without metrics",
            extra={"port": port, "error": str(exc), "hint": "give each process its own port"},
        )
        yield 0
        return
    log.info("metrics listening", extra={"url": f"http://{host}:{port}/metrics"})
    try:
        yield port
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), timeout=2)
