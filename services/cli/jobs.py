"""`audioprep jobs show ID` and `audioprep jobs ls`: the KV view (and the stream behind it)."""

from __future__ import annotations

import argparse
import json
from typing import Any

import msgspec
from nats.js.errors import BucketNotFoundError, KeyNotFoundError
from nats.js.kv import KeyValue

from services.cli.common import (
    CliError,
    Session,
    add_nats_url,
    event_line,
    iso,
    run_with_nats,
    view_lines,
)
from services.projector.fold import fold_history
from shared import subjects
from shared.ids import is_job_id
from shared.views import JobView, decode_view


async def _bucket(session: Session) -> KeyValue:
    try:
        return await session.js.key_value(subjects.JOBS_BUCKET)
    except BucketNotFoundError:
        raise CliError("KV bucket `jobs` does not exist: run `audioprep provision`") from None


async def _kv_view(session: Session, job_id: str) -> JobView | None:
    kv = await _bucket(session)
    try:
        entry = await kv.get(job_id)
    except KeyNotFoundError:
        return None
    return decode_view(entry.value) if entry.value else None


async def _show(session: Session, args: argparse.Namespace) -> int:
    job_id = args.job_id
    if not is_job_id(job_id):
        raise CliError(
            f"{job_id!r} is not a job id (26 characters, like 01KAXZ3V7RJ6W3TQ2M8D1C5B9E)"
        )
    view = await _kv_view(session, job_id)
    history = await session.events.history(job_id)
    if view is None and not history:
        raise CliError(f"no job {job_id} (not in KV bucket `jobs`, no events in stream JOBS)")
    folded = fold_history(history)
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


async def _ls(session: Session, args: argparse.Namespace) -> int:
    kv = await _bucket(session)
    views: list[JobView] = []
    watcher = await kv.watchall(ignore_deletes=True)
    try:
        async for entry in watcher:
            if entry is None:  # end of the current values
                break
            if not entry.value:
                continue
            view = decode_view(entry.value)
            if args.status and view.status != args.status:
                continue
            if args.kind and view.kind != args.kind:
                continue
            views.append(view)
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]
    views.sort(key=lambda v: v.job_id, reverse=True)  # ids sort by creation time
    shown = views[: args.limit] if args.limit > 0 else views
    if args.json:
        print(json.dumps([msgspec.to_builtins(v) for v in shown], indent=2))
        return 0
    print(f"{'JOB':<26}  {'KIND':<7}  {'STATUS':<9}  {'PROG':>4}  {'UPDATED':<24}  DETAIL")
    for v in shown:
        if v.error is not None:
            detail = v.error.code
        elif v.status in ("pending", "running"):
            detail = v.stage
        else:
            detail = _result_key(v)
        print(
            f"{v.job_id:<26}  {v.kind:<7}  {v.status:<9}  {v.progress:>3}%  "
            f"{iso(v.updated_at):<24}  {detail}".rstrip()
        )
    more = len(views) - len(shown)
    print(f"({len(shown)} shown" + (f", {more} more: use --limit" if more > 0 else "") + ")")
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
        help="list jobs from the view, newest first",
        description="List job views from KV bucket `jobs`, newest first.",
    )
    ls.add_argument("--status", choices=["pending", "running", "completed", "failed", "cancelled"])
    ls.add_argument("--kind", choices=list(subjects.KINDS))
    ls.add_argument("--limit", type=int, default=20, help="how many (default 20, 0 = all)")
    ls.add_argument("--json", action="store_true", help="print the views as a JSON array")
    add_nats_url(ls)
    ls.set_defaults(func=lambda a: run_with_nats(a, lambda s: _ls(s, a)))
