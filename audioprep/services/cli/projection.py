"""`audioprep projection rebuild|status`: the KV view is derived; rebuild it from the stream."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from nats.js.errors import KeyNotFoundError

from audioprep.services.cli.common import Session, add_nats_url, run_with_nats
from audioprep.services.projector.rebuild import CACHE, rebuild
from audioprep.shared import names

STAGES = {"read": "reading stream JOBS", "write": "writing KV bucket jobs", "delete": "deleting"}


class ProgressPrinter:
    """Progress lines on stderr: redrawn in place on a terminal, about once a second otherwise."""

    def __init__(self, out: Any = None, every_s: float = 1.0) -> None:
        self.out = out or sys.stderr
        self.tty = bool(getattr(self.out, "isatty", lambda: False)())
        self.every_s = 0.1 if self.tty else every_s
        self.started = time.monotonic()
        self.last_at = 0.0
        self.stage = ""

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage not in STAGES:
            return
        now = time.monotonic()
        if done < total and stage == self.stage and now - self.last_at < self.every_s:
            return
        if self.tty and self.stage and self.stage != stage:
            self.out.write("\n")
        self.last_at, self.stage = now, stage
        text = f"{STAGES[stage]}: {done}/{total}"
        if stage == "read":
            text += f" ({done / max(1e-6, now - self.started):,.0f} events/s)"
        self.out.write(("\r" + text) if self.tty else text + "\n")
        self.out.flush()


def _cache_size(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"not a number of views (1 or more): {text!r}")
    return n


async def _rebuild(session: Session, args: argparse.Namespace) -> int:
    report = await rebuild(
        session.js,
        session.events,
        progress=None if args.quiet else ProgressPrinter(),
        check_only=args.check,
        cache=args.cache,
    )
    if sys.stderr.isatty() and not args.quiet:
        sys.stderr.write("\n")
    if args.check:
        if report.different:
            print(f"view differs from the stream for {report.different} key(s):")
            for key in report.differences[:50]:
                print(f"  {key}")
            return 1
        print(f"view matches the stream: {report.jobs} jobs, {report.events} events")
        return 0
    print(
        f"rebuilt KV bucket jobs from {report.events} events (up to seq {report.last_seq}): "
        f"{report.jobs} jobs, {report.written} written, {report.unchanged} unchanged, "
        f"{report.deleted} deleted, {report.refolded} re-folded, {report.read_back} read back "
        f"in {report.seconds:.1f} s ({report.events_per_s:,.0f} events/s)"
    )
    print(f"projector checkpoint reset to {report.last_seq}")
    return 0


async def _status(session: Session, args: argparse.Namespace) -> int:
    info = await session.js.stream_info(session.settings.names.stream)
    state = await session.js.key_value(session.settings.names.projector_state_bucket)
    try:
        entry = await state.get(names.PROJECTOR_CHECKPOINT_KEY)
        checkpoint = int(entry.value or b"0")
    except KeyNotFoundError:
        checkpoint = 0
    last = info.state.last_seq or 0
    print(f"stream JOBS last seq:   {last}")
    print(f"projector checkpoint:  {checkpoint}")
    print(f"lag:                   {max(0, last - checkpoint)} events")
    return 0


def register(commands: Any) -> None:
    p = commands.add_parser(
        "projection",
        help="the KV view of jobs: rebuild it from the stream, or see how far behind it is",
        description="KV bucket `jobs` is derived from stream JOBS by the projector.",
    )
    sub = p.add_subparsers(dest="projection_command", required=True, metavar="SUBCOMMAND")
    rb = sub.add_parser(
        "rebuild",
        help="recreate KV bucket jobs from stream JOBS (safe while a projector runs)",
        description="Fold every event of stream JOBS, write the views that differ, delete "
        "keys the stream does not produce and reset the projector checkpoint. The result "
        "equals the live view key for key. Memory stays bounded: views beyond --cache wait in "
        "a temporary file under TMPDIR (about 1 KB a job).",
    )
    rb.add_argument("--check", action="store_true", help="only compare; exit 1 if the view differs")
    rb.add_argument("--quiet", action="store_true", help="no progress lines")
    rb.add_argument(
        "--cache",
        type=_cache_size,
        default=CACHE,
        metavar="N",
        help=f"views folded in memory at once (default {CACHE:,}; under 1 KB each)",
    )
    add_nats_url(rb)
    rb.set_defaults(func=lambda a: run_with_nats(a, lambda s: _rebuild(s, a)))
    st = sub.add_parser("status", help="stream last sequence vs projector checkpoint")
    add_nats_url(st)
    st.set_defaults(func=lambda a: run_with_nats(a, lambda s: _status(s, a)))
