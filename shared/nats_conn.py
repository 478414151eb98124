"""Connecting to NATS: one place for reconnect behaviour and clear connection errors."""

from __future__ import annotations

import logging

import nats
from nats.aio.client import Client

from shared.settings import Settings

log = logging.getLogger("audioprep.nats")


class NatsUnavailable(Exception):
    """NATS could not be reached; the message says where and what to do."""


async def connect(settings: Settings, name: str, *, connect_timeout: float = 5.0) -> Client:
    """Connect with endless reconnects (a server restart must not kill a service)."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats error", extra={"service": name, "error": str(exc)})

    async def on_disconnect() -> None:
        log.warning("nats disconnected", extra={"service": name})

    async def on_reconnect() -> None:
        log.info("nats reconnected", extra={"service": name})

    try:
        return await nats.connect(
            settings.nats_url,
            name=f"audioprep-{name}",
            connect_timeout=connect_timeout,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            ping_interval=5,
            max_outstanding_pings=3,
            error_cb=on_error,
            disconnected_cb=on_disconnect,
            reconnected_cb=on_reconnect,
        )
    except Exception as exc:  # nats raises several unrelated types here
        raise NatsUnavailable(
            f"cannot reach NATS at {settings.nats_url} ({exc.__class__.__name__}): start it with "
            "`audioprep up` or set AUDIOPREP_NATS_URL"
        ) from exc
