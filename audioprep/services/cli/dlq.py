"""`audioprep dlq list|retry`: jobs no worker could finish, and asking for them again."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from typing import Any

import msgspec
from nats.js.errors import NotFoundError

from audioprep.domain.events import JobRequested, utcnow
from audioprep.domain.views import JobView
from audioprep.services.cli.common import CliError, Session, add_nats_url, iso, run_with_nats
from audioprep.shared.advisories import decode_advisory
from audioprep.shared.event_store import EventStore, JobAlreadyExists
from audioprep.shared.ids import idempotent_job_id, is_job_id
from audioprep.shared.job_views import JobViews


@dataclass(frozen=True)
class DeadLetter:
    """One MAX_DELIVERIES advisory, joined with its job."""

    dlq_seq: int
    at: str
    consumer: str
    stream_seq: int
    deliveries: int
    job_id: str | None
    kind: str | None
    status: str | None


async def job_view(events: EventStore, job_id: str) -> tuple[JobView | None, int]:
    """The job folded from its history, and the highest attempt any of its events names."""
    history = await events.history(job_id)
    attempts = max((int(getattr(s.event, "attempt", 0) or 0) for s in history), default=0)
    return JobViews.folded(history), attempts


async def dead_letters(session: Session, *, limit: int = 0) -> list[DeadLetter]:
    """Advisories in stream JOBS_DLQ, newest first (all when `limit` is 0)."""
    try:
        info = await session.js.stream_info(session.settings.names.dlq_stream)
    except NotFoundError:
        raise CliError("stream JOBS_DLQ does not exist: run `audioprep provision`") from None
    first, last = info.state.first_seq or 1, info.state.last_seq or 0
    out: list[DeadLetter] = []
    for seq in range(last, first - 1, -1):
        if limit and len(out) >= limit:
            break
        try:
            raw = await session.js.get_msg(session.settings.names.dlq_stream, seq, direct=True)
        except NotFoundError:
            continue
        if raw.data is None:
            continue
        try:
            advisory = decode_advisory(raw.data)
        except msgspec.DecodeError:
            continue
        request = await session.events.request_at(advisory.stream_seq)
        view = (await job_view(session.events, request.job_id))[0] if request else None
        out.append(
            DeadLetter(
                dlq_seq=seq,
                at=iso(advisory.timestamp) if advisory.timestamp else "",
                consumer=advisory.consumer,
                stream_seq=advisory.stream_seq,
                deliveries=advisory.deliveries,
                job_id=request.job_id if request else None,
                kind=request.kind if request else None,
                status=view.status if view else None,
            )
        )
    return out


async def retry_job(events: EventStore, job_id: str, *, force: bool = False) -> tuple[str, bool]:
    """Request a failed job again as a new job; returns (new id, created now).

    The new id is derived from the old one, so running the command twice gives the same new
    job instead of two; to try again after the retry failed too, retry the retry.
    """
    if not is_job_id(job_id):
        raise CliError(f"{job_id!r} is not a job id")
    first = await events.first_event(job_id)
    if first is None or not isinstance(first.event, JobRequested):
        raise CliError(f"no job {job_id} in stream JOBS")
    view, attempts = await job_view(events, job_id)
    status = view.status if view else "unknown"
    if status != "failed" and not (force and status in ("completed", "cancelled")):
        finished = status in ("completed", "cancelled")
        hint = " (use --force to run a finished job again)" if finished else ""
        raise CliError(f"job {job_id} is {status}; only failed jobs are retried{hint}")
    original = first.event
    new_id = idempotent_job_id(original.tenant, f"retry:{job_id}")
    request = msgspec.structs.replace(
        original, job_id=new_id, at=utcnow(), retry_of=job_id, attempt_base=attempts
    )
    try:
        await events.request_job(request)
    except JobAlreadyExists:
        return new_id, False
    return new_id, True


async def _list(session: Session, args: argparse.Namespace) -> int:
    letters = await dead_letters(session, limit=args.limit)
    if args.json:
        print(json.dumps([asdict(d) for d in letters], indent=2))
        return 0
    if not letters:
        print("no dead letters: no job ran out of deliveries")
        return 0
    print(f"{'TIME':<25}{'JOB':<28}{'KIND':<9}{'DELIVERIES':<12}{'STATUS':<11}CONSUMER")
    for d in letters:
        job = d.job_id or f"(seq {d.stream_seq} gone)"
        print(
            f"{d.at:<25}{job:<28}{d.kind or '-':<9}{d.deliveries:<12}"
            f"{d.status or '-':<11}{d.consumer}"
        )
    return 0


async def _retry(session: Session, args: argparse.Namespace) -> int:
    new_id, created = await retry_job(session.events, args.job_id, force=args.force)
    if not created:
        print(f"{args.job_id} was already retried as:")
    print(new_id)
    return 0


def register(commands: Any) -> None:
    p = commands.add_parser(
        "dlq",
        help="dead letters: jobs whose worker died on every delivery",
        description="Jobs that ran out of deliveries (max_deliver) end as failed with code "
        "max_deliveries; the advisories are kept in stream JOBS_DLQ.",
    )
    sub = p.add_subparsers(dest="dlq_command", required=True, metavar="SUBCOMMAND")
    ls = sub.add_parser("list", help="dead letters, newest first, with their jobs' status")
    ls.add_argument("--limit", type=int, default=50, help="how many (default 50, 0 = all)")
    ls.add_argument("--json", action="store_true", help="print them as a JSON array")
    add_nats_url(ls)
    ls.set_defaults(func=lambda a: run_with_nats(a, lambda s: _list(s, a)))
    rt = sub.add_parser(
        "retry",
        help="request a failed job again as a new job (prints the new id)",
        description="Publish a new JobRequested with the same input, `retryOf` = the old id "
        "and attempts counted on from the old job's. Prints the new job id.",
    )
    rt.add_argument("job_id", metavar="JOB_ID", help="the failed job")
    rt.add_argument("--force", action="store_true", help="also re-run a completed or cancelled job")
    add_nats_url(rt)
    rt.set_defaults(func=lambda a: run_with_nats(a, lambda s: _retry(s, a)))
