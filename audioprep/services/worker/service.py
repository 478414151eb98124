"""The worker process: one fetch loop (a slot reserved before each pull request, kinds in
priority order), bounded concurrency, graceful drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import StatusCode
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError

from audioprep.domain import kinds
from audioprep.services.worker.dispatch.dispatcher import Dispatcher
from audioprep.services.worker.job_runner import Cleanup, Handler, JobRunner
from audioprep.services.worker.slots import Slots
from audioprep.shared import metrics, names
from audioprep.shared.provision import work_filter, worker_consumer_config
from audioprep.shared.settings import Settings
from audioprep.shared.storage import Storage

log = logging.getLogger("audioprep.worker")

PRIORITY: dict[kinds.Kind, int] = {"preview": 0, "ingest": 1, "save": 2}
FETCH_TIMEOUT_S = 2.0  # how long a pull request's answer may take; a stopping worker waits for it
WAKE_PULL_S = 0.25  # how long a pull for announced work waits for the stream to store it
SWEEP_S = 1.0  # an idle worker asks every kind this often (redeliveries are not announced)
ERROR_PAUSE_S = 0.5
NO_WAIT = b'{"batch":1,"no_wait":true}'


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
        dispatcher: bool = True,
    ) -> None:
        self.js = js
        self.settings = settings
        self.kinds = kinds
        self.nc = nc
        self.slots = Slots(max(1, settings.worker_concurrency))
        self.runner = JobRunner(
            nc=nc, js=js, settings=settings, storage=storage, handlers=handlers, cleanups=cleanups
        )
        self.drain_grace_s = drain_grace_s
        # Every worker process takes part in dispatching: one of them leads at a time.
        self.dispatcher = Dispatcher(nc=nc, js=js, settings=settings) if dispatcher else None
        self._jobs: set[asyncio.Task[None]] = set()
        self._in_flight: dict[asyncio.Task[None], Msg] = {}

    async def run(self, stop: asyncio.Event, hurry: asyncio.Event | None = None) -> None:
        """Work until `stop` is set, then drain: finish in-flight jobs or hand them back
        (after the grace period, or as soon as `hurry` is set)."""
        fetching = asyncio.create_task(self._fetch_loop(stop))
        dispatching = (
            asyncio.create_task(self.dispatcher.run(stop)) if self.dispatcher is not None else None
        )
        log.info(
            "worker ready",
            extra={
                "kinds": ",".join(self.kinds),
                "concurrency": self.slots.size,
                "dispatch": self.settings.dispatch,
            },
        )
        await stop.wait()
        if dispatching is not None:
            # Step down first: another worker's dispatcher takes over while this one drains.
            try:
                await asyncio.wait_for(dispatching, timeout=FETCH_TIMEOUT_S + 5.0)
            except Exception as exc:
                log.warning("dispatcher did not stop cleanly", extra={"error": repr(exc)})
        # Let the loop have the answer to its pull request (a pull cut short can strand a
        # message until ack_wait), then cancel it if it still waits.
        _, waiting = await asyncio.wait({fetching}, timeout=FETCH_TIMEOUT_S + WAKE_PULL_S + 1.0)
        for task in waiting:
            task.cancel()
        await asyncio.gather(fetching, return_exceptions=True)
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

    async def _fetch_loop(self, stop: asyncio.Event) -> None:
        """Reserve a slot, then find one message for it; start it; again.

        One pull request at a time, each awaited to its answer, so the process never receives
        more messages than it has free slots. With a slot free: the kinds in priority order,
        each asked without waiting (`no_wait`: a consumer with nothing answers at once).
        Nothing anywhere: wait for work to be announced (a core subscription to what the
        consumers take, held only while idle), then ask the announced kinds with a short
        wait (the announcement can arrive before the stream has stored the message); and
        every SWEEP_S ask every kind again (a redelivery — ack_wait, a nak's delay, a
        drained worker's hand-back — is not announced)."""
        ordered = sorted(self.kinds, key=lambda k: PRIORITY[k])
        pulls = {kind: _Pull(self, kind) for kind in ordered}
        announced: set[kinds.Kind] = set()
        woken = asyncio.Event()
        watching: list[Subscription] = []

        def announcer(kind: kinds.Kind) -> Callable[[Msg], Awaitable[None]]:
            async def on_work(msg: Msg) -> None:
                announced.add(kind)
                woken.set()

            return on_work

        async def watch() -> None:
            if watching:
                return
            for kind in ordered:
                subject = work_filter(kind, self.settings)
                watching.append(await self.nc.subscribe(subject, cb=announcer(kind)))

        async def unwatch() -> None:
            subs = watching[:]
            watching.clear()
            for sub in subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

        try:
            while not stop.is_set():
                if self.slots.free > 0:
                    await self.slots.reserve()  # at once
                elif not await _until(self.slots.reserve(), stop):
                    break
                msg: Msg | None = None
                try:
                    msg = await self._find(ordered, pulls, announced, woken, watch, watching, stop)
                finally:
                    if msg is None:
                        self.slots.release()
                if msg is None:
                    break  # stopping
                if self.slots.free == 0:
                    await unwatch()  # busy: nothing to be woken for
                if stop.is_set():  # stopping while the answer came: hand it back now
                    self.slots.release()
                    with contextlib.suppress(Exception):
                        await msg.nak()
                    break
                self._start(msg)
        finally:
            await unwatch()
            for pull in pulls.values():
                await pull.close()

    async def _find(
        self,
        ordered: list[kinds.Kind],
        pulls: dict[kinds.Kind, _Pull],
        announced: set[kinds.Kind],
        woken: asyncio.Event,
        watch: Callable[[], Awaitable[None]],
        watching: list[Subscription],
        stop: asyncio.Event,
    ) -> Msg | None:
        """One message for the slot just reserved, or None once `stop` is set."""
        sweep = True
        while not stop.is_set():
            woken.clear()
            fresh = [k for k in ordered if k in announced]
            announced.clear()
            failed = False
            # Everything the consumers have now, in priority order (several kinds announced:
            # those, in case one was taken by another worker); then what was announced,
            # waiting a little for the stream to store it.
            now = ordered if sweep else fresh if len(fresh) > 1 else []
            plan = [*((k, 0.0) for k in now), *((k, WAKE_PULL_S) for k in fresh)]
            for kind, wait_s in plan:
                msg, ok = await pulls[kind].one(wait_s)
                failed = failed or not ok
                if msg is not None:
                    metrics.job_delivered(kind, msg.metadata.num_delivered)
                    return msg
                if stop.is_set():
                    return None
            if not watching:
                # Subscribed before the next sweep: work announced from now on wakes us,
                # anything announced before it is found by that sweep.
                await watch()
                sweep = True
                continue
            if failed:  # a consumer that cannot answer: not in a tight loop
                await _until(asyncio.sleep(ERROR_PAUSE_S), stop)
            sweep = not await _until(woken.wait(), stop, timeout=SWEEP_S)
        return None

    def _start(self, msg: Msg) -> None:
        """Run a message in the slot reserved for it."""
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


async def _until(
    work: Coroutine[Any, Any, Any], stop: asyncio.Event, timeout: float | None = None
) -> bool:
    """Run `work` until it finishes (True), `stop` is set or `timeout` passes (False: it is
    cancelled; one that finished anyway counts as finished)."""
    task = asyncio.ensure_future(work)
    if not stop.is_set():
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait(
                {task, stopping}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stopping.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return task.done() and not task.cancelled() and task.exception() is None


class _Pull:
    """One kind's pull subscription: a single pull request at a time, awaited to its answer."""

    def __init__(self, service: WorkerService, kind: kinds.Kind) -> None:
        self.service = service
        self.kind = kind
        self.sub: JetStreamContext.PullSubscription | None = None

    async def one(self, wait_s: float) -> tuple[Msg | None, bool]:
        """(a message or None, whether the consumer answered). `wait_s` 0: only what the
        consumer has now; else wait that long for one."""
        if self.sub is None:
            try:
                self.sub = await self.service._subscribe(self.kind)
            except Exception as exc:
                log.warning("cannot subscribe yet", extra={"kind": self.kind, "error": repr(exc)})
                return None, False
        try:
            return await self._request(self.sub, wait_s), True
        except ServiceUnavailableError as exc:
            log.warning(
                "consumer unavailable, resubscribing", extra={"kind": self.kind, "error": repr(exc)}
            )
            await self.close()
            with contextlib.suppress(Exception):
                self.sub = await self.service._subscribe(self.kind, recreate=True)
        except nats.errors.TimeoutError:
            # No answer in time (a connection in trouble): a late one must not wait in this
            # inbox for a later request, so the inbox goes (its message comes back after
            # ack_wait).
            log.warning("pull request unanswered", extra={"kind": self.kind})
            await self.close()
        except Exception as exc:
            log.warning("fetch failed", extra={"kind": self.kind, "error": str(exc)})
        return None, False

    async def _request(self, sub: JetStreamContext.PullSubscription, wait_s: float) -> Msg | None:
        # nats-py's fetch() has no single-message no_wait request, nor one that leaves
        # nothing behind when it times out; this is its pull request, with its inbox.
        inbox: Subscription = sub._sub
        body = b'{"batch":1,"expires":%d}' % int(wait_s * 1e9) if wait_s > 0 else NO_WAIT
        await self.service.nc.publish(sub._nms, body, reply=sub._deliver)
        while True:
            msg = await inbox.next_msg(timeout=wait_s + FETCH_TIMEOUT_S)
            status = JetStreamContext.is_status_msg(msg)
            if status is None:
                return msg
            if status in (StatusCode.NO_MESSAGES, StatusCode.REQUEST_TIMEOUT, StatusCode.CONFLICT):
                return None  # nothing now / expired / a consumer busy or being deleted
            if status == StatusCode.CONTROL_MESSAGE:
                continue
            raise APIError.from_msg(msg)

    async def close(self) -> None:
        sub, self.sub = self.sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
