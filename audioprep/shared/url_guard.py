"""SSRF guard for URL ingest: public http(s) targets only, checked after DNS resolution.

Three layers, all built on `check_ip`:
- `check_literal`: what can be decided without DNS (scheme, IP literals, `localhost`), used by
  the API to answer 422 at once;
- `check_url`: the same plus resolving the host, used by the worker before yt-dlp starts;
- `guarded_resolver`: replaces `socket.getaddrinfo` for the duration of a fetch (in the
  fetch's own child process), so every connection yt-dlp opens, including each redirect hop
  and every fragment, is checked on the very addresses it is about to connect to (no gap for
  DNS rebinding between check and connect).
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import SplitResult, urlsplit

from audioprep.domain.errors import (
    DOWNLOAD_FAILED,
    FORBIDDEN_URL,
    SOURCE_NOT_FOUND,
    UNSUPPORTED_URL,
    Permanent,
    Retryable,
)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


class ForbiddenUrl(Permanent):
    """The URL points at a private, loopback, link-local or otherwise internal address."""

    default_code = FORBIDDEN_URL


def normalize_host(host: str) -> str:
    return host.strip().lower().rstrip(".")


def is_allowed_host(host: str, allow_hosts: frozenset[str]) -> bool:
    """Hosts configured in AUDIOPREP_URL_ALLOW_HOSTS bypass the address checks."""
    return normalize_host(host) in allow_hosts


def is_forbidden_ip(ip: IPAddress) -> bool:
    """True for anything but a public unicast address (embedded IPv4 forms included)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return True  # ::ffff:a.b.c.d: refuse outright, whatever a.b.c.d is
        embedded = ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None and is_forbidden_ip(embedded):
            return True
        if ip in _NAT64:
            return is_forbidden_ip(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return bool(
        not ip.is_global
        or ip.is_multicast
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_unspecified
        or ip.is_reserved
    )


def check_ip(host: str, address: str) -> None:
    """Raise ForbiddenUrl when `address` (what `host` resolved to) is not public."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError as exc:
        raise ForbiddenUrl(f"{host} resolved to an unparseable address {address!r}") from exc
    if is_forbidden_ip(ip):
        raise ForbiddenUrl(f"{host} points at a non-public address ({ip})")


def parse_literal_ip(host: str) -> IPAddress | None:
    """An IP literal, including legacy IPv4 forms such as `2130706433` or `0x7f.1`."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    if host and all(ch in "0123456789abcdefx." for ch in host.lower()):
        with contextlib.suppress(OSError):
            return ipaddress.IPv4Address(socket.inet_aton(host))
    return None


def split_http_url(url: str) -> SplitResult:
    """Parse an absolute http(s) URL with a host, or raise Permanent(unsupported_url)."""
    try:
        parts = urlsplit(url.strip())
        _ = parts.port  # a bad port raises here
    except ValueError as exc:
        raise Permanent(f"not a valid URL: {exc}", code=UNSUPPORTED_URL) from exc
    if parts.scheme.lower() not in ("http", "https"):
        raise Permanent("only http and https URLs are supported", code=UNSUPPORTED_URL)
    if not parts.hostname:
        raise Permanent("the URL has no host", code=UNSUPPORTED_URL)
    return parts


def check_literal(url: str, allow_hosts: frozenset[str]) -> SplitResult:
    """Everything decidable without DNS: scheme, host present, IP literals, local names."""
    parts = split_http_url(url)
    host = normalize_host(parts.hostname or "")
    if is_allowed_host(host, allow_hosts):
        return parts
    if host in _LOCAL_NAMES or host.endswith(".localhost"):
        raise ForbiddenUrl(f"{host} is a local name")
    ip = parse_literal_ip(host)
    if ip is not None:
        check_ip(host, str(ip))
    return parts


def check_url(url: str, allow_hosts: frozenset[str]) -> None:
    """`check_literal` plus: every address the host resolves to must be public."""
    parts = check_literal(url, allow_hosts)
    host = normalize_host(parts.hostname or "")
    if is_allowed_host(host, allow_hosts):
        return
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    try:
        infos = _real_getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
            raise Permanent(f"no such host: {host}", code=SOURCE_NOT_FOUND) from exc
        raise Retryable(f"cannot resolve {host}: {exc}", code=DOWNLOAD_FAILED) from exc
    except OSError as exc:
        raise Retryable(f"cannot resolve {host}: {exc}", code=DOWNLOAD_FAILED) from exc
    for info in infos:
        check_ip(host, str(info[4][0]))


_real_getaddrinfo = socket.getaddrinfo
_guard_lock = threading.Lock()


@contextlib.contextmanager
def guarded_resolver(allow_hosts: frozenset[str]) -> Iterator[list[ForbiddenUrl]]:
    """Make `socket.getaddrinfo` refuse non-public answers while the block runs.

    Meant for a process that does nothing else (the URL fetch child): the patch is
    process-wide. Refusals are also collected in the yielded list, because libraries wrap
    the OSError we raise in their own exception types.
    """
    refused: list[ForbiddenUrl] = []

    def guarded(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        infos = _real_getaddrinfo(host, port, *args, **kwargs)
        name = host.decode() if isinstance(host, bytes) else str(host or "")
        if is_allowed_host(name, allow_hosts):
            return infos
        for info in infos:
            try:
                check_ip(name, str(info[4][0]))
            except ForbiddenUrl as exc:
                refused.append(exc)
                raise OSError(f"forbidden address: {exc.message}") from exc
        return infos

    with _guard_lock:
        socket.getaddrinfo = guarded
        try:
            yield refused
        finally:
            socket.getaddrinfo = _real_getaddrinfo
