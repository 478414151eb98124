"""One delivery of one job: the single place where outcomes map to events and ack/nak/term."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import shutil
import socket
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from services.worker.context import JobContext
from shared import subjects
from shared.errors import INTERNAL_ERROR, AudioprepError, Cancelled, Permanent, Retryable
from shared.event_store import EventStore
from shared.events import (
    ErrorInfo,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobRequested,
    JobResult,
    JobRetrying,
    JobStarted,
    decode_event,
)
from shared.settings import Settings
from shared.storage import Storage

log = logging.getLogger("audioprep.worker")

Handler = Callable[[JobContext], Coroutine[Any, Any, JobResult]]
Cleanup = Callable[[JobContext], Coroutine[Any, Any, None]]

BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 60.0
WORKER_NAME = f"{socket.gethostname()}"


def backoff_delay(attempt: int) -> float:
    """Exponential backoff with full jitter: attempt 1 → up to 1 s, 2 → 2 s, 3 → 4 s ..."""
    cap = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (attempt - 1))
    return random.uniform(cap / 2, cap)


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
        self.events = EventStore(nc, js)
        self.handlers = handlers
        self.cleanups = cleanups or {}
        self.worker_name = worker_name
        self.active: dict[str, asyncio.Task[JobResult]] = {}

    async def handle(self, msg: Msg) -> None:
        """Process one delivery; never raises (every outcome becomes an event + ack/nak/term)."""
        try:
            event = decode_event(msg.data)
        except Exception:
            log.error("undecodable request terminated", extra={"subject": msg.subject})
            await msg.term()
            return
        if not isinstance(event, JobRequested):
            await msg.term()
            return
        heartbeat = asyncio.create_task(self._heartbeat(msg))
        try:
            await self._run(msg, event)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def _heartbeat(self, msg: Msg) -> None:
        interval = max(0.5, self.settings.ack_wait_s / 2)
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    async def _finished(self, job_id: str) -> bool:
        names: tuple[subjects.EventName, ...] = ("completed", "failed", "cancelled")
        for name in names:
            if await self.events.last_event(job_id, name) is not None:
                return True
        return False

    async def _cancel_requested(self, job_id: str) -> bool:
        return await self.events.last_event(job_id, "cancel_requested") is not None

    async def _run(self, msg: Msg, request: JobRequested) -> None:
        delivery = msg.metadata.num_delivered or 1
        attempt = request.attempt_base + delivery
        traceparent = (msg.headers or {}).get("traceparent")
        base = {"job_id": request.job_id, "kind": request.kind, "attempt": attempt}
        if traceparent:
            base["trace_id"] = traceparent.split("-")[1] if "-" in traceparent else traceparent

        if await self._finished(request.job_id):
            log.info("already finished, acking redelivery", extra=base)
            await msg.ack_sync()
            return
        if await self._cancel_requested(request.job_id):
            await self._emit_cancelled(request, attempt, traceparent)
            await msg.ack_sync()
            return

        await self.events.append(
            JobStarted(
                job_id=request.job_id,
                kind=request.kind,
                tenant=request.tenant,
                attempt=attempt,
                worker=self.worker_name,
            ),
            traceparent=traceparent,
        )
        log.info("job started", extra=base)
        scratch = Path(tempfile.mkdtemp(prefix=f"audioprep-{request.job_id}-"))
        ctx = JobContext(
            request=request,
            attempt=attempt,
            settings=self.settings,
            storage=self.storage,
            events=self.events,
            js=self.js,
            scratch=scratch,
            traceparent=traceparent,
        )
        try:
            result = await self._run_with_cancel(ctx)
        except Cancelled:
            await self._cleanup(ctx)
            await self._emit_cancelled(request, attempt, traceparent)
            log.info("job cancelled", extra=base)
            await msg.ack_sync()
            return
        except Permanent as exc:
            await self._cleanup(ctx)
            await self._emit_failed(request, attempt, exc, traceparent)
            log.info("job failed", extra={**base, "code": exc.code, "error": exc.message})
            await msg.term()
            return
        except Exception as exc:
            error = exc if isinstance(exc, AudioprepError) else None
            if error is None:
                log.exception("unexpected error in handler", extra=base)
                error = Retryable(f"{type(exc).__name__}: {exc}", code=INTERNAL_ERROR)
            await self._retry_or_fail(msg, ctx, error, delivery)
            return
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        await self.events.append(
            JobCompleted(
                job_id=request.job_id,
                kind=request.kind,
                tenant=request.tenant,
                result=result,
                attempt=attempt,
            ),
            traceparent=traceparent,
        )
        log.info("job completed", extra=base)
        await msg.ack_sync()

    async def _run_with_cancel(self, ctx: JobContext) -> JobResult:
        """Run the handler while listening for JobCancelRequested on the job's subject."""
        handler = self.handlers[ctx.request.kind]
        task: asyncio.Task[JobResult] = asyncio.create_task(handler(ctx))
        self.active[ctx.job_id] = task
        cancelled = asyncio.Event()

        async def on_cancel(_: Msg) -> None:
            cancelled.set()
            task.cancel()

        sub = await self.nc.subscribe(
            subjects.job_event_any_kind(ctx.job_id, "cancel_requested"), cb=on_cancel
        )
        try:
            # The request may have been cancelled between our check and the subscription.
            if await self._cancel_requested(ctx.job_id):
                cancelled.set()
                task.cancel()
            try:
                return await task
            except asyncio.CancelledError:
                if cancelled.is_set():
                    raise Cancelled("cancelled by request") from None
                raise
        finally:
            await ctx.flush_progress()
            self.active.pop(ctx.job_id, None)
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _cleanup(self, ctx: JobContext) -> None:
        cleanup = self.cleanups.get(ctx.request.kind)
        if cleanup is None:
            return
        try:
            await cleanup(ctx)
        except Exception as exc:
            log.warning("cleanup failed", extra=ctx.log_extra(error=str(exc)))

    async def _retry_or_fail(
        self, msg: Msg, ctx: JobContext, error: AudioprepError, delivery: int
    ) -> None:
        request = ctx.request
        base = ctx.log_extra(code=error.code, error=error.message)
        if delivery >= self.settings.max_deliver:
            await self._cleanup(ctx)
            await self._emit_failed(request, ctx.attempt, error, ctx.traceparent)
            log.warning("job failed on last delivery", extra=base)
            await msg.term()
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
            ),
            traceparent=ctx.traceparent,
        )
        log.warning("job will be retried", extra={**base, "delay_s": round(delay, 2)})
        await msg.nak(delay=delay)

    async def _emit_failed(
        self, request: JobRequested, attempt: int, exc: AudioprepError, tp: str | None
    ) -> None:
        info = ErrorInfo(code=exc.code, message=exc.message, retryable=exc.retryable)
        event = JobFailed(
            job_id=request.job_id,
            kind=request.kind,
            tenant=request.tenant,
            error=info,
            attempt=attempt,
        )
        await self.events.append(event, traceparent=tp)

    async def _emit_cancelled(self, request: JobRequested, attempt: int, tp: str | None) -> None:
        event = JobCancelled(
            job_id=request.job_id, kind=request.kind, tenant=request.tenant, attempt=attempt
        )
        await self.events.append(event, traceparent=tp)
