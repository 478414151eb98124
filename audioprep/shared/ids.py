"""Job ids: time-sortable, subject-safe (Crockford base32, no dots or wildcards)."""

from __future__ import annotations

import hashlib
import os
import re
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_ID_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")


def _b32(value: int, length: int) -> str:
    out = []
    for _ in range(length):
        out.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(out))


# Every 10-bit value as its two Crockford characters: 26 characters are 13 lookups.
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]
_SHIFTS = tuple(range(120, -1, -10))


# 80-bit random values, drawn from os.urandom 400 at a time (one getrandom syscall instead of
# one per id). `list.pop` hands each value out once, also across threads; a forked child starts
# with an empty pool, so it never repeats its parent's values.
_RANDOMS_PER_DRAW = 400
_randoms: list[int] = []
os.register_at_fork(after_in_child=_randoms.clear)


def _random80() -> int:
    try:
        return _randoms.pop()
    except IndexError:
        block = os.urandom(10 * _RANDOMS_PER_DRAW)
        _randoms.extend(int.from_bytes(block[i : i + 10], "big") for i in range(0, len(block), 10))
        return _randoms.pop()


def new_job_id(now_ms: int | None = None) -> str:
    """A ULID: 48-bit millisecond time then 80 random bits, so ids sort by creation time."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    value = (ms << 80) | _random80()
    return "".join([_PAIRS[(value >> shift) & 1023] for shift in _SHIFTS])


def idempotent_job_id(tenant: str, idempotency_key: str) -> str:
    """The same (tenant, key) always gives the same id, so a retried POST finds its job."""
    digest = hashlib.sha256(f"{tenant}\x00{idempotency_key}".encode()).digest()
    return _b32(int.from_bytes(digest[:17], "big") >> 6, 26)


def is_job_id(value: str) -> bool:
    """True for strings shaped like our ids (anything else can't name a job)."""
    return bool(_ID_RE.match(value))
