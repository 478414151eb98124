"""Connecting to NATS: one place for reconnect behaviour and clear connection errors."""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit

import nats
from nats.aio.client import Client

from shared.settings import Settings

log = logging.getLogger("audioprep.nats")


class NatsUnavailable(Exception):
    """NATS could not be reached; the message says where and what to do."""


async def _reachable(url: str, timeout: float) -> None:
    """Fail fast with a clear message when no server of the URL list accepts TCP."""
    errors = []
    for server in url.split(","):
        parts = urlsplit(server.strip() if "://" in server else f"nats://{server.strip()}")
        host, port = parts.hostname or "127.0.0.1", parts.port or 4222
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        except (OSError, TimeoutError) as exc:
            errors.append(f"{host}:{port} ({exc.__class__.__name__})")
            continue
        writer.close()
        return
    raise NatsUnavailable(
        f"cannot reach NATS at {url}: {', '.join(errors)}; start it with `audioprep up` "
        "or point AUDIOPREP_NATS_URL at a running server"
    )


async def connect(settings: Settings, name: str, *, connect_timeout: float = 5.0) -> Client:
    """Connect with endless reconnects (a server restart must not kill a service)."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats error", extra={"service": name, "error": str(exc)})

    client: Client | None = None

    async def on_disconnect() -> None:
        if client is not None and not (client.is_closed or client.is_draining):
            log.warning("nats disconnected", extra={"service": name})

    async def on_reconnect() -> None:
        log.info("nats reconnected", extra={"service": name})

    await _reachable(settings.nats_url, connect_timeout)
    try:
        client = await asyncio.wait_for(
            nats.connect(
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
            ),
            timeout=connect_timeout * 2,
        )
    except Exception as exc:  # nats raises several unrelated types here
        raise NatsUnavailable(
            f"cannot reach NATS at {settings.nats_url} ({exc.__class__.__name__}): start it with "
            "`audioprep up` or set AUDIOPREP_NATS_URL"
        ) from exc
    return client
