"""Run CPU-heavy media calls in child processes, with progress, limits and hard cancel.

Why processes rather than threads: PyAV's light codecs are partly GIL-bound and any CPU-bound
Python thread slows a render badly (docs/architecture.md), while a child process keeps the
event loop free for heartbeats and cancel messages; cancel is simply `terminate()`.

A child serves one call at a time and is kept for the next call only after a clean result:
an error, a crash, a cancel or a limit ends it, and so do MAX_CALLS calls or a resident size
past RETIRE_RSS_MB. (A fresh child per call cost ~20 ms of CPU per 3-s ingest: the fork,
multiprocessing's re-run of the main module, the exit and a cold first decode;
bench/RESULTS.md.) Children come from a forkserver that preloads PyAV and the media steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import multiprocessing
import multiprocessing.connection
import os
import resource
import signal
import sys
import time
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

# Resource limits of every media call (0 = none). A decompression bomb or a decoder stuck
# in a loop ends as a dead child (SIGXCPU, or MemoryError/abort past the address space), which
# run_media_call reports as `media_crash`: retried once, then the job fails. The CPU limit is
# per call (a CPU-time timer, the rlimit as backstop: _allow_call_cpu), the address space per
# child.
CPU_LIMIT_ENV = "AUDIOPREP_MEDIA_CPU_S"
MEMORY_LIMIT_ENV = "AUDIOPREP_MEDIA_MEMORY_MB"
DEFAULT_CPU_S = 3600
DEFAULT_MEMORY_MB = 16384
MAX_CALLS = 100  # calls one child serves before it is replaced
RETIRE_RSS_MB = 1024  # a child this large after a call is replaced (fragmentation, caches)
IDLE_S = 300.0  # an idle child is ended after this long

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
    """(CPU seconds per call, address-space MB) for media children, from the environment."""

    def get(name: str, default: int) -> int:
        try:
            return max(0, int(os.environ.get(name, default)))
        except ValueError:
            return default

    return get(CPU_LIMIT_ENV, DEFAULT_CPU_S), get(MEMORY_LIMIT_ENV, DEFAULT_MEMORY_MB)


def _cpu_spent() -> int:
    """CPU seconds this process used, rounded up: a limit of spent + n leaves at least n."""
    used = resource.getrusage(resource.RUSAGE_SELF)
    return math.ceil(used.ru_utime + used.ru_stime)


def _apply_child_limits(cpu_s: int, memory_mb: int) -> None:
    """Once per child: the address space, and a hard CPU limit over all the calls it may
    serve (an unprivileged process cannot raise a hard limit later, so each call moves only
    the soft one: SIGXCPU, see _allow_call_cpu)."""
    if cpu_s:
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        budget = _cpu_spent() + cpu_s * MAX_CALLS + 5
        if hard == resource.RLIM_INFINITY or budget < hard:
            resource.setrlimit(resource.RLIMIT_CPU, (budget, budget))
    if memory_mb:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _allow_call_cpu(cpu_s: int) -> None:
    """This call may use `cpu_s` more CPU seconds, then the child dies of SIGXCPU.

    Exactly: a CPU-time timer (ITIMER_PROF, all threads) whose handler kills the child with
    SIGXCPU once Python code runs again (a decode loop does, every frame). The kernel's soft
    limit, in whole seconds, is the backstop for a call stuck inside C: at most a second
    later (spent time rounded up, so a call never gets less than `cpu_s`)."""
    if cpu_s:
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        soft = _cpu_spent() + cpu_s
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
        signal.setitimer(signal.ITIMER_PROF, cpu_s)


def _call_done() -> None:
    signal.setitimer(signal.ITIMER_PROF, 0)


def _out_of_cpu(_signum: int, _frame: object) -> None:
    """The call's CPU time is used up: end as the kernel's limit would (SIGXCPU)."""
    signal.signal(signal.SIGXCPU, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGXCPU)


def _run_call(
    conn: multiprocessing.connection.Connection,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
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


def _child_main(conn: multiprocessing.connection.Connection, limits: tuple[int, int]) -> None:
    """Serve calls `(fn, args, kwargs)` from the worker, one at a time, until it closes the
    pipe (or dies: the pipe's end closes with it)."""
    cpu_s, memory_mb = limits
    _apply_child_limits(cpu_s, memory_mb)
    # The terminal's Ctrl-C reaches the worker's whole process group: the worker drains (the
    # call finishes, or is handed back and this child terminated), a KeyboardInterrupt here
    # would turn it into a crash instead.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGPROF, _out_of_cpu)
    try:
        while True:
            try:
                call = conn.recv()
            except (EOFError, OSError):
                return
            if call is None:
                return
            _allow_call_cpu(cpu_s)
            try:
                _run_call(conn, *call)
            finally:
                _call_done()
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


def _rss_mb(pid: int | None) -> float:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


@dataclasses.dataclass(eq=False)
class _Child:
    """One media child and the worker's end of its pipe."""

    proc: Any
    conn: multiprocessing.connection.Connection
    limits: tuple[int, int]
    calls: int = 0
    idle_since: float = 0.0

    @classmethod
    async def start(cls, limits: tuple[int, int]) -> _Child:
        ctx = _context()
        parent, child = ctx.Pipe(duplex=True)
        proc = ctx.Process(target=_child_main, args=(child, limits), daemon=True)
        # Off the event loop: the first start boots the forkserver (PyAV preloaded, ~2 s), which
        # would otherwise stall heartbeats, cancel watches and this process's dispatcher lease.
        try:
            await asyncio.to_thread(proc.start)
        finally:
            child.close()
        return cls(proc=proc, conn=parent, limits=limits)

    def reusable(self) -> bool:
        return self.calls < MAX_CALLS and _rss_mb(self.proc.pid) < RETIRE_RSS_MB

    async def end(self) -> None:
        """Ask it to exit (or terminate it if it is busy) and reap it, off the event loop."""
        with contextlib.suppress(OSError, ValueError):
            self.conn.close()  # EOF: an idle child returns from recv and exits
        if self.proc.is_alive():
            await asyncio.to_thread(self.proc.join, 0.5)
        if self.proc.is_alive():
            self.proc.terminate()
        await asyncio.to_thread(self.proc.join, 5)


class _Children:
    """Idle media children of this process, newest last."""

    def __init__(self) -> None:
        self.idle: list[_Child] = []
        self._ending: set[asyncio.Task[None]] = set()
        self._expiry: tuple[asyncio.AbstractEventLoop, asyncio.TimerHandle] | None = None

    def _end_later(self, child: _Child) -> None:
        task = asyncio.get_running_loop().create_task(child.end())
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)

    async def take(self, limits: tuple[int, int]) -> _Child:
        while self.idle:
            child = self.idle.pop()
            if child.limits == limits and child.proc.is_alive():
                return child
            self._end_later(child)
        return await _Child.start(limits)

    def give_back(self, child: _Child) -> None:
        child.idle_since = time.monotonic()
        self.idle.append(child)
        self._expire_in(IDLE_S + 1)

    def _expire_in(self, delay: float) -> None:
        """One timer at a time, on the running loop (a test's loop may have closed)."""
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        if self._expiry is not None:
            pending_loop, pending = self._expiry
            if pending_loop is loop and pending.when() <= when:
                return
            pending.cancel()
        self._expiry = (loop, loop.call_at(when, self._expire))

    def _expire(self) -> None:
        self._expiry = None
        cutoff = time.monotonic() - IDLE_S
        old = [c for c in self.idle if c.idle_since <= cutoff]
        self.idle = [c for c in self.idle if c.idle_since > cutoff]
        for child in old:
            self._end_later(child)
        if self.idle:
            self._expire_in(min(c.idle_since for c in self.idle) - cutoff + 1)


