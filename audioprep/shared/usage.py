"""Usage per tenant per day: what each job's events say it used, summed (docs/fairness.md).

The dispatcher folds the stream into KV bucket `usage` (key `<yyyy-mm-dd>.<tenant>`); the API
(`GET /api/usage`) and `audioprep usage` read it. Each record remembers the sequence of the
last event it counts, so an event read twice (a new dispatcher replaying) is counted once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta

import msgspec
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from audioprep.domain.events import (
    Event,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobRequested,
    JobRetrying,
    JobUsage,
)
from audioprep.shared import kv_read, names

MAX_DAYS = 366  # one answer covers at most this many days
READ_CONCURRENCY = 32


class TenantDayUsage(msgspec.Struct, kw_only=True, rename="camel"):
    """One tenant's usage on one UTC day (integers: sums are exact)."""

    date: str
    tenant: str
    requested: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    processing_ms: int = 0
    input_audio_ms: int = 0
    output_audio_ms: int = 0
    bytes_stored: int = 0
    upload_bytes: int = 0
    seq: int = 0  # stream sequence of the last event counted here

    def add(self, other: TenantDayUsage) -> None:
        """Add another record's counts (totals over days or tenants)."""
        for name in COUNTED:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.seq = max(self.seq, other.seq)


COUNTED = (
    "requested",
    "completed",
    "failed",
    "cancelled",
    "processing_ms",
    "input_audio_ms",
    "output_audio_ms",
    "bytes_stored",
    "upload_bytes",
)

_decoder = msgspec.json.Decoder(TenantDayUsage)
_encoder = msgspec.json.Encoder()


def encode_usage(record: TenantDayUsage) -> bytes:
    return _encoder.encode(record)


def decode_usage(data: bytes) -> TenantDayUsage:
    return _decoder.decode(data)


def day_of(at: datetime) -> str:
    """The UTC day an event counts on."""
    return at.astimezone(UTC).date().isoformat()


def usage_of(event: Event) -> tuple[str, TenantDayUsage] | None:
    """What one event adds to its tenant's day (None: nothing). Pure."""
    day = day_of(event.at)
    delta = TenantDayUsage(date=day, tenant=event.tenant)
    used: JobUsage | None = None
    match event:
        case JobRequested():
            delta.requested = 1
            delta.upload_bytes = event.upload_bytes or 0
        case JobRetrying():
            used = event.usage
        case JobCompleted():
            delta.completed, used = 1, event.usage
        case JobFailed():
            delta.failed, used = 1, event.usage
        case JobCancelled():
            delta.cancelled, used = 1, event.usage
        case _:
            return None
    if used is not None:
        delta.processing_ms = used.processing_ms
        delta.input_audio_ms = used.input_audio_ms
        delta.output_audio_ms = used.output_audio_ms
        delta.bytes_stored = used.bytes_stored
    return names.usage_key(day, event.tenant), delta


def days_between(start: date, end: date) -> list[str]:
    """Every day from `start` to `end` inclusive, as yyyy-mm-dd."""
    if end < start:
        raise ValueError("`to` is before `from`")
    count = (end - start).days + 1
    if count > MAX_DAYS:
        raise ValueError(f"at most {MAX_DAYS} days at once")
    return [(start + timedelta(days=i)).isoformat() for i in range(count)]


async def _get(kv: KeyValue, key: str) -> TenantDayUsage | None:
    try:
        entry = await kv.get(key)
    except KeyNotFoundError:
        return None
    return decode_usage(entry.value) if entry.value else None


async def _day_of_everyone(nc: Client, bucket: str, day: str) -> list[TenantDayUsage]:
    """Every tenant's record of one day, complete also after a leader change (not a KV watch:
    its caught-up marker can come first and answer no tenant, shared/kv_read.py)."""
    found = await kv_read.read_latest(nc, bucket, names.usage_day_keys(day))
    return [decode_usage(e.value) for e in found.values() if e.value]


async def read_days(
    nc: Client, bucket: str, kv: KeyValue, days: Iterable[str], tenant: str | None
) -> list[TenantDayUsage]:
    """The records of one tenant (direct gets on `kv`), or of every tenant (None)."""
    gate = asyncio.Semaphore(READ_CONCURRENCY)

    async def one(day: str) -> list[TenantDayUsage]:
        async with gate:
            if tenant is None:
                return await _day_of_everyone(nc, bucket, day)
            found = await _get(kv, names.usage_key(day, tenant))
            return [found] if found is not None else []

    chunks = await asyncio.gather(*(one(d) for d in days))
    return sorted((r for chunk in chunks for r in chunk), key=lambda r: (r.date, r.tenant))


def totals(records: Iterable[TenantDayUsage]) -> dict[str, TenantDayUsage]:
    """Per tenant over the days given."""
    out: dict[str, TenantDayUsage] = {}
    for record in records:
        total = out.setdefault(record.tenant, TenantDayUsage(date="", tenant=record.tenant))
        total.add(record)
    return out
