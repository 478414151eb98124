"""Keeping a fetched JetStream message from being redelivered while the worker holds it."""

from __future__ import annotations

import asyncio
import logging

from nats.aio.msg import Msg
from nats.errors import Error as NatsError

log = logging.getLogger("audioprep.worker")

MIN_INTERVAL_S = 0.5


async def keep_in_progress(msg: Msg, ack_wait_s: float) -> None:
    """Send +WPI (in progress) every ack_wait/2 until cancelled.

    A heartbeat that fails (NATS reconnecting) is logged once per outage and tried again at
    the next beat: if the outage outlasts ack_wait the message is redelivered, which the
    end-once terminal append makes harmless."""
    interval = max(MIN_INTERVAL_S, ack_wait_s / 2)
    failing = False
    while True:
        await asyncio.sleep(interval)
        try:
            await msg.in_progress()
        except (NatsError, TimeoutError) as exc:
            if not failing:
                log.warning(
                    "in-progress heartbeat failed",
                    extra={"subject": msg.subject, "error": repr(exc)},
                )
            failing = True
        else:
            failing = False
