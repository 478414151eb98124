"""`audioprep events tail` (live) and `audioprep events replay` (history): one line per event."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import datetime
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from audioprep.domain import kinds
from audioprep.domain.events import Event, decode_event, is_terminal
from audioprep.services.cli.common import (
    CliError,
    Session,
    add_nats_url,
    event_line,
    iso,
    parse_since,
    run_with_nats,
)
from audioprep.shared.ids import is_job_id

REPLAY_BATCH = 256


def _filter(session: Session, args: argparse.Namespace) -> str:
    if args.job:
        if not is_job_id(args.job):
            raise CliError(f"{args.job!r} is not a job id")
        return session.settings.names.job_subjects(args.job)
    return session.settings.names.kind_filter(args.kind)


def _start(since: str | None, default: DeliverPolicy) -> ConsumerConfig:
    if since is None:
        return ConsumerConfig(deliver_policy=default)
    start = parse_since(since)
    if isinstance(start, datetime):
        return ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=start)
    return ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start)


def _decode(msg: Msg) -> Event | None:
    try:
        return decode_event(msg.data)
    except msgspec.DecodeError:
        return None


def _print(msg: Msg, event: Event | None, as_json: bool) -> None:
    seq = msg.metadata.sequence.stream
    if as_json:
        try:
            payload: Any = json.loads(msg.data)
        except ValueError:
            payload = msg.data.decode("utf-8", "replace")
        doc = {
            "seq": seq,
            "subject": msg.subject,
            "time": iso(msg.metadata.timestamp),
            "headers": dict(msg.headers or {}),
            "event": payload,
        }
        print(json.dumps(doc, separators=(",", ":")), flush=True)
    elif event is None:
        print(f"{iso(msg.metadata.timestamp)}  #{seq:<6} {msg.subject}  (undecodable)", flush=True)
    else:
        print(event_line(seq, msg.subject, event), flush=True)


def _wanted(session: Session, args: argparse.Namespace, subject: str) -> bool:
    # --job and --kind together: the subject filter names the job; check the kind here.
    if not (args.job and args.kind):
        return True
    try:
        kind: str = session.settings.names.parse_subject(subject)[0]
        return bool(kind == args.kind)
    except ValueError:
        return False


async def _tail(session: Session, args: argparse.Namespace) -> int:
    subject = _filter(session, args)
    # Following one job starts at its first event; a general tail shows only new events.
    config = _start(args.since, DeliverPolicy.ALL if args.job else DeliverPolicy.NEW)
    queue: asyncio.Queue[Msg] = asyncio.Queue()

    async def on_msg(msg: Msg) -> None:
        await queue.put(msg)

    sub = await session.js.subscribe(
        subject,
        stream=session.settings.names.stream,
        ordered_consumer=True,
        idle_heartbeat=2.0,
        cb=on_msg,
        config=config,
    )
    where = f"stream {session.settings.names.stream}, subject {subject}"
    print(f"# following {where} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    seen = 0
    try:
        while True:
            msg = await queue.get()
            event = _decode(msg)
            if not _wanted(session, args, msg.subject):
                continue
            _print(msg, event, args.json)
            seen += 1
            if args.count and seen >= args.count:
                return 0
            if args.job and not args.forever and event is not None and is_terminal(event):
                return 0
    finally:
        await sub.unsubscribe()


async def _replay_job(session: Session, args: argparse.Namespace) -> int:
    history = await session.events.history(args.job)
    if not history:
        raise CliError(f"no events for job {args.job} in stream {session.settings.names.stream}")
    for stored in history:
        if _wanted(session, args, stored.subject):
            print(event_line(stored.seq, stored.subject, stored.event), flush=True)
    return 0


async def _replay_range(session: Session, args: argparse.Namespace) -> int:
    """Everything matching from --since up to the end of the stream as it is now; then exit."""
    config = _start(args.since, DeliverPolicy.ALL)
    config.ack_policy = AckPolicy.NONE
    config.inactive_threshold = 30.0
    sub = await session.js.pull_subscribe(
        _filter(session, args), stream=session.settings.names.stream, config=config
    )
    try:
        remaining = (await sub.consumer_info()).num_pending or 0
        while remaining > 0:
            for msg in await sub.fetch(min(REPLAY_BATCH, remaining), timeout=5):
                remaining -= 1
                if _wanted(session, args, msg.subject):
                    _print(msg, _decode(msg), args.json)
    finally:
        await sub.unsubscribe()
    return 0


async def _replay(session: Session, args: argparse.Namespace) -> int:
    if args.job and not is_job_id(args.job):
        raise CliError(f"{args.job!r} is not a job id")
    if args.job and args.since is None and not args.json:
        return await _replay_job(session, args)
    return await _replay_range(session, args)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--job", metavar="ID", help="only this job's events (subject jobs.*.<ID>.>)")
    p.add_argument("--kind", choices=list(kinds.KINDS), help="only jobs of this kind")
    p.add_argument(
        "--since",
        metavar="TIME|SEQ",
        help="start at a stream sequence (1234), a duration ago (30s, 10m, 2h, 1d) or an "
        "ISO time (2026-11-25T15:00:00Z)",
    )
    p.add_argument(
        "--json", action="store_true", help="one JSON object per line: seq, subject, headers..."
    )
    add_nats_url(p)


def register(commands: Any) -> None:
    p = commands.add_parser(
        "events",
        help="read job events from stream JOBS (live tail or replay)",
        description="Read job events from stream JOBS, one human-readable line per event: "
        "time, stream sequence, subject, event type and its key fields.",
    )
    sub = p.add_subparsers(dest="events_command", required=True, metavar="SUBCOMMAND")
    tail = sub.add_parser(
        "tail",
        help="follow new events as they happen",
        description="Follow events live. Without --since only new events are shown; with --job "
        "the job's events are shown from its start and the command exits after its terminal "
        "event (unless --forever).",
    )
    _common(tail)
    tail.add_argument("--count", type=int, default=0, help="exit after this many events")
    tail.add_argument(
        "--forever", action="store_true", help="with --job: keep following after the job ended"
    )
    tail.set_defaults(func=lambda a: run_with_nats(a, lambda s: _tail(s, a)))
    replay = sub.add_parser(
        "replay",
        help="print past events (a job's full history, or everything since a time) and exit",
        description="Print events already in the stream, then exit: `--job ID` prints the job's "
        "whole history; `--since` prints everything (or one --kind) from then up to now.",
    )
    _common(replay)
    replay.set_defaults(func=_replay_entry)


def _replay_entry(args: argparse.Namespace) -> int:
    if not args.job and args.since is None:
        raise CliError("events replay needs --job ID or --since TIME|SEQ (or both)")
    return run_with_nats(args, lambda s: _replay(s, args))
