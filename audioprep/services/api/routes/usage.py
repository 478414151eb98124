"""GET /api/usage: the caller's usage per day (an admin key: every tenant's)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Annotated, Any

import msgspec
from litestar import Request, get
from litestar.di import NamedDependency
from litestar.params import QueryParameter

from audioprep.services.api.auth import is_admin, tenant_for
from audioprep.services.api.context import ApiContext
from audioprep.services.api.openapi import problems
from audioprep.services.api.problems import ProblemError
from audioprep.shared import usage
from audioprep.shared.usage import TenantDayUsage

TENANT_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
TENANT_RE = re.compile(TENANT_PATTERN)
QUERY = frozenset({"from", "to", "tenant"})
DATE_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"  # a calendar date is checked in code (400)


class UsageRow(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """One tenant's usage on one day (`date` empty in `totals`)."""

    tenant: str
    date: str = ""
    requested: int
    completed: int
    failed: int
    cancelled: int
    processing_seconds: float
    input_audio_seconds: float
    output_audio_seconds: float
    bytes_stored: int
    upload_bytes: int


class UsageAnswer(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    from_: str = msgspec.field(name="from")
    to: str
    tenant: str | None  # None: every tenant (an admin key)
    days: list[UsageRow]
    totals: list[UsageRow]  # per tenant over the days


def _row(record: TenantDayUsage) -> UsageRow:
    return UsageRow(
        tenant=record.tenant,
        date=record.date,
        requested=record.requested,
        completed=record.completed,
        failed=record.failed,
        cancelled=record.cancelled,
        processing_seconds=record.processing_ms / 1000,
        input_audio_seconds=record.input_audio_ms / 1000,
        output_audio_seconds=record.output_audio_ms / 1000,
        bytes_stored=record.bytes_stored,
        upload_bytes=record.upload_bytes,
    )


def _day(value: str | None, name: str, default: date) -> date:
    if value is None:
        return default
    try:
        if len(value) != 10:
            raise ValueError(value)
        return date.fromisoformat(value)
    except ValueError:
        raise ProblemError(
            400, "invalid_date", f"`{name}` must be a date like 2026-12-01", field=name
        ) from None


@get(
    "/api/usage",
    summary="Usage per day",
    description=(
        "What the caller's jobs used per UTC day from `from` to `to` (inclusive, default "
        "today, at most 366 days): jobs requested and ended, processing seconds, input and "
        "output audio seconds, bytes stored, upload bytes. An admin key sees every tenant "
        "(or one, with `tenant`); any other key only its own."
    ),
    responses=problems(400, 401, 403, 422),
)
async def get_usage(
    request: Request[Any, Any, Any],
    api: NamedDependency[ApiContext],
    from_: Annotated[str | None, QueryParameter(name="from", pattern=DATE_PATTERN)] = None,
    to: Annotated[str | None, QueryParameter(pattern=DATE_PATTERN)] = None,
    tenant: Annotated[str | None, QueryParameter(pattern=TENANT_PATTERN)] = None,
) -> UsageAnswer:
    own = tenant_for(request, api.settings)
    unknown = sorted(set(request.query_params) - QUERY)
    if unknown:
        raise ProblemError(
            400, "unknown_parameter", f"unknown query parameter {unknown[0]!r}", field=unknown[0]
        )
    if tenant is not None and not TENANT_RE.fullmatch(tenant):
        raise ProblemError(400, "invalid_tenant", "not a tenant name", field="tenant")
    if is_admin(request, api.settings):
        scope = tenant
    elif tenant is not None and tenant != own:
        raise ProblemError(403, "forbidden", "only an admin key reads another tenant's usage")
    else:
        scope = own
    today = datetime.now(UTC).date()
    start = _day(from_, "from", today)
    end = _day(to, "to", start if from_ is not None and to is None else today)
    try:
        days = usage.days_between(start, end)
    except ValueError as exc:
        raise ProblemError(400, "invalid_date_range", str(exc)) from None
    kv = api.usage_kv or await api.js.key_value(api.settings.names.usage_bucket)
    api.usage_kv = kv
    records = await usage.read_days(api.nc, api.settings.names.usage_bucket, kv, days, scope)
    return UsageAnswer(
        from_=days[0],
        to=days[-1],
        tenant=scope,
        days=[_row(r) for r in records],
        totals=[_row(t) for _, t in sorted(usage.totals(records).items())],
    )
