"""One HTTP POST to a receiver, through the SSRF guard, never following redirects.

The connection pool's network backend resolves the host itself at connect time and refuses
non-public answers, then connects to the checked address; TLS still verifies the certificate
for the host name (SNI and pool keys keep the name). So the address checked is the address
connected to: no gap for DNS rebinding between a check and the connect.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpcore

from audioprep.shared import webhook_url
from audioprep.shared.settings import Settings
from audioprep.shared.url_guard import ForbiddenUrl, check_ip, is_allowed_host, normalize_host
from audioprep.shared.webhook_url import WebhookUrlError

USER_AGENT = "audioprep-webhooks/1"
_SOCKET_OPTION = (
    tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]
)


@dataclass(frozen=True, slots=True)
class SendResult:
    """What one attempt gave: a status, or an error code (`timeout`, `connect_error`,
    `forbidden_address`, `unresolvable_host`, `http_error`)."""

    status_code: int | None
    error: str | None
    message: str | None
    seconds: float

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class _Refused(Exception):
    """Raised inside the pool; carries the guard's refusal out of httpcore."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class GuardedBackend(httpcore.AnyIOBackend):
    """Resolve, check every answer, then connect to a checked address."""

    def __init__(self, allow_hosts: frozenset[str]) -> None:
        self.allow_hosts = allow_hosts

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[_SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        name = normalize_host(host)
        if is_allowed_host(name, self.allow_hosts):
            return await super().connect_tcp(host, port, timeout, local_address, socket_options)
        try:
            addresses = await webhook_url.resolver(name.strip("[]"), port)
        except (OSError, UnicodeError) as exc:
            raise _Refused("unresolvable_host", f"cannot resolve {name}: {exc}") from None
        if not addresses:
            raise _Refused("unresolvable_host", f"{name} has no addresses")
        try:
            for address in addresses:
                check_ip(name, address)
        except ForbiddenUrl as exc:
            raise _Refused("forbidden_address", exc.message) from None
        last: Exception | None = None
        for address in addresses:
            try:
                return await super().connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError as exc:  # try the next address
                last = exc
        assert last is not None
        raise last


class Sender:
    """A connection pool for every receiver; `post` never raises for network trouble."""

    def __init__(self, settings: Settings) -> None:
        self.timeout_s = settings.webhook_timeout_s
        self.pool = httpcore.AsyncConnectionPool(
            max_connections=max(8, settings.webhook_concurrency * 2),
            max_keepalive_connections=max(8, settings.webhook_concurrency),
            keepalive_expiry=30.0,
            network_backend=GuardedBackend(settings.url_allow_hosts),
        )

    async def close(self) -> None:
        await self.pool.aclose()

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> SendResult:
        start = time.monotonic()
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return SendResult(None, "invalid_url", "not an http(s) URL", 0.0)
        all_headers = [
            ("User-Agent", USER_AGENT),
            ("Content-Type", "application/json"),
            *headers.items(),
        ]
        t = self.timeout_s
        try:
            async with asyncio.timeout(t):
                async with self.pool.stream(
                    "POST",
                    url,
                    headers=all_headers,
                    content=body,
                    extensions={"timeout": {"connect": t, "read": t, "write": t, "pool": t}},
                ) as response:
                    status = response.status
        except _Refused as exc:
            return _failed(exc.code, exc.message, start)
        except (TimeoutError, httpcore.TimeoutException):
            return _failed("timeout", f"no answer within {t:g} s", start)
        except httpcore.ConnectError as exc:
            return _failed("connect_error", str(exc) or "connection refused", start)
        except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol) as exc:
            return _failed("http_error", f"{type(exc).__name__}: {exc}", start)
        except WebhookUrlError as exc:
            return _failed(exc.code, exc.message, start)
        seconds = _since(start)
        if 200 <= status < 300:
            return SendResult(status, None, None, seconds)
        return SendResult(status, f"http_{status}", f"the receiver answered {status}", seconds)


def _since(start: float) -> float:
    return time.monotonic() - start


def _failed(code: str, message: str, start: float) -> SendResult:
    return SendResult(None, code, message[:500], _since(start))
