"""The worker process: one pull loop per kind, bounded concurrency, graceful drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import FetchTimeoutError, NotFoundError, ServiceUnavailableError

from audioprep.domain import kinds
from audioprep.services.worker.heartbeat import keep_in_progress
from audioprep.services.worker.job_runner import Cleanup, Handler, JobRunner
from audioprep.services.worker.slots import PrioritySlots
from audioprep.shared import metrics, names
from audioprep.shared.provision import worker_consumer_config
from audioprep.shared.settings import Settings
from audioprep.shared.storage import Storage

log = logging.getLogger("audioprep.worker")

PRIORITY: dict[kinds.Kind, int] = {"preview": 0, "ingest": 1, "save": 2}
FETCH_TIMEOUT_S = 2.0  # also how long a stopping worker may wait for its fetch loops


class WorkerService:
    """Fetches requests for its kinds and runs at most `concurrency` jobs at once."""

    def __init__(
        self,
        *,
        nc: Client,
        js: JetStreamContext,
        settings: Settings,
        storage: Storage,
        handlers: dict[str, Handler],
        cleanups: dict[str, Cleanup] | None = None,
        kinds: tuple[kinds.Kind, ...] = kinds.KINDS,
        drain_grace_s: float = 30.0,
    ) -> None:
        self.js = js
        self.settings = settings
        self.kinds = kinds
        self.slots = PrioritySlots(max(1, settings.worker_concurrency))
        self.runner = JobRunner(
            nc=nc, js=js, settings=settings, storage=storage, handlers=handlers, cleanups=cleanups
        )
        self.drain_grace_s = drain_grace_s
        self._jobs: set[asyncio.Task[None]] = set()
        self._in_flight: dict[asyncio.Task[None], Msg] = {}

    async def run(self, stop: asyncio.Event, hurry: asyncio.Event | None = None) -> None:
        """Work until `stop` is set, then drain: finish in-flight jobs or hand them back
        (after the grace period, or as soon as `hurry` is set)."""
        loops = [asyncio.create_task(self._fetch_loop(kind, stop)) for kind in self.kinds]
        log.info(
            "worker ready",
            extra={"kinds": ",".join(self.kinds), "concurrency": self.slots.size},
        )
        await stop.wait()
        # Let each loop finish its current fetch (a fetch cut short can strand a message
        # until ack_wait), then cancel whatever is still waiting.
        _, waiting = await asyncio.wait(loops, timeout=FETCH_TIMEOUT_S + 1.0)
        for task in waiting:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        await self._drain(hurry or asyncio.Event())

    async def _drain(self, hurry: asyncio.Event) -> None:
        if not self._jobs:
            return
        log.info("draining", extra={"in_flight": len(self._jobs), "grace_s": self.drain_grace_s})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_grace_s
        hurried = asyncio.create_task(hurry.wait())
        try:
            while self._jobs and not hurry.is_set() and loop.time() < deadline:
                await asyncio.wait(
                    {*self._jobs, hurried},
                    timeout=deadline - loop.time(),
                    return_when=asyncio.FIRST_COMPLETED,
                )
        finally:
            hurried.cancel()
        pending = {task for task in self._jobs if not task.done()}
        for task in pending:
            msg = self._in_flight.get(task)
            task.cancel()
            if msg is not None:
                with contextlib.suppress(Exception):
                    await msg.nak()  # immediate redelivery to another worker
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            log.info("handed back unfinished jobs", extra={"count": len(pending)})

    async def _subscribe(
        self, kind: kinds.Kind, *, recreate: bool = False
    ) -> JetStreamContext.PullSubscription:
        if recreate:
            try:
                await self.js.consumer_info(self.settings.names.stream, names.worker_consumer(kind))
            except NotFoundError:
                # The consumer is gone (a server that lost its state): put it back as
                # provisioned. An existing one is left alone (an operator may have tuned it).
                config = worker_consumer_config(kind, self.settings)
                await self.js.add_consumer(self.settings.names.stream, config)
        return await self.js.pull_subscribe_bind(
            durable=names.worker_consumer(kind), stream=self.settings.names.stream
        )

    async def _fetch_loop(self, kind: kinds.Kind, stop: asyncio.Event) -> None:
        sub: JetStreamContext.PullSubscription | None = None
        while not stop.is_set():
            if sub is None:
                try:
                    sub = await self._subscribe(kind)
                except Exception as exc:
                    log.warning("cannot subscribe yet", extra={"kind": kind, "error": repr(exc)})
                    await asyncio.sleep(1.0)
                    continue
            try:
                msgs = await sub.fetch(1, timeout=FETCH_TIMEOUT_S)
            except (FetchTimeoutError, nats.errors.TimeoutError):
                continue
            except (ServiceUnavailableError, NotFoundError) as exc:
                log.warning(
                    "consumer unavailable, resubscribing", extra={"kind": kind, "error": repr(exc)}
                )
                await asyncio.sleep(1.0)
                with contextlib.suppress(Exception):
                    sub = await self._subscribe(kind, recreate=True)
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("fetch failed", extra={"kind": kind, "error": str(exc)})
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                metrics.job_delivered(kind, msg.metadata.num_delivered)
                await self._start(kind, msg, stop)

    async def _start(self, kind: kinds.Kind, msg: Msg, stop: asyncio.Event) -> None:
        # held (in progress) while it waits for a slot
        waiting = asyncio.create_task(keep_in_progress(msg, self.settings.ack_wait_s))
        acquire = asyncio.create_task(self.slots.acquire(PRIORITY[kind]))
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({acquire, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
            stopping.cancel()
            if not acquire.done() or stop.is_set():
                # Stopping (or cancelled) before a slot came free: hand the message back now.
                acquire.cancel()
                await asyncio.gather(acquire, return_exceptions=True)
                if acquire.done() and not acquire.cancelled() and acquire.exception() is None:
                    self.slots.release()
                with contextlib.suppress(Exception):
                    await msg.nak()
        if stop.is_set():
            return
        task = asyncio.create_task(self._run_one(msg))
        self._jobs.add(task)
        self._in_flight[task] = msg
        task.add_done_callback(self._done)

    async def _run_one(self, msg: Msg) -> None:
        try:
            await self.runner.handle(msg)
        finally:
            self.slots.release()

    def _done(self, task: asyncio.Task[None]) -> None:
        self._jobs.discard(task)
        self._in_flight.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("job task crashed", exc_info=task.exception())
