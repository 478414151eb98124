"""SSRF guard: which addresses and URLs are refused, and the resolver patch used for yt-dlp."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from audioprep.domain.errors import Permanent
from audioprep.shared.url_guard import (
    ForbiddenUrl,
    check_literal,
    check_url,
    guarded_resolver,
    is_forbidden_ip,
    parse_literal_ip,
)

NONE: frozenset[str] = frozenset()


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.9.9.9",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.251",
        "239.255.255.250",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "::ffff:8.8.8.8",
        "::ffff:127.0.0.1",
        "2002:7f00:1::",  # 6to4 wrapping 127.0.0.1
        "64:ff9b::a00:1",  # NAT64 wrapping 10.0.0.1
    ],
)
def test_non_public_addresses_are_forbidden(address: str) -> None:
    assert is_forbidden_ip(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "64:ff9b::808:808"]
)
def test_public_addresses_pass(address: str) -> None:
    assert not is_forbidden_ip(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    ("host", "expected"),
    [("2130706433", "127.0.0.1"), ("0x7f.1", "127.0.0.1"), ("[::1]", "::1"), ("example.com", None)],
)
def test_literal_ip_forms(host: str, expected: str | None) -> None:
    ip = parse_literal_ip(host)
    assert (str(ip) if ip else None) == expected


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("http://127.0.0.1:8080/a.mp3", "forbidden_url"),
        ("http://localhost/a.mp3", "forbidden_url"),
        ("http://LOCALHOST./a.mp3", "forbidden_url"),
        ("http://cam.localhost/a", "forbidden_url"),
        ("http://[fe80::1%25eth0]/a", "forbidden_url"),
        ("gopher://example.com/", "unsupported_url"),
        ("//example.com/a", "unsupported_url"),
        ("http://exa mple.com:x/", "unsupported_url"),
    ],
)
def test_check_literal_refuses(url: str, code: str) -> None:
    with pytest.raises(Permanent) as err:
        check_literal(url, NONE)
    assert err.value.code == code


def test_allow_list_lets_configured_hosts_through() -> None:
    check_literal("http://127.0.0.1:9/a.mp3", frozenset({"127.0.0.1"}))
    check_literal("http://LocalHost/a.mp3", frozenset({"localhost"}))
    check_url("http://localhost:9/a.mp3", frozenset({"localhost"}))
    with pytest.raises(ForbiddenUrl):
        check_literal("http://127.0.0.2/a.mp3", frozenset({"127.0.0.1"}))


def test_check_url_resolves_names() -> None:
    # `localhost` is caught as a name; this checks the resolution path with a name that
    # resolves through /etc/hosts to loopback but is not special-cased.
    name = socket.gethostname()
    try:
        addresses = {i[4][0] for i in socket.getaddrinfo(name, 80, 0, socket.SOCK_STREAM)}
    except OSError:
        pytest.skip("the host name does not resolve here")
    if not any(is_forbidden_ip(ipaddress.ip_address(a.split("%")[0])) for a in addresses):
        pytest.skip("the host name resolves to a public address")
    with pytest.raises(ForbiddenUrl):
        check_url(f"http://{name}/a.mp3", NONE)


def test_guarded_resolver_refuses_private_answers_and_restores() -> None:
    original = socket.getaddrinfo
    with guarded_resolver(frozenset({"localhost"})) as refused:
        assert socket.getaddrinfo("localhost", 80)  # allowed by name
        with pytest.raises(OSError):
            socket.getaddrinfo("127.0.0.2", 80)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.3", 9), timeout=1)
    assert socket.getaddrinfo is original
    assert [e.code for e in refused] == ["forbidden_url", "forbidden_url"]
