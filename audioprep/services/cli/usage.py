"""`audioprep usage`: what tenants used per day (KV bucket `usage`), and who waits now."""

from __future__ import annotations

import argparse
import json
import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

import msgspec
from nats.js.errors import BucketNotFoundError

from audioprep.services.cli.common import CliError, Session, add_nats_url, run_with_nats
from audioprep.shared import usage
from audioprep.shared.admission import StatusReply, StatusRequest, ask
from audioprep.shared.usage import TenantDayUsage

_TENANT_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
COLUMNS = (
    ("date", 10),
    ("tenant", 16),
    ("jobs", 6),
    ("ok", 6),
    ("failed", 6),
    ("proc s", 10),
    ("in s", 10),
    ("out s", 10),
    ("stored", 12),
    ("uploaded", 12),
)


def _day(value: str | None, default: date) -> date:
    if value is None:
        return default
    if value.endswith("d") and value[:-1].isdigit():  # `7d`: seven days ago
        return datetime.now(UTC).date() - timedelta(days=int(value[:-1]))
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise CliError(f"{value!r} is not a date (2026-12-01, or 7d for seven days ago)") from None


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _cells(record: TenantDayUsage, label: str | None = None) -> list[str]:
    return [
        label if label is not None else record.date,
        record.tenant,
        str(record.requested),
        str(record.completed),
        str(record.failed),
        f"{record.processing_ms / 1000:.1f}",
        f"{record.input_audio_ms / 1000:.1f}",
        f"{record.output_audio_ms / 1000:.1f}",
        _bytes(record.bytes_stored),
        _bytes(record.upload_bytes),
    ]


def _line(cells: list[str]) -> str:
    return "  ".join(
        c.ljust(w) if i < 2 else c.rjust(w)
        for i, (c, (_, w)) in enumerate(zip(cells, COLUMNS, strict=True))
    )


async def _usage(session: Session, args: argparse.Namespace) -> int:
    today = datetime.now(UTC).date()
    start = _day(args.from_, today)
    end = _day(args.to, today)
    try:
        days = usage.days_between(start, end)
        kv = await session.js.key_value(session.settings.names.usage_bucket)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    except BucketNotFoundError:
        raise CliError("KV bucket `usage` does not exist: run `audioprep provision`") from None
    if args.tenant is not None and not _TENANT_RE.fullmatch(args.tenant):
        raise CliError(f"{args.tenant!r} is not a tenant name (1-64 of A-Z a-z 0-9 _ -)")
    records = await usage.read_days(
        session.nc, session.settings.names.usage_bucket, kv, days, args.tenant
    )
    totals = usage.totals(records)
    status = (
        await ask(
            session.nc,
            session.settings.names.scheduler_status_subject,
            StatusRequest(),
            StatusReply,
            1.0,
        )
        if args.queues
        else None
    )
    if args.json:
        doc: dict[str, Any] = {
            "from": days[0],
            "to": days[-1],
            "days": msgspec.to_builtins(records),
            "totals": msgspec.to_builtins(list(totals.values())),
        }
        if args.queues:
            doc["dispatch"] = msgspec.to_builtins(status) if status else None
        print(json.dumps(doc, indent=2))
        return 0
    print(_line([name for name, _ in COLUMNS]))
    for record in records:
        print(_line(_cells(record)))
    if len(days) > 1 and totals:
        for total in totals.values():
            print(_line(_cells(total, "total")))
    if not records:
        print(f"(nothing used from {days[0]} to {days[-1]})")
    if args.queues:
        if status is None:
            print("\ndispatch: no dispatcher answered (no worker running?)")
        else:
            print(
                f"\ndispatch: {status.mode}, leader {status.leader}, stream seq "
                f"{status.applied_seq}, floor {status.floor}"
            )
            for tenant, c in sorted(status.tenants.items()):
                print(
                    f"  {tenant:<16} waiting {c.waiting:>5}  released {c.released:>3}  "
                    f"running {c.running:>4}"
                )
    return 0


def register(commands: Any) -> None:
    p = commands.add_parser(
        "usage",
        help="what each tenant used per day (processing seconds, audio, storage, uploads)",
        description="Read the per-tenant, per-day usage projection (KV bucket `usage`, kept by "
        "the dispatcher from the jobs' events). Days are UTC; --from/--to take a date or Nd "
        "(N days ago). --queues adds what waits and runs per tenant right now.",
    )
    p.add_argument("--tenant", help="one tenant (default: every tenant)")
    p.add_argument("--from", dest="from_", metavar="DAY", help="first day (default today)")
    p.add_argument("--to", metavar="DAY", help="last day (default today)")
    p.add_argument("--queues", action="store_true", help="also the dispatcher's queues now")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_nats_url(p)
    p.set_defaults(func=lambda a: run_with_nats(a, lambda s: _usage(s, a)))
