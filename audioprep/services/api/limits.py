"""Tenant limits on the submit path: queue length and daily quotas (docs/fairness.md).

Free when no limit is set for the tenant (a dict lookup, no NATS call). With a queue limit or
a quota the dispatcher is asked once per submit (core request/reply, ~0.3 ms on loopback) and
keeps the admitted job counted until its request appears, so parallel submits can't all slip
past the limit. No dispatcher answering lets the submit through (logged and counted as
`audioprep_admissions{answer="unanswered"}`): a limit must not stop the service while the
workers restart.
"""

from __future__ import annotations

import math
from typing import Any

from litestar import Request

from audioprep.domain.events import JobRequested
from audioprep.domain.kinds import Kind
from audioprep.services.api.context import ApiContext
from audioprep.services.api.problems import ProblemError
from audioprep.shared import metrics
from audioprep.shared.admission import (
    ADMIT_TIMEOUT_S,
    AdmitReply,
    AdmitRequest,
    ask,
)


async def admit(
    api: ApiContext, *, job_id: str, tenant: str, kind: Kind, upload_bytes: int = 0
) -> None:
    """429 `tenant_queue_full` or `quota_exceeded` (with Retry-After) past a limit."""
    limits = api.settings.tenant_policies.of(tenant)
    if not limits.needs_admission:
        return
    reply = await ask(
        api.nc,
        api.settings.names.scheduler_admit_subject,
        AdmitRequest(
            job_id=job_id,
            tenant=tenant,
            kind=kind,
            max_queued=limits.max_queued,
            max_upload_bytes_per_day=limits.max_upload_bytes_per_day,
            max_processing_s_per_day=limits.max_processing_s_per_day,
            upload_bytes=upload_bytes,
        ),
        AdmitReply,
        ADMIT_TIMEOUT_S,
    )
    if reply is None:
        metrics.admission("unanswered")
        return
    metrics.admission("ok" if reply.ok else reply.code or "refused")
    if reply.ok:
        return
    retry_after = max(1, math.ceil(reply.retry_after_s))
    extra: dict[str, Any] = {"retryAfterS": retry_after}
    if reply.code == "tenant_queue_full":
        extra.update(queued=reply.queued, limit=limits.max_queued)
    if reply.quota:
        extra["quota"] = reply.quota
    raise ProblemError(
        429,
        reply.code or "quota_exceeded",
        reply.detail,
        headers={"Retry-After": str(retry_after)},
        extra=extra,
    )


async def admit_request(api: ApiContext, event: JobRequested) -> None:
    """`admit` for a request about to be published (render-cache answers are free)."""
    if event.from_cache:
        return
    await admit(api, job_id=event.job_id, tenant=event.tenant, kind=event.kind)


def declared_upload_bytes(request: Request[Any, Any, Any]) -> int:
    """The body's Content-Length (0 when unknown): what an upload quota is checked with
    before a byte is stored."""
    raw = request.headers.get("content-length", "")
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 19 else 0


async def queue_position(api: ApiContext, job_id: str) -> int | None:
    """Where a waiting job is in the dispatcher's order (None: not known or not waiting)."""
    return await api.positions.get(api.nc, api.settings.names.scheduler_position_subject, job_id)
