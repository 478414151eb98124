"""Structured logs: one JSON line per event (job id, kind, attempt, trace id), or console lines.

Fields bound with `bind()` (a context variable) are added to every record logged from the same
asyncio task and the tasks it starts: the API binds the request's trace id, the worker binds
job_id/kind/attempt/trace_id for the job it runs, so handler logs carry them without passing
`extra` everywhere. Explicit `extra=` fields win over bound ones.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import re
import sys
import time
from collections.abc import Iterator
from contextvars import ContextVar, Token
from datetime import UTC, datetime

import msgspec

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's ANSI copy of msg
}
_BOUND: ContextVar[dict[str, object] | None] = ContextVar("audioprep_log_fields", default=None)
# W3C trace context: version-traceid-parentid-flags, lowercase hex, ids not all zero.
_TRACEPARENT_RE = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def parse_traceparent(value: str | None) -> tuple[str, str] | None:
    """(trace_id, parent_id) from a W3C `traceparent` header, or None when it is not valid."""
    if not value:
        return None
    match = _TRACEPARENT_RE.match(value.strip())
    if match is None or match.group(1) == "ff":
        return None
    trace_id, parent_id = match.group(2), match.group(3)
    if trace_id == "0" * 32 or parent_id == "0" * 16:
        return None
    return trace_id, parent_id


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id part of a `traceparent`, for log lines."""
    parsed = parse_traceparent(traceparent)
    return parsed[0] if parsed else None


_random = random.Random()


def new_traceparent() -> str:
    """A fresh sampled `traceparent` (for a request or CLI call that starts a trace)."""
    # Trace ids need to be unique, not secret: the PRNG avoids two getrandom syscalls per request.
    return f"00-{_random.getrandbits(128):032x}-{_random.getrandbits(64):016x}-01"


def bind(**fields: object) -> Token[dict[str, object] | None]:
    """Add fields to every log record of the current task (and tasks it creates from now on)."""
    current = _BOUND.get() or {}
    merged = {**current, **{k: v for k, v in fields.items() if v is not None}}
    return _BOUND.set(merged)


def unbind(token: Token[dict[str, object] | None]) -> None:
    """Undo a `bind()`."""
    _BOUND.reset(token)


@contextlib.contextmanager
def bound(**fields: object) -> Iterator[None]:
    """`with bound(job_id=...):` binds fields for the block."""
    token = bind(**fields)
    try:
        yield
    finally:
        unbind(token)


def bound_fields() -> dict[str, object]:
    """What is bound right now (tests, and code that forwards context)."""
    return dict(_BOUND.get() or {})


def _extras(record: logging.LogRecord) -> dict[str, object]:
    fields = dict(_BOUND.get() or {})
    fields.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
    return fields


# msgspec: ~3x faster than json.dumps for a log line; anything unknown is logged as str().
_json = msgspec.json.Encoder(enc_hook=str)


_second: list[object] = [None, ""]  # the last whole second formatted, and its text


def iso_ms(created: float) -> str:
    """`datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")`, formatting the
    date and time only once a second (datetime's rounding: microseconds half-even, then cut)."""
    frac, whole = math.modf(created)
    micros = round(frac * 1e6)
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    elif micros < 0:  # before 1970
        whole, micros = whole - 1, micros + 1_000_000
    if whole != _second[0]:
        _second[:] = [whole, datetime.fromtimestamp(whole, UTC).isoformat()[:19]]
    return f"{_second[1]}.{micros // 1000:03d}+00:00"


def _json_line(
    created: float, level: str, logger: str, msg: str, fields: dict[str, object]
) -> dict[str, object]:
    doc: dict[str, object] = {
        "ts": iso_ms(created),
        "level": level,
        "logger": logger,
        "msg": msg,
    }
    for key, value in fields.items():
        doc.setdefault(key, value)
    return doc


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "msg", ...fields}` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        level = record.levelname.lower()
        doc = _json_line(record.created, level, record.name, record.getMessage(), _extras(record))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return _json.encode(doc).decode()


_installed: logging.StreamHandler | None = None  # type: ignore[type-arg]  # setup_logging's


def _only_our_json_handler(logger: logging.Logger) -> logging.StreamHandler | None:  # type: ignore[type-arg]
    """setup_logging's JSON handler when a record of `logger` would reach it and nothing else
    (no other handler, no filter on the way), else None."""
    handler = _installed
    if handler is None or handler.filters or type(handler.formatter) is not JsonFormatter:
        return None
    node: logging.Logger | None = logger
    while node is not None:
        if node.filters or node.disabled:
            return None
        if node.handlers:
            if node.handlers != [handler] or (node.parent is not None and node.propagate):
                return None
            return handler
        node = node.parent if node.propagate else None
    return None


def info_line(logger: logging.Logger, msg: str, **fields: object) -> None:
    """`logger.info(msg, extra=fields)`: the same line, for a line on a hot path.

    When the record would go to setup_logging's JSON handler and nowhere else (production),
    the line is built and written directly, without a LogRecord, the handler chain and the
    formatter's walk over the record's attributes (a fifth of the cost; bench/RESULTS.md).
    Any other set-up (console format, pytest's caplog, another handler or filter) takes
    `logger.info`.
    """
    if not logger.isEnabledFor(logging.INFO):
        return
    handler = _only_our_json_handler(logger)
    if handler is None or handler.level > logging.INFO or not fields.keys().isdisjoint(_STANDARD):
        logger.info(msg, extra=fields)
        return
    bound = _BOUND.get()
    merged = {**bound, **fields} if bound else fields
    line = _json.encode(_json_line(time.time(), "info", logger.name, msg, merged)).decode()
    with handler.lock or contextlib.nullcontext():
        try:
            handler.stream.write(line + handler.terminator)
            handler.flush()
        except Exception:
            handler.handleError(logging.makeLogRecord({"msg": msg, "name": logger.name}))


class ConsoleFormatter(logging.Formatter):
    """Readable lines for a terminal: time level logger msg key=value..."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        line = f"{ts} {record.levelname:<7} {record.name:<22} {record.getMessage()}"
        line = f"{line}  {extras}" if extras else line
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(fmt: str = "json", level: str = "INFO") -> None:
    """Configure the root logger once per process (services and CLI call this at start)."""
    # The logging HOWTO's "Optimization" knobs: we never print caller file/line, thread or
    # process names, and skipping them halves the cost of a record on the request path.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    global _installed
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(ConsoleFormatter() if fmt == "console" else JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    _installed = handler
    root.setLevel(level)
    for noisy in ("nats", "uvicorn.access", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
