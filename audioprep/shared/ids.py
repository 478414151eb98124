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


def new_job_id(now_ms: int | None = None) -> str:
    """A ULID: 48-bit millisecond time then 80 random bits, so ids sort by creation time."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    value = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    return "".join([_PAIRS[(value >> shift) & 1023] for shift in _SHIFTS])


def idempotent_job_id(tenant: str, idempotency_key: str) -> str:
    """The same (tenant, key) always gives the same id, so a retried POST finds its job."""
    digest = hashlib.sha256(f"{tenant}\x00{idempotency_key}".encode()).digest()
    return _b32(int.from_bytes(digest[:17], "big") >> 6, 26)


def is_job_id(value: str) -> bool:
    """True for strings shaped like our ids (anything else can't name a job)."""
    return bool(_ID_RE.match(value))
