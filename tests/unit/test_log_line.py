"""`logs.info_line` writes exactly the line `logger.info(msg, extra=...)` writes, and leaves
any set-up it can't stand in for (another handler, a filter, console format) to `logging`."""

from __future__ import annotations

import datetime as dt
import io
import logging
import random
from collections.abc import Iterator
from unittest import mock

import pytest

from audioprep.shared import logs


@pytest.fixture
def json_root() -> Iterator[io.StringIO]:
    """setup_logging's JSON handler alone on the root logger, writing to a StringIO (pytest's
    own capture handlers, added for the test's call, are set aside meanwhile)."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level, logs._installed
    logs.setup_logging("json", "INFO")
    stream = io.StringIO()
    assert logs._installed is not None
    logs._installed.setStream(stream)
    try:
        yield stream
    finally:
        root.handlers[:], _, logs._installed = saved
        root.setLevel(saved[1])


def _alone() -> None:
    logging.getLogger().handlers[:] = [logs._installed]  # type: ignore[list-item]


def _both(logger: logging.Logger, stream: io.StringIO, **fields: object) -> tuple[str, str]:
    with mock.patch("time.time", return_value=1_764_590_000.1234):
        logger.info("job requested", extra=fields)
        plain = stream.getvalue()
        stream.truncate(0)
        stream.seek(0)
        logs.info_line(logger, "job requested", **fields)
        fast = stream.getvalue()
        stream.truncate(0)
        stream.seek(0)
    return plain, fast


def test_the_same_line_as_logger_info(json_root: io.StringIO) -> None:
    _alone()
    log = logging.getLogger("audioprep.api")
    assert logs._only_our_json_handler(log) is logs._installed  # the direct write is taken
    plain, fast = _both(log, json_root, job_id="01JBQ4V7Z8X9Y0A1B2C3D4E5F6", kind="save")
    assert plain == fast and plain.endswith("\n") and '"job_id":"01JBQ4V7' in plain
    # bound fields first, explicit ones win; odd values go through str() alike
    with logs.bound(trace_id="4bf92f3577b34da6a3ce929d0e0e4736", kind="bound"):
        plain, fast = _both(log, json_root, job_id="x", kind="save", size=3, obj=object)
    assert plain == fast and '"trace_id":"4bf92f' in plain and '"kind":"save"' in plain

    # below the level: neither writes
    log.setLevel(logging.WARNING)
    try:
        assert _both(log, json_root, job_id="x") == ("", "")
    finally:
        log.setLevel(logging.NOTSET)


def test_other_set_ups_go_through_logging(json_root: io.StringIO) -> None:
    _alone()
    log = logging.getLogger("audioprep.api")
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    extra = Keep()
    logging.getLogger("audioprep").addHandler(extra)
    try:
        assert logs._only_our_json_handler(log) is None
        plain, fast = _both(log, json_root, job_id="x")
    finally:
        logging.getLogger("audioprep").removeHandler(extra)
    assert plain == fast != "" and len(seen) == 2  # the other handler got both lines

    quiet = logging.Filter("nothing")  # lets no record of audioprep.api through
    log.addFilter(quiet)
    try:
        assert _both(log, json_root, job_id="x") == ("", "")
    finally:
        log.removeFilter(quiet)

    assert logs._installed is not None
    logs._installed.setFormatter(logs.ConsoleFormatter())
    plain, fast = _both(log, json_root, job_id="x")
    assert plain == fast and "job_id=x" in plain and not plain.startswith("{")


def test_timestamps_are_datetimes_to_the_millisecond() -> None:
    rng = random.Random(3)
    samples = [1_764_590_000 + rng.uniform(-5, 5) for _ in range(5000)]
    samples += [rng.uniform(-1e9, 4e9) for _ in range(5000)]
    edges = (0, 5e-7, 4.995e-4, 5e-4, 9.995e-4, 0.9999995, 0.9999996)
    samples += [1_764_590_000 + k / 1000 + d for k in range(200) for d in edges]
    samples += [0.0, -0.5, 1.9999995, 1.9999996, -1e-7]
    for t in samples:
        assert logs.iso_ms(t) == dt.datetime.fromtimestamp(t, dt.UTC).isoformat(
            timespec="milliseconds"
        ), t
