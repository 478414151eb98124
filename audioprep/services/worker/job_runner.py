"""One delivery of one job: the single place where outcomes map to events and ack/nak/term."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import shutil
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from audioprep.domain.errors import (
    INTERNAL_ERROR,
    MEDIA_CRASH,
    UNSUPPORTED_MEDIA,
    AudioprepError,
    Cancelled,
    Permanent,
    Retryable,
    Superseded,
)
from audioprep.domain.events import (
    ErrorInfo,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobReleased,
    JobRequested,
    JobResult,
    JobRetrying,
    JobStarted,
    JobUsage,
    decode_event,
)
from audioprep.services.worker.context import JobContext
from audioprep.services.worker.heartbeat import keep_in_progress
from audioprep.shared import logs, metrics
from audioprep.shared.event_store import EventStore
from audioprep.shared.names import Names
from audioprep.shared.nats_conn import is_transient
from audioprep.shared.settings import Settings
from audioprep.shared.storage import Storage

log = logging.getLogger("audioprep.worker")

Handler = Callable[[JobContext], Coroutine[Any, Any, JobResult]]
Cleanup = Callable[[JobContext], Coroutine[Any, Any, None]]

BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 60.0
WORKER_NAME = f"{socket.gethostname()}:{os.getpid()}"  # which process ran an attempt
# How long to keep retrying a terminal event or an ack through a NATS outage (a restart, a
# leader election) before handing the message back; the heartbeat holds it meanwhile.
RECORD_PATIENCE_S = 30.0
T = TypeVar("T")


SCRATCH_PREFIX = "audioprep-w"


def scratch_root() -> Path:
    """This process's scratch parent: a SIGKILLed worker's leftovers are found by pid."""
    root = Path(tempfile.gettempdir()) / f"{SCRATCH_PREFIX}{os.getpid()}"
    root.mkdir(mode=0o700, exist_ok=True)
    return root


def sweep_dead_scratch() -> int:
    """Remove scratch dirs of worker processes that no longer exist (killed mid-job)."""
    removed = 0
    for path in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*"):
        pid = path.name.removeprefix(SCRATCH_PREFIX)
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
            removed += 1
        except PermissionError:
            pass  # alive, someone else's
    return removed


def backoff_delay(attempt: int) -> float:
    """Exponential backoff with full jitter: attempt 1 → up to 1 s, 2 → 2 s, 3 → 4 s ..."""
    cap = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (attempt - 1))
    return random.uniform(cap / 2, cap)


class CancelWatch:
    """One subscription to every cancel request, for the jobs this process runs: an attempt
    registers before its JobStarted, so no cancel published after it can slip by (and one
    published before it makes JobStarted's expected-sequence append fail, see JobRunner._run)."""

    def __init__(self, nc: Client, names: Names) -> None:
        self.nc = nc
        self.names = names
        self._sub: Subscription | None = None
        self._jobs: dict[str, set[asyncio.Event]] = {}

    async def start(self) -> None:
        if self._sub is None:
            self._sub = await self.nc.subscribe(
                self.names.cancel_requested_filter(), cb=self._on_cancel
            )
            await self.nc.flush()  # the server has it before any attempt relies on it

    async def _on_cancel(self, msg: Msg) -> None:
        try:
            _, job_id, _ = self.names.parse_subject(msg.subject)
        except ValueError:
            return
        for flag in self._jobs.get(job_id, ()):
            flag.set()

    @contextlib.contextmanager
    def watching(self, job_id: str) -> Iterator[asyncio.Event]:
        """An event set when a cancel of `job_id` arrives while the block runs."""
        flag = asyncio.Event()
        self._jobs.setdefault(job_id, set()).add(flag)
        try:
            yield flag
        finally:
            flags = self._jobs.get(job_id)
            if flags is not None:
                flags.discard(flag)
                if not flags:
                    del self._jobs[job_id]


class _Early:
    """A release that carries its request's `attempt_base`: JobStarted can be appended while
    the request is read (one round trip instead of two before the work starts)."""

    def __init__(self, events: EventStore, release: JobReleased) -> None:
        assert release.attempt_base is not None
        self.events = events
        self.release = release
        self.attempt_base = release.attempt_base

    async def gather(
        self,
        started: Awaitable[int | None],
        patiently: Callable[[str, Callable[[], Awaitable[JobRequested | None]]], Awaitable[Any]],
    ) -> tuple[int | None, JobRequested | None]:
        """(JobStarted's sequence or None, the request or None if it is gone), both awaited."""
        seq = self.release.request_seq
        read = asyncio.ensure_future(patiently("request", lambda: self.events.request_at(seq)))
        try:
            own_seq = await started
        except BaseException:
            read.cancel()
            raise
        request: JobRequested | None = await read
        return own_seq, request


class JobRunner:
    """Runs handlers for delivered messages with heartbeats, cancel watch and typed outcomes."""

    def __init__(
        self,
        *,
        nc: Client,
        js: JetStreamContext,
        settings: Settings,
        storage: Storage,
        handlers: dict[str, Handler],
        cleanups: dict[str, Cleanup] | None = None,
        worker_name: str = WORKER_NAME,
    ) -> None:
        self.nc = nc
        self.js = js
        self.settings = settings
        self.storage = storage
        self.events = EventStore(nc, js, settings.names)
        self.handlers = handlers
        self.cleanups = cleanups or {}
        self.worker_name = worker_name
        self.cancels = CancelWatch(nc, settings.names)
        if swept := sweep_dead_scratch():
            log.info("removed scratch dirs of dead workers", extra={"count": swept})

    async def handle(self, msg: Msg) -> None:
        """Process one delivery; never raises (every outcome becomes an event + ack/nak/term).

        The message is the job's JobRequested (fifo dispatch) or its JobReleased (fair
        dispatch: the request is read at the sequence it names; with the release's
        `attempt_base` that read runs while JobStarted is appended)."""
        try:
            event = decode_event(msg.data)
        except msgspec.DecodeError:
            log.error("undecodable request terminated", extra={"subject": msg.subject})
            await msg.term()
            return
        first = (msg.metadata.num_delivered or 1) == 1
        if isinstance(event, JobReleased) and event.attempt_base is not None and first:
            await self._delivered(msg, event.job_id, _Early(self.events, event))
            return
        if isinstance(event, JobReleased):
            try:
                request = await self.events.request_at(event.request_seq)
            except Exception as exc:
                log.warning(
                    "request not readable yet, handing back",
                    extra={"job_id": event.job_id, "error": repr(exc)},
                )
                with contextlib.suppress(Exception):
                    await msg.nak(delay=backoff_delay(msg.metadata.num_delivered or 1))
                return
            if request is None:
                log.error("released job without its request", extra={"job_id": event.job_id})
                await msg.term()
                return
        elif isinstance(event, JobRequested):
            request = event
        else:
            await msg.term()
            return
        await self._delivered(msg, request.job_id, request)

    async def _delivered(self, msg: Msg, job_id: str, request: JobRequested | _Early) -> None:
        """Run one delivery with its heartbeat; a failure hands the message back."""
        heartbeat = asyncio.create_task(keep_in_progress(msg, self.settings.ack_wait_s))
        running: list[JobRequested] = []  # the request, once known (metrics)
        try:
            await self._run(msg, request, running)
        except Exception as exc:
            # NATS went away mid-job (or a bug): hand the message back; a redelivery finds the
            # terminal event if we managed to write it, and acks.
            log.warning(
                "delivery not finished, handing back",
                extra={"job_id": job_id, "error": repr(exc)},
            )
            with contextlib.suppress(Exception):
                await msg.nak(delay=backoff_delay(msg.metadata.num_delivered or 1))
        finally:
            for known in running:
                metrics.run_ends(known)
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def _finished(self, job_id: str) -> bool:
        return await self.events.terminal_event(job_id) is not None

    async def _patiently(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Retry `call` through transient NATS failures for up to RECORD_PATIENCE_S."""
        deadline = asyncio.get_running_loop().time() + RECORD_PATIENCE_S
        delay = 0.25
        while True:
            try:
                return await call()
            except Exception as exc:
                if not is_transient(exc) or asyncio.get_running_loop().time() > deadline:
                    raise
                log.warning("nats unavailable, retrying", extra={"what": what, "error": repr(exc)})
            await asyncio.sleep(delay)
            delay = min(2.0, delay * 2)

    async def _ack(self, msg: Msg) -> None:
        await self._patiently("ack", msg.ack_sync)

    async def _terminal(
        self,
        event: JobCompleted | JobFailed | JobCancelled,
        tp: str | None,
        own_seq: int | None = None,
    ) -> None:
        """Record the job's end exactly once. While every event of the job since the delivery
        is this attempt's own (`own_seq`: the latest of them), appending right after it is
        enough: nothing else, so no other end, came in between, and the delivery was the
        job's latest event when it started. Otherwise (or if that append finds something
        after all) EventStore.append_terminal looks first."""

        async def record() -> int | None:
            if own_seq is not None:
                seq = await self.events.append_expecting(event, own_seq, traceparent=tp)
                if seq is not None:
                    return seq
            return await self.events.append_terminal(event, traceparent=tp)

        seq = await self._patiently(event.name, record)
        metrics.job_ended(event, recorded=seq is not None)
        if seq is not None:
            metrics.tenant_job_ended(
                event.tenant,
                event.kind,
                event.name,
                event.usage,
                self.settings.metrics_max_tenants,
            )
        if seq is None:
            log.info(
                "job had already ended; nothing recorded",
                extra={"job_id": event.job_id, "kind": event.kind, "event": event.name},
            )

    async def _latest_is(self, msg: Msg, job_id: str) -> bool:
        """The delivered message is still its job's latest event (one direct get)."""
        latest = await self.events.last_event(job_id)
        return latest is not None and latest.seq == msg.metadata.sequence.stream

    async def _cancel_requested(self, job_id: str) -> bool:
        return await self.events.last_event(job_id, "cancel_requested") is not None

    async def _run(
        self, msg: Msg, delivered: JobRequested | _Early, running: list[JobRequested]
    ) -> None:
        """JobStarted right after the delivered message (expected last sequence): if it is
        appended, the delivery was still the job's latest event, so the job has neither ended
        nor been cancelled, and every later event of the attempt can follow its own previous
        one (`own_seq`). If anything came between (a cancel, another attempt, the end), the
        append is refused and the full checks decide. A first delivery tries that append at
        once (nearly always the case that holds); a redelivery, whose message is rarely still
        the latest, reads the job's latest event first, so it publishes no JobStarted that the
        server refuses (core subscribers see every publish). A render-cache hit
        (`from_cache`) was requested and completed in one atomic batch: straight to the
        checks."""
        delivery = msg.metadata.num_delivered or 1
        early: _Early | None = None
        known: JobRequested | None = None
        head: JobRequested | JobReleased
        if isinstance(delivered, _Early):
            early, head = delivered, delivered.release
        else:
            known = head = delivered
        attempt = delivered.attempt_base + delivery
        traceparent = (msg.headers or {}).get("traceparent")
        base = {"job_id": head.job_id, "kind": head.kind, "attempt": attempt}
        if trace_id := logs.trace_id_of(traceparent):
            base["trace_id"] = trace_id
        logs.bind(**base)  # handler logs carry job_id, kind, attempt, trace_id

        started = JobStarted(
            job_id=head.job_id,
            kind=head.kind,
            tenant=head.tenant,
            attempt=attempt,
            worker=self.worker_name,
        )
        at = msg.metadata.sequence.stream

        async def append_started() -> int | None:
            return await self._patiently(
                "started",
                lambda: self.events.append_expecting(started, at, traceparent=traceparent),
            )

        await self.cancels.start()
        with self.cancels.watching(head.job_id) as cancel_flag:
            own_seq: int | None = None
            if early is not None:
                own_seq, found = await early.gather(append_started(), self._patiently)
                if found is None:
                    await self._request_missing(msg, early.release, attempt, traceparent, own_seq)
                    return
                request = found
            else:
                assert known is not None
                request = known
                if not request.from_cache and (
                    delivery == 1 or await self._latest_is(msg, request.job_id)
                ):
                    own_seq = await append_started()
            metrics.run_begins(request)
            running.append(request)
            if own_seq is None:
                if await self._finished(request.job_id):
                    log.info("already finished, acking redelivery", extra=base)
                    await self._ack(msg)
                    return
                if await self._cancel_requested(request.job_id):
                    await self._emit_cancelled(request, attempt, traceparent)
                    await self._ack(msg)
                    return
                # Through a leader election, not by handing the delivery back: each hand-back
                # uses up one of the job's max_deliver deliveries (an outage must not
                # dead-letter it).
                await self._patiently(
                    "started", lambda: self.events.append(started, traceparent=traceparent)
                )
            await self._attempt(msg, request, attempt, traceparent, base, own_seq, cancel_flag)

    async def _request_missing(
        self,
        msg: Msg,
        release: JobReleased,
        attempt: int,
        traceparent: str | None,
        own_seq: int | None,
    ) -> None:
        """A release whose request is no longer in the stream (aged out): nothing to run. If
        our JobStarted went in, the job ends failed here rather than stay running."""
        log.error("released job without its request", extra={"job_id": release.job_id})
        if own_seq is not None:
            failed = JobFailed(
                job_id=release.job_id,
                kind=release.kind,
                tenant=release.tenant,
                error=ErrorInfo(
                    code=INTERNAL_ERROR,
                    message="the job's request is no longer in the stream",
                    retryable=False,
                ),
                attempt=attempt,
            )
            await self._terminal(failed, traceparent, own_seq)
        await self._patiently("term", msg.term)

    async def _attempt(
        self,
        msg: Msg,
        request: JobRequested,
        attempt: int,
        traceparent: str | None,
        base: dict[str, object],
        own_seq: int | None,
        cancel_flag: asyncio.Event,
    ) -> None:
        delivery = msg.metadata.num_delivered or 1
        metrics.job_started(request.kind)
        log.info("job started", extra=base)
        scratch = Path(tempfile.mkdtemp(prefix=f"{request.job_id}-", dir=scratch_root()))
        ctx = JobContext(
            request=request,
            attempt=attempt,
            settings=self.settings,
            storage=self.storage,
            events=self.events,
            js=self.js,
            scratch=scratch,
            traceparent=traceparent,
            own_seq=own_seq,
        )
        began = time.monotonic()
        try:
            result = await self._run_with_cancel(ctx, cancel_flag)
        except Superseded:
            # Another attempt ended the job while this one ran (we were frozen or cut off
            # past ack_wait): its outputs and its ending stand; nothing to clean up or record.
            log.info("job already ended by another attempt; storing nothing", extra=base)
            await self._ack(msg)
            return
        except Cancelled:
            await self._cleanup(ctx)
            await self._emit_cancelled(request, attempt, traceparent, _spent(began), ctx.own_seq)
            log.info("job cancelled", extra=base)
            await self._ack(msg)
            return
        except Permanent as exc:
            await self._cleanup(ctx)
            await self._emit_failed(request, attempt, exc, traceparent, _spent(began), ctx.own_seq)
            log.info("job failed", extra={**base, "code": exc.code, "error": exc.message})
            await self._patiently("term", msg.term)
            return
        except Exception as exc:
            error = exc if isinstance(exc, AudioprepError) else None
            if error is None:
                log.exception("unexpected error in handler", extra=base)
                error = Retryable(f"{type(exc).__name__}: {exc}", code=INTERNAL_ERROR)
            await self._retry_or_fail(msg, ctx, error, delivery, _spent(began))
            return
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        await self._terminal(
            JobCompleted(
                job_id=request.job_id,
                kind=request.kind,
                tenant=request.tenant,
                result=result,
                attempt=attempt,
                usage=_used(ctx, result, began),
            ),
            traceparent,
            ctx.own_seq,
        )
        log.info("job completed", extra=base)
        await self._ack(msg)

    async def _run_with_cancel(self, ctx: JobContext, cancel_flag: asyncio.Event) -> JobResult:
        """Run the handler; a JobCancelRequested for the job (CancelWatch) cancels it."""
        handler = self.handlers[ctx.request.kind]
        task: asyncio.Task[JobResult] = asyncio.create_task(handler(ctx))

        async def on_cancel() -> None:
            await cancel_flag.wait()
            task.cancel()

        watcher = asyncio.create_task(on_cancel())
        try:
            # Requested before our JobStarted (then its expected-sequence append failed, so
            # own_seq is None) and already stored: only a read finds it.
            if ctx.own_seq is None and await self._cancel_requested(ctx.job_id):
                cancel_flag.set()
            try:
                return await task
            except asyncio.CancelledError:
                if cancel_flag.is_set():
                    raise Cancelled("cancelled by request") from None
                raise
        finally:
            watcher.cancel()
            await ctx.flush_progress()

    async def _cleanup(self, ctx: JobContext) -> None:
        cleanup = self.cleanups.get(ctx.request.kind)
        if cleanup is None:
            return
        with contextlib.suppress(Exception):  # can't tell: clean up as before
            if await self._finished(ctx.job_id):
                # Another attempt ended the job while this one ran: the files at the job's
                # keys are that attempt's, described by its terminal event. Leave them.
                log.info("job ended by another attempt; outputs left", extra=ctx.log_extra())
                return
        try:
            await cleanup(ctx)
        except Exception as exc:
            log.warning("cleanup failed", extra=ctx.log_extra(error=str(exc)))

    async def _retry_or_fail(
        self, msg: Msg, ctx: JobContext, error: AudioprepError, delivery: int, usage: JobUsage
    ) -> None:
        request = ctx.request
        if error.code == MEDIA_CRASH and await self._crashed_before(request.job_id):
            # The same input killed a media child twice (SIGSEGV in FFmpeg, a resource
            # limit): a third try would crash again. Fail now instead of burning deliveries.
            error = Permanent(
                f"{error.message}; the second crash on this input, so it is not retried",
                code=UNSUPPORTED_MEDIA,
            )
            delivery = self.settings.max_deliver
        base = ctx.log_extra(code=error.code, error=error.message)
        if delivery >= self.settings.max_deliver:
            await self._cleanup(ctx)
            await self._emit_failed(
                request, ctx.attempt, error, ctx.traceparent, usage, ctx.own_seq
            )
            log.warning("job failed on last delivery", extra=base)
            await self._patiently("term", msg.term)
            return
        delay = backoff_delay(delivery)
        await self.events.append(
            JobRetrying(
                job_id=request.job_id,
                kind=request.kind,
                tenant=request.tenant,
                attempt=ctx.attempt,
                error=ErrorInfo(code=error.code, message=error.message, retryable=True),
                delay_ms=int(delay * 1000),
                usage=usage,
            ),
            traceparent=ctx.traceparent,
        )
        metrics.job_retrying(request, error.code)
        metrics.tenant_attempt_used(request.tenant, usage, self.settings.metrics_max_tenants)
        log.warning("job will be retried", extra={**base, "delay_s": round(delay, 2)})
        await msg.nak(delay=delay)

    async def _crashed_before(self, job_id: str) -> bool:
        """An earlier attempt of this job was retried because its media child crashed."""
        try:
            history = await self.events.history(job_id)
        except Exception as exc:  # can't tell: retry as usual
            log.warning("history unavailable", extra={"job_id": job_id, "error": repr(exc)})
            return False
        return any(
            isinstance(e.event, JobRetrying) and e.event.error.code == MEDIA_CRASH for e in history
        )

    async def _emit_failed(
        self,
        request: JobRequested,
        attempt: int,
        exc: AudioprepError,
        tp: str | None,
        usage: JobUsage | None = None,
        own_seq: int | None = None,
    ) -> None:
        info = ErrorInfo(code=exc.code, message=exc.message, retryable=exc.retryable)
        event = JobFailed(
            job_id=request.job_id,
            kind=request.kind,
            tenant=request.tenant,
            error=info,
            attempt=attempt,
            usage=usage,
        )
        await self._terminal(event, tp, own_seq)

    async def _emit_cancelled(
        self,
        request: JobRequested,
        attempt: int,
        tp: str | None,
        usage: JobUsage | None = None,
        own_seq: int | None = None,
    ) -> None:
        event = JobCancelled(
            job_id=request.job_id,
            kind=request.kind,
            tenant=request.tenant,
            attempt=attempt,
            usage=usage,
        )
        await self._terminal(event, tp, own_seq)


def _spent(began: float) -> JobUsage:
    """An attempt that did not complete used its worker time, and left nothing stored."""
    return JobUsage(processing_ms=int((time.monotonic() - began) * 1000))


def _used(ctx: JobContext, result: JobResult, began: float) -> JobUsage:
    """What a completed attempt used (docs/fairness.md, "Usage"): its worker time, the
    source it read, the audio it wrote and the bytes it stored."""
    duration = result.duration_ms or 0
    if result.outputs:  # a save with several files: the audio of each
        duration = sum(o.duration_ms or 0 for o in result.outputs)
    rendered = ctx.request.kind != "ingest"
    return JobUsage(
        processing_ms=int((time.monotonic() - began) * 1000),
        input_audio_ms=ctx.input_audio_ms if rendered else duration,
        output_audio_ms=duration if rendered else 0,
        bytes_stored=ctx.stored_bytes,
    )
