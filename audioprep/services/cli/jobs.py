"""`audioprep jobs show ID` and `audioprep jobs ls`: the KV view (and the stream behind it)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import AsyncGenerator
from typing import Any

import msgspec
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue

from audioprep.domain import kinds
from audioprep.domain.events import decode_event
from audioprep.domain.kinds import STATUSES, Kind
from audioprep.domain.views import JobView
from audioprep.services.cli.common import (
    CliError,
    Session,
    add_nats_url,
    event_line,
    iso,
    parse_since,
    run_with_nats,
    view_lines,
)
from audioprep.shared import direct_get
from audioprep.shared.event_store import StoredEvent
from audioprep.shared.ids import is_job_id
from audioprep.shared.job_views import JobViews


async def _bucket(session: Session) -> KeyValue:
    try:
        return await session.js.key_value(session.settings.names.jobs_bucket)
    except BucketNotFoundError:
        raise CliError("KV bucket `jobs` does not exist: run `audioprep provision`") from None


async def _job_views(session: Session) -> JobViews:
    return JobViews(await _bucket(session), session.events)


async def _show(session: Session, args: argparse.Namespace) -> int:
    job_id = args.job_id
    if not is_job_id(job_id):
        raise CliError(
            f"{job_id!r} is not a job id (26 characters, like 01KAXZ3V7RJ6W3TQ2M8D1C5B9E)"
        )
    view = await (await _job_views(session)).stored(job_id)
    history = await session.events.history(job_id)
    if view is None and not history:
        raise CliError(f"no job {job_id} (not in KV bucket `jobs`, no events in stream JOBS)")
    folded = JobViews.folded(history)
    if args.json:
        doc: dict[str, Any] = {
            "view": msgspec.to_builtins(view) if view else None,
            "events": [
                {"seq": s.seq, "subject": s.subject, "event": msgspec.to_builtins(s.event)}
                for s in history
            ],
        }
        print(json.dumps(doc, indent=2))
        return 0
    if view is None:
        print("(not in KV bucket `jobs` yet: the projector has not caught up; folded from events)")
        view = folded
    elif folded is not None and folded.seq > view.seq:
        print(f"(KV view is at seq {view.seq}, stream at {folded.seq}: projector catching up)")
    if view is not None:
        print("\n".join(view_lines(view)))
    print(f"\nevents ({len(history)}):")
    for stored in history:
        print("  " + event_line(stored.seq, stored.subject, stored.event))
    return 0


# `jobs ls` pages backwards through the JobRequested events of stream JOBS (creation order),
# a window of stream sequences at a time, and reads only the views of the jobs it shows.
WINDOW_SEQS = 1024  # first window; doubles up to MAX_WINDOW_SEQS while too few jobs are found
MAX_WINDOW_SEQS = 65536
DIRECT_BATCH = 64


async def _direct_range(session: Session, subject: str, lo: int, hi: int) -> list[StoredEvent]:
    """The events on `subject` with sequences lo..hi, oldest first (batched direct gets);
    messages that are not events are skipped."""
    out: list[StoredEvent] = []
    start = lo
    while start <= hi:
        msgs = await direct_get.next_by_subject(
            session.nc, session.settings.names.stream, subject, start, DIRECT_BATCH, 5.0
        )
        for msg in msgs:
            seq = direct_get.sequence(msg)
            if seq > hi:
                return out
            with contextlib.suppress(msgspec.DecodeError):
                event = decode_event(msg.data)
                out.append(StoredEvent(seq=seq, subject=direct_get.subject_of(msg), event=event))
        if len(msgs) < DIRECT_BATCH:
            return out
        start = direct_get.sequence(msgs[-1]) + 1
    return out


async def requests_newest_first(
    session: Session, subject: str, before_seq: int
) -> AsyncGenerator[StoredEvent, None]:
    """JobRequested events on `subject` with a sequence below `before_seq`, newest first."""
    info = await session.js.stream_info(session.settings.names.stream)
    first = max(1, info.state.first_seq or 1)
    hi = min(before_seq - 1, info.state.last_seq or 0)
    window = WINDOW_SEQS
    while hi >= first:
        lo = max(first, hi - window + 1)
        for stored in reversed(await _direct_range(session, subject, lo, hi)):
            yield stored
        hi = lo - 1
        window = min(window * 2, MAX_WINDOW_SEQS)


async def _before_seq(session: Session, before: str | None, subject: str) -> int:
    """--before: a job id (jobs requested before it), a stream sequence, a duration ago or an
    ISO time; the stream sequence to list below."""
    if before is None:
        return sys.maxsize
    if is_job_id(before):
        first = await session.events.first_event(before)
        if first is None:
            raise CliError(f"--before {before}: no job {before} in stream JOBS")
        return first.seq
    start = parse_since(before)
    if isinstance(start, int):
        return start
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_TIME,
        opt_start_time=start,
        ack_policy=AckPolicy.NONE,
        inactive_threshold=30.0,
    )
    sub = await session.js.pull_subscribe(
        subject, stream=session.settings.names.stream, config=config
    )
    try:
        if not (await sub.consumer_info()).num_pending:
            return sys.maxsize  # every job was requested before that time
        msgs = await sub.fetch(1, timeout=5)
        return int(msgs[0].metadata.sequence.stream)
    finally:
        await sub.unsubscribe()


async def _views(views: JobViews, requests: list[StoredEvent]) -> list[tuple[StoredEvent, JobView]]:
    """Each request's view (`JobViews.get`: a listed job is never missing because the
    projector is behind)."""
    found = await views.many(r.event.job_id for r in requests)
    return [(r, view) for r in requests if (view := found.get(r.event.job_id)) is not None]


async def list_jobs(
    session: Session,
    *,
    limit: int,
    before: str | None = None,
    status: str | None = None,
    kind: Kind | None = None,
) -> tuple[list[tuple[StoredEvent, JobView]], bool]:
    """Up to `limit` (0 = all) jobs requested before `before`, newest first, and whether older
    ones match too."""
    views = await _job_views(session)
    subject = session.settings.names.requested_filter(kind)
    before_seq = await _before_seq(session, before, subject)
    found: list[tuple[StoredEvent, JobView]] = []
    chunk: list[StoredEvent] = []

    async def flush() -> None:
        for stored, view in await _views(views, chunk):
            if status is None or view.status == status:
                found.append((stored, view))
        chunk.clear()

    async with contextlib.aclosing(requests_newest_first(session, subject, before_seq)) as reqs:
        async for stored in reqs:
            chunk.append(stored)
            # One more than asked for tells whether there is an older page.
            if len(chunk) >= (limit + 1 - len(found) if limit else DIRECT_BATCH):
                await flush()
                if limit and len(found) > limit:
                    break
    if chunk:
        await flush()
    more = bool(limit) and len(found) > limit
    shown = found[:limit] if limit else found
    shown.sort(key=lambda sv: (sv[1].created_at, sv[0].seq), reverse=True)
    return shown, more


async def _ls(session: Session, args: argparse.Namespace) -> int:
    shown, more = await list_jobs(
        session, limit=args.limit, before=args.before, status=args.status, kind=args.kind
    )
    if args.json:
        print(json.dumps([msgspec.to_builtins(v) for _, v in shown], indent=2))
        return 0
    print(f"{'JOB':<26}  {'KIND':<7}  {'STATUS':<9}  {'PROG':>4}  {'CREATED':<24}  DETAIL")
    for _, v in shown:
        if v.error is not None:
            detail = v.error.code
        elif v.status in ("pending", "running"):
            detail = v.stage
        else:
            detail = _result_key(v)
        print(
            f"{v.job_id:<26}  {v.kind:<7}  {v.status:<9}  {v.progress:>3}%  "
            f"{iso(v.created_at):<24}  {detail}".rstrip()
        )
    summary = f"({len(shown)} shown, newest first"
    if more:
        oldest = min(shown, key=lambda sv: sv[0].seq)[1].job_id
        summary += f"; older: audioprep jobs ls --before {oldest}"
    print(summary + ")")
    return 0


def _result_key(view: JobView) -> str:
    r = view.result
    if r is None:
        return ""
    return r.prepared_key or r.preview_key or r.source_key or ""


def register(commands: Any) -> None:
    p = commands.add_parser(
        "jobs",
        help="look at jobs: their view (KV bucket jobs) and their events",
        description="Read job views from KV bucket `jobs` and their events from stream JOBS.",
    )
    sub = p.add_subparsers(dest="jobs_command", required=True, metavar="SUBCOMMAND")

    show = sub.add_parser(
        "show",
        help="one job: its view and all its events in order",
        description="Print a job's view (KV bucket `jobs`) and every event of the job in stream "
        "order (read from stream JOBS by batched direct get).",
    )
    show.add_argument("job_id", metavar="ID", help="the job id")
    show.add_argument("--json", action="store_true", help="print {view, events} as JSON")
    add_nats_url(show)
    show.set_defaults(func=lambda a: run_with_nats(a, lambda s: _show(s, a)))

    ls = sub.add_parser(
        "ls",
        help="list jobs, newest first, a page at a time",
        description="List jobs newest first (creation order: their JobRequested in stream "
        "JOBS), with their views from KV bucket `jobs` (folded from the stream when the "
        "projector has not written one yet). Only the jobs shown are read; the last line says "
        "how to get the next page.",
    )
    ls.add_argument("--status", choices=STATUSES)
    ls.add_argument("--kind", choices=list(kinds.KINDS))
    ls.add_argument("--limit", type=int, default=20, help="how many (default 20, 0 = all)")
    ls.add_argument(
        "--before",
        metavar="ID|TIME|SEQ",
        help="only jobs created before this job (the next page), time (2026-11-25T15:00:00Z, "
        "or a duration ago: 1h, 2d) or stream sequence",
    )
    ls.add_argument("--json", action="store_true", help="print the views as a JSON array")
    add_nats_url(ls)
    ls.set_defaults(func=lambda a: run_with_nats(a, lambda s: _ls(s, a)))