_CHILDREN = _Children()


async def run_media_call(
    fn: Callable[..., Any],
    *args: Any,
    on_progress: Callable[[float], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
    **kwargs: Any,
) -> Any:
    """Await `fn(*args, on_progress=..., **kwargs)` run in a media child.

    With `on_stage`, `fn` also gets an `on_stage(name)` callback (its passes: measuring,
    rendering, ...). Cancelling the awaiting task terminates the child at once.
    """
    if on_stage is not None:
        kwargs["_with_stages"] = True
    child = await _CHILDREN.take(_limits())
    try:
        child.conn.send((fn, args, kwargs))
    except (OSError, ValueError):  # it died while idle: a fresh one
        await child.end()
        child = await _Child.start(child.limits)
        child.conn.send((fn, args, kwargs))
    child.calls += 1
    conn, proc = child.conn, child.proc
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def readable() -> None:
        try:
            inbox.put_nowait(conn.recv())
        except (EOFError, OSError):
            loop.remove_reader(conn.fileno())
            inbox.put_nowait(("eof", None))

    loop.add_reader(conn.fileno(), readable)
    clean = False
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
                clean = True
                return payload
            if kind == "error":
                raise _rebuild_error(*payload)
            if kind == "crash":
                raise Retryable(f"media process failed: {payload}", code=WORKER_CRASH)
            await asyncio.to_thread(proc.join, 5)
            raise _died(proc.exitcode)
    finally:
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(conn.fileno())
        # Only a child that answered cleanly serves another call: after an error, a crash or
        # a cancel (this task cancelled mid-call) it is ended, so no call inherits its state.
        if clean and child.reusable():
            _CHILDREN.give_back(child)
        else:
            if not clean and proc.is_alive():
                proc.terminate()
            await child.end()
