"""What the inspection commands share: settings, a NATS session, clear errors, event lines."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.js import JetStreamContext

from audioprep.domain.events import (
    Event,
    JobCancelled,
    JobCancelRequested,
    JobCompleted,
    JobFailed,
    JobProgressed,
    JobRequested,
    JobResult,
    JobRetrying,
    JobStarted,
)
from audioprep.domain.recipe import Recipe
from audioprep.domain.views import JobView
from audioprep.services.cli.report import report_lines
from audioprep.shared.event_store import EventStore
from audioprep.shared.logs import setup_logging
from audioprep.shared.nats_conn import connect
from audioprep.shared.settings import Settings

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class CliError(Exception):
    """A failure to explain in one line (no traceback); `exit_code` is what the process returns."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def add_nats_url(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nats-url", help="NATS server URL (default: AUDIOPREP_NATS_URL)")


def cli_settings(args: argparse.Namespace) -> Settings:
    """Settings from the environment and flags; only warnings are logged (to stderr)."""
    settings = Settings.from_env()
    if getattr(args, "nats_url", None):
        settings = settings.with_(nats_url=args.nats_url)
    setup_logging("console", "WARNING")
    return settings


@dataclass
class Session:
    settings: Settings
    nc: Client
    js: JetStreamContext
    events: EventStore


@contextlib.asynccontextmanager
async def nats_session(settings: Settings) -> AsyncIterator[Session]:
    nc = await connect(settings, "cli")
    js = nc.jetstream()
    try:
        yield Session(settings=settings, nc=nc, js=js, events=EventStore(nc, js, settings.names))
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), timeout=2)


def run_with_nats(args: argparse.Namespace, body: Callable[[Session], Awaitable[int]]) -> int:
    """Connect, run `body`, close: the shape of every NATS-reading command.

    SIGINT and SIGTERM end it cleanly (exit 130 / 143, no traceback), also when SIGINT was
    inherited as ignored (`audioprep events tail &` in a script)."""
    settings = cli_settings(args)

    async def main() -> int:
        with interrupted_by_signals() as received:
            try:
                async with nats_session(settings) as session:
                    return await body(session)
            except asyncio.CancelledError:
                if received:
                    return 128 + received[0]
                raise

    return asyncio.run(main())


