"""Run one CPU-heavy media call in its own child process, with progress and hard cancel.

Why a process per call rather than threads: PyAV's light codecs are partly GIL-bound and any
CPU-bound Python thread slows a render badly (docs/architecture.md), while a child process keeps the
event loop free for heartbeats and cancel messages; cancel is simply `terminate()`.
The forkserver context preloads PyAV once, so a call starts in tens of milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import resource
import signal
import sys
import warnings
from collections.abc import Callable
from typing import Any

from audioprep.domain.errors import (
    MEDIA_CRASH,
    WORKER_CRASH,
    AudioprepError,
    Cancelled,
    Permanent,
    Retryable,
)

# Resource limits of every media child (0 = none). A decompression bomb or a decoder stuck
# in a loop ends as a dead child (SIGXCPU, or MemoryError/abort past the address space), which
# run_media_call reports as `media_crash`: retried once, then the job fails.
CPU_LIMIT_ENV = "AUDIOPREP_MEDIA_CPU_S"
MEMORY_LIMIT_ENV = "AUDIOPREP_MEDIA_MEMORY_MB"
DEFAULT_CPU_S = 3600
DEFAULT_MEMORY_MB = 16384

# multiprocessing re-runs the parent's main module (as `__mp_main__`) in every child it starts.
# The forkserver has imported that module already (see _context), which makes the re-run cheap
# and makes runpy warn, once per media call, that the module "found in sys.modules ... prior to
# execution ... may result in unpredictable behaviour": not so here (its `__main__` block does
# not run under that name). This module is preloaded in the forkserver, so the filter is in
# place before any child starts.
warnings.filterwarnings(
    "ignore",
    message=r"'[\w.]+' found in sys\.modules after import of package",
    category=RuntimeWarning,
)

_CONTEXT: Any = None
PRELOAD_STEPS = (
    "audioprep.services.worker.pipeline.analyse",
    "audioprep.services.worker.pipeline.render",
    "audioprep.services.worker.ytdlp_fetch",  # yt-dlp import costs ~0.35 s per URL ingest otherwise
)


def _context() -> Any:
    global _CONTEXT
    if _CONTEXT is None:
        ctx = multiprocessing.get_context("forkserver")
        # Whatever a child imports after the fork it pays for on every call: this module (for
        # _child_main: asyncio, shared.errors), the media steps, and the parent's main module,
        # which multiprocessing re-runs in the child (`audioprep worker`: the whole CLI).
        # Measured: 80-250 ms per media call before, ~40 ms after (bench/RESULTS.md).
        preload = ["__main__", __name__, "av", "numpy", *PRELOAD_STEPS]
        main_spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        if main_spec is not None and main_spec.name and not main_spec.name.endswith("__main__"):
            preload.append(main_spec.name)  # `python -m audioprep.services.cli.main worker`
        ctx.set_forkserver_preload(preload)
        _CONTEXT = ctx
    return _CONTEXT


def _limits() -> tuple[int, int]:
    """(CPU seconds, address-space MB) for a media child, from the environment."""

    def get(name: str, default: int) -> int:
        try:
            return max(0, int(os.environ.get(name, default)))
        except ValueError:
            return default

    return get(CPU_LIMIT_ENV, DEFAULT_CPU_S), get(MEMORY_LIMIT_ENV, DEFAULT_MEMORY_MB)


def _apply_limits(cpu_s: int, memory_mb: int) -> None:
    if cpu_s:
        used = resource.getrusage(resource.RUSAGE_SELF)
        spent = int(used.ru_utime + used.ru_stime)
        resource.setrlimit(resource.RLIMIT_CPU, (spent + cpu_s, spent + cpu_s + 5))
    if memory_mb:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _child_main(
    conn: multiprocessing.connection.Connection,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    limits: tuple[int, int] = (0, 0),
) -> None:
    _apply_limits(*limits)
    # The terminal's Ctrl-C reaches the worker's whole process group: the worker drains (the
    # call finishes, or is handed back and this child terminated), a KeyboardInterrupt here
    # would turn it into a crash instead.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def on_progress(fraction: float) -> None:
        conn.send(("progress", fraction))

    def on_stage(name: str) -> None:
        conn.send(("stage", name))

    if kwargs.pop("_with_stages", False):
        kwargs["on_stage"] = on_stage
    try:
        result = fn(*args, on_progress=on_progress, **kwargs)
    except AudioprepError as exc:
        conn.send(("error", (type(exc).__name__, exc.code, exc.message)))
    except BaseException as exc:  # anything else is reported, never silently lost
        conn.send(("crash", f"{type(exc).__name__}: {exc}"))
    else:
        conn.send(("result", result))
    finally:
        conn.close()


def _rebuild_error(kind: str, code: str, message: str) -> AudioprepError:
    if kind == "Retryable":
        return Retryable(message, code=code)
    if kind == "Cancelled":
        return Cancelled(message, code=code)
    return Permanent(message, code=code)


def _died(exitcode: int | None) -> Retryable:
    """A child that ended without an answer: killed by a signal is `media_crash` (the input
    crashed FFmpeg, or the child hit its CPU/memory limit), anything else `worker_crash`."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return Retryable(f"media process killed by {name} (exit code {exitcode})", code=MEDIA_CRASH)
    return Retryable(f"media process died (exit code {exitcode})", code=WORKER_CRASH)


async def run_media_call(
    fn: Callable[..., Any],
    *args: Any,
    on_progress: Callable[[float], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
    **kwargs: Any,
) -> Any:
    """Await `fn(*args, on_progress=..., **kwargs)` run in a child process.

    With `on_stage`, `fn` also gets an `on_stage(name)` callback (its passes: measuring,
    rendering, ...). Cancelling the awaiting task terminates the child at once.
    """
    if on_stage is not None:
        kwargs["_with_stages"] = True
    ctx = _context()
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(child, fn, args, kwargs, _limits()), daemon=True)
    proc.start()
    child.close()
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def readable() -> None:
        try:
            inbox.put_nowait(parent.recv())
        except (EOFError, OSError):
            loop.remove_reader(parent.fileno())
            inbox.put_nowait(("eof", proc.exitcode))

    loop.add_reader(parent.fileno(), readable)
    try:
        while True:
            kind, payload = await inbox.get()
            if kind == "progress":
                if on_progress is not None:
                    on_progress(payload)
                continue
            if kind == "stage":
                if on_stage is not None:
                    on_stage(payload)
                continue
            if kind == "result":
                return payload
            if kind == "error":
                raise _rebuild_error(*payload)
            if kind == "crash":
                raise Retryable(f"media process failed: {payload}", code=WORKER_CRASH)
            await asyncio.to_thread(proc.join, 5)
            raise _died(proc.exitcode)
    finally:
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(parent.fileno())
        parent.close()
        if proc.is_alive():
            proc.terminate()
        await asyncio.to_thread(proc.join, 5)
