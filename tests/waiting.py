"""Waiting in tests: woken by what happens on NATS, never by a fixed sleep.

`wait_until` evaluates a check now and again after every message on the given subjects (a
core NATS subscription: a job's events, a KV key's updates, a delivery's events), until the
check answers. A re-check every `recheck_s` covers a missed wake-up (and anything that changes
without a message, such as a file appearing).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from audioprep.shared.nats_conn import connect
from audioprep.shared.settings import Settings

T = TypeVar("T")

RECHECK_S = 1.0


async def wait_until(
    nc: Client | None,
    subjects: Sequence[str],
    check: Callable[[], Awaitable[T | None]],
    *,
    timeout: float,
    what: str,
    recheck_s: float = RECHECK_S,
) -> T:
    """The first non-None answer of `check`; AssertionError naming `what` after `timeout`.
    Without a connection (`nc` None) it only re-checks every `recheck_s`."""
    woken = asyncio.Event()

    async def wake(_msg: Msg) -> None:
        woken.set()

    subs = [await nc.subscribe(subject, cb=wake) for subject in subjects] if nc else []
    try:
        if nc is not None:
            await nc.flush()  # subscribed before the first check: nothing slips by
        deadline = time.monotonic() + timeout
        while True:
            woken.clear()
            answer = await check()
            if answer is not None:
                return answer
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), min(recheck_s, remaining))
    finally:
        for sub in subs:
            with contextlib.suppress(NatsError):
                await sub.unsubscribe()


_clients: dict[tuple[int, str], Client] = {}


async def client_for(settings: Settings) -> Client:
    """A NATS connection of the tests' own (one per event loop and server), for wake-ups."""
    key = (id(asyncio.get_running_loop()), settings.nats_url)
    nc = _clients.get(key)
    if nc is None or nc.is_closed:
        nc = _clients[key] = await connect(settings, "tests-wait")
    return nc


async def close_clients(nats_url: str | None = None) -> None:
    """Close the wake-up connections (to one server, or all). A test that stops its own
    server closes its connections first: left reconnecting to a server that is gone, they
    kept the session's event loop from closing at the end of the run."""
    for key in [k for k in _clients if nats_url is None or k[1] == nats_url]:
        nc = _clients.pop(key)
        with contextlib.suppress(NatsError, TimeoutError, OSError):
            await asyncio.wait_for(nc.close(), timeout=5)
