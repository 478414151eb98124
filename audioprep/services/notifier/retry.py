"""Retrying NATS calls through short outages (restarts, leader elections)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from audioprep.shared.nats_conn import is_transient

log = logging.getLogger("audioprep.notifier")

T = TypeVar("T")
PATIENCE_S = 30.0


async def patiently(
    what: str, call: Callable[[], Awaitable[T]], patience_s: float = PATIENCE_S
) -> T:
    """Retry `call` through transient NATS failures for up to `patience_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience_s
    delay = 0.25
    while True:
        try:
            return await call()
        except Exception as exc:
            if not is_transient(exc) or loop.time() > deadline:
                raise
            log.warning("nats unavailable, retrying", extra={"what": what, "error": repr(exc)})
        await asyncio.sleep(delay)
        delay = min(2.0, delay * 2)
