"""Connecting to NATS: one place for reconnect behaviour and clear connection errors."""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client

from audioprep.shared.settings import Settings

log = logging.getLogger("audioprep.nats")


class NatsUnavailable(Exception):
    """NATS could not be reached; the message says where and what to do."""


def redact_url(url: str) -> str:
    """The URL list without passwords or tokens, for logs and error messages."""
    out = []
    for server in url.split(","):
        parts = urlsplit(server.strip())
        if parts.password is not None or (parts.username and not parts.password):
            user = parts.username if parts.password is not None else "***"
            host = parts.netloc.rpartition("@")[2]
            server = parts._replace(netloc=f"{user}:***@{host}").geturl()
        out.append(server.strip())
    return ",".join(out)


def user_inbox_prefix(user: str) -> str:
    """The inbox prefix of a NATS user (`_INBOX.<user>`): its replies arrive only there."""
    return f"_INBOX.{user}"


def inbox_prefix_for(url: str) -> str:
    """`_INBOX.<user>` when the URL names a user, so NATS permissions can keep inboxes apart."""
    user = urlsplit(url.split(",")[0].strip()).username
    if user and user.replace("-", "").replace("_", "").isalnum():
        return user_inbox_prefix(user)
    return "_INBOX"


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
        f"cannot reach NATS at {redact_url(url)}: {', '.join(errors)}; start it with "
        "`audioprep up` or point AUDIOPREP_NATS_URL at a running server"
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
                # A comma-separated list (a cluster) becomes nats-py's server pool.
                [s.strip() for s in settings.nats_url.split(",") if s.strip()],
                name=f"audioprep-{name}",
                inbox_prefix=inbox_prefix_for(settings.nats_url),
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
            f"cannot reach NATS at {redact_url(settings.nats_url)} ({exc.__class__.__name__}): "
            "start it with "
            "`audioprep up` or set AUDIOPREP_NATS_URL"
        ) from exc
    return client


START_WAIT_S = 60.0  # how long a long-running service waits for NATS at start


async def connect_waiting(settings: Settings, name: str, *, wait_s: float = START_WAIT_S) -> Client:
    """`connect`, retried for `wait_s` at start: a worker, projector or notifier started while
    nats-server (re)starts waits for it instead of exiting (one log line, then quiet)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    said = False
    while True:
        try:
            return await connect(settings, name)
        except NatsUnavailable as exc:
            if loop.time() >= deadline:
                raise
            if not said:
                log.warning("waiting for nats", extra={"service": name, "error": str(exc)})
                said = True
            await asyncio.sleep(0.5)


def is_transient(exc: BaseException) -> bool:
    """True for failures a server restart or leader election explains: retry, don't give up."""
    if isinstance(exc, nats.js.errors.ServiceUnavailableError | nats.js.errors.ServerError):
        return True  # 503/5xx: JetStream not ready yet (restart, leader election)
    if isinstance(exc, nats.js.errors.APIError):
        # 10158: a publish with this Msg-Id is still being stored (our own earlier try);
        # any other API answer is a real answer
        # (nats-py's KV errors are APIErrors without an err_code attribute)
        return getattr(exc, "err_code", None) == 10158
    return isinstance(
        exc,
        TimeoutError
        | nats.errors.TimeoutError
        | nats.errors.NoRespondersError
        | nats.errors.ConnectionReconnectingError
        | nats.errors.StaleConnectionError
        | nats.errors.OutboundBufferLimitError
        | nats.js.errors.NoStreamResponseError
        | ConnectionError,
    )