@contextlib.contextmanager
def interrupted_by_signals() -> Iterator[list[int]]:
    """Within a running loop: SIGINT/SIGTERM cancel the current task; the list says which."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    received: list[int] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        if task is not None:
            task.cancel()

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        yield received
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)


# ---- time --------------------------------------------------------------------------------------

_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d|w)$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(value: str, now: datetime | None = None) -> int | datetime:
    """`--since`: a stream sequence (`1234`), a duration back from now (`90s`, `10m`, `2h`,
    `1d`), or an ISO 8601 time (`2026-11-25T15:00:00Z`; no zone means UTC)."""
    value = value.strip()
    if value.isdigit():
        return int(value)
    match = _DURATION_RE.match(value)
    if match:
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
        return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise CliError(
            f"--since {value!r}: use a sequence (1234), a duration (10m, 2h, 1d) or an ISO time "
            "(2026-11-25T15:00:00Z)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def iso(when: datetime) -> str:
    """`2026-11-25T15:09:23.123Z`."""
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ---- human-readable events and views -----------------------------------------------------------


def _fields(pairs: list[tuple[str, Any]]) -> str:
    return " ".join(f"{k}={v}" for k, v in pairs if v not in (None, "", False))


def result_fields(result: JobResult) -> list[tuple[str, Any]]:
    loud = result.loudness
    return [
        ("sourceKey", result.source_key),
        ("durationMs", result.duration_ms),
        ("codec", result.codec),
        ("sampleRate", result.sample_rate),
        ("channels", result.channels),
        ("lufs", loud.integrated_lufs if loud else None),
        ("previewKey", result.preview_key),
        ("preparedKey", result.prepared_key),
        ("format", result.format),
        ("sizeBytes", result.size_bytes),
        ("fromCache", result.from_cache),
    ]


_RECIPE_DEFAULTS: dict[str, Any] = msgspec.to_builtins(Recipe())


def recipe_summary(recipe: dict[str, Any] | None) -> str | None:
    """Only what differs from the defaults: `{"fadeInMs":200,"gainDb":-3.0}`."""
    if not recipe:
        return None
    changed = {k: v for k, v in recipe.items() if _RECIPE_DEFAULTS.get(k) != v}
    return json.dumps(changed, separators=(",", ":")) if changed else None


def event_details(event: Event) -> str:
    """The few fields that matter for each event type, as `key=value` words."""
    match event:
        case JobRequested():
            recipe = recipe_summary(event.recipe)
            return _fields(
                [
                    ("source", event.source),
                    ("filename", event.filename),
                    ("url", event.url),
                    ("sourceKey", event.source_key),
                    ("format", event.format),
                    ("recipe", recipe),
                    ("retryOf", event.retry_of),
                    ("tenant", event.tenant if event.tenant != "default" else None),
                ]
            )
        case JobStarted():
            return _fields([("attempt", event.attempt), ("worker", event.worker)])
        case JobProgressed():
            return f"{event.progress:>3}% {event.stage}".rstrip()
        case JobRetrying():
            return _fields(
                [
                    ("attempt", event.attempt),
                    ("code", event.error.code),
                    ("delay", f"{event.delay_ms / 1000:.1f}s"),
                    ("message", repr(event.error.message)),
                ]
            )
        case JobCompleted():
            return _fields([("attempt", event.attempt), *result_fields(event.result)])
        case JobFailed():
            return _fields(
                [
                    ("attempt", event.attempt),
                    ("code", event.error.code),
                    ("message", repr(event.error.message)),
                ]
            )
        case JobCancelRequested():
            return _fields([("reason", repr(event.reason) if event.reason else None)])
        case JobCancelled():
            return _fields([("attempt", event.attempt)])
    return ""


def event_line(seq: int, subject: str, event: Event) -> str:
    """`time  #seq  subject  Type  details` — one line per event."""
    line = f"{iso(event.at)}  #{seq:<6} {subject:<52} {type(event).__name__:<18} "
    return (line + event_details(event)).rstrip()


def view_lines(view: JobView) -> list[str]:
    """The job view as aligned `field: value` lines."""
    rows: list[tuple[str, Any]] = [
        ("job", view.job_id),
        ("kind", view.kind),
        ("status", view.status),
        ("progress", f"{view.progress}%" + (f" ({view.stage})" if view.stage else "")),
        ("attempt", view.attempt),
        ("tenant", view.tenant),
        ("created", iso(view.created_at)),
        ("updated", iso(view.updated_at)),
        ("seq", view.seq),
    ]
    if view.cancel_requested:
        rows.append(("cancel", "requested"))
    if view.error is not None:
        retry = " (retryable)" if view.error.retryable else ""
        rows.append(("error", f"{view.error.code}: {view.error.message}{retry}"))
    if view.result is not None:
        rows.append(("result", ""))
        rows.extend((f"  {k}", v) for k, v in result_fields(view.result) if v not in (None, False))
        rows.extend((f"  {k}", v) for k, v in report_lines(msgspec.to_builtins(view.result)))
    return [f"{k + ':':<15}{v}".rstrip() for k, v in rows]


# ---- metrics ports for `audioprep up` ----------------------------------------------------------


def metrics_env(env: dict[str, str], index: int) -> dict[str, str]:
    """Process `index` (0 = projector, 1.. = workers) gets AUDIOPREP_METRICS_PORT base + index."""
    base = int(env.get("AUDIOPREP_METRICS_PORT", "0") or 0)
    return {**env, "AUDIOPREP_METRICS_PORT": str(base + index)} if base else env


def metrics_note(env: dict[str, str], workers: int) -> str:
    host = env.get("AUDIOPREP_API_HOST", "127.0.0.1")
    api = f"http://{host}:{env.get('AUDIOPREP_API_PORT', '8000')}/metrics"
    base = int(env.get("AUDIOPREP_METRICS_PORT", "0") or 0)
    if not base:
        return f"metrics       {api}  (AUDIOPREP_METRICS_PORT=N adds projector/worker ports)"
    ports = f"projector :{base}"
    if workers:
        last = f"-:{base + workers}" if workers > 1 else ""
        ports += f", worker{'s' if workers > 1 else ''} :{base + 1}{last}"
    return f"metrics       {api}, {ports}"
