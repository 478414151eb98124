"""Creating jobs (create-once, idempotency keys) and reading their views."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request
from nats.js.errors import KeyNotFoundError

from services.api.context import ApiContext
from services.api.problems import ProblemError
from services.projector.fold import fold_history
from shared import metrics
from shared.event_store import JobAlreadyExists
from shared.events import JobRequested
from shared.ids import idempotent_job_id, is_job_id, new_job_id
from shared.views import JobView, decode_view

log = logging.getLogger("audioprep.api")

MAX_IDEMPOTENCY_KEY = 200


def traceparent_of(request: Request[Any, Any, Any]) -> str | None:
    value = request.headers.get("traceparent")
    return value if value and len(value) < 128 else None


def job_id_for(request: Request[Any, Any, Any], tenant: str) -> str:
    """Deterministic id for an Idempotency-Key (per tenant), else a fresh time-sorted id."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return new_job_id()
    if not key.strip() or len(key) > MAX_IDEMPOTENCY_KEY:
        raise ProblemError(
            400, "invalid_idempotency_key", f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} chars"
        )
    return idempotent_job_id(tenant, key)


async def existing_job(ctx: ApiContext, job_id: str, tenant: str) -> JobRequested | None:
    """The job's JobRequested if it already exists for this tenant (idempotent replays)."""
    first = await ctx.events.first_event(job_id)
    if first is None or not isinstance(first.event, JobRequested):
        return None
    if first.event.tenant != tenant:
        raise ProblemError(409, "idempotency_conflict", "this Idempotency-Key is already used")
    return first.event


async def submit(ctx: ApiContext, event: JobRequested, traceparent: str | None) -> str:
    """Publish JobRequested once; a replay of the same request answers with the same job."""
    try:
        await ctx.events.request_job(event, traceparent=traceparent)
        metrics.job_requested(event.kind)
    except JobAlreadyExists:
        existing = await existing_job(ctx, event.job_id, event.tenant)
        if existing is None:
            raise
        log.info("idempotent replay", extra={"job_id": event.job_id})
    log.info("job requested", extra={"job_id": event.job_id, "kind": event.kind})
    return event.job_id


async def load_view(ctx: ApiContext, job_id: str, tenant: str) -> JobView:
    """The KV view, or a view folded from the stream when the projector hasn't caught up."""
    if not is_job_id(job_id):
        raise ProblemError(404, "job_not_found", f"no job {job_id!r}")
    view: JobView | None = None
    try:
        entry = await ctx.jobs_kv.get(job_id)
        if entry.value:
            view = decode_view(entry.value)
    except KeyNotFoundError:
        view = None
    if view is None:
        view = fold_history(await ctx.events.history(job_id))
    if view is None or view.tenant != tenant:
        raise ProblemError(404, "job_not_found", f"no job {job_id!r}")
    return view
