"""Where webhooks may be sent: the SSRF guard of URL ingest, applied to receivers.

- At registration (`check_endpoint_url` + `resolve_public`): http(s) only (https outside dev
  mode), no credentials in the URL, no IP literal or local name that points inside, and every
  address the host resolves to must be public.
- At every delivery the host is resolved again and the request goes to the checked address
  itself (Host header and TLS SNI keep the name), so a DNS answer that turns private after
  registration (rebinding) is refused, not connected to. Redirects are never followed.

Hosts in AUDIOPREP_URL_ALLOW_HOSTS skip the address checks (tests use loopback receivers).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import SplitResult

from audioprep.domain.errors import Permanent
from audioprep.shared.settings import Settings
from audioprep.shared.url_guard import (
    ForbiddenUrl,
    check_ip,
    check_literal,
    is_allowed_host,
    normalize_host,
)

MAX_URL_CHARS = 2048

Resolver = Callable[[str, int], Awaitable[list[str]]]


class WebhookUrlError(Exception):
    """A URL refused as a webhook target; `code` is the API's problem code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


async def system_resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (the event loop's getaddrinfo: not blocking)."""
    loop = asyncio.get_running_loop()
    infos: list[Any] = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


# Replaced in tests to simulate a DNS answer that changes between registration and delivery.
resolver: Resolver = system_resolve


def check_endpoint_url(url: str, settings: Settings) -> SplitResult:
    """What can be decided without DNS; raises WebhookUrlError."""
    if len(url) > MAX_URL_CHARS:
        raise WebhookUrlError("invalid_url", f"the URL is longer than {MAX_URL_CHARS} characters")
    try:
        parts = check_literal(url, settings.url_allow_hosts)
    except ForbiddenUrl as exc:
        raise WebhookUrlError("forbidden_url", exc.message) from None
    except Permanent as exc:
        raise WebhookUrlError("invalid_url", exc.message) from None
    if parts.username is not None or parts.password is not None:
        raise WebhookUrlError("invalid_url", "credentials in the URL are not allowed")
    host = normalize_host(parts.hostname or "")
    if (
        parts.scheme.lower() != "https"
        and not settings.dev_mode
        and not is_allowed_host(host, settings.url_allow_hosts)
    ):
        raise WebhookUrlError("invalid_url", "webhook URLs must use https")
    return parts


def default_port(parts: SplitResult) -> int:
    return parts.port or (443 if parts.scheme.lower() == "https" else 80)


async def resolve_public(parts: SplitResult, settings: Settings) -> list[str]:
    """The host's addresses, all of them public (or [] for an allowed host, which is
    connected to by name). Raises ForbiddenUrl, or WebhookUrlError("unresolvable_host")."""
    host = normalize_host(parts.hostname or "")
    if is_allowed_host(host, settings.url_allow_hosts):
        return []
    literal = host.strip("[]")
    try:
        addresses = await resolver(literal, default_port(parts))
    except (OSError, UnicodeError) as exc:
        raise WebhookUrlError("unresolvable_host", f"cannot resolve {host}: {exc}") from None
    if not addresses:
        raise WebhookUrlError("unresolvable_host", f"{host} has no addresses")
    for address in addresses:
        check_ip(host, address)
    return addresses


async def check_registration(url: str, settings: Settings) -> None:
    """The full check the API runs before it stores an endpoint."""
    parts = check_endpoint_url(url, settings)
    try:
        await resolve_public(parts, settings)
    except ForbiddenUrl as exc:
        raise WebhookUrlError("forbidden_url", exc.message) from None
