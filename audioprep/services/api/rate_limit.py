"""Requests per tenant: an in-process token bucket per tenant, 429 with Retry-After past it.

Each API process keeps its own buckets, so N API replicas allow N times the rate; put a shared
limiter in front (proxy, gateway) when that matters. Only `/api/` paths count: health checks,
metrics, the schema and the web page are never limited.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

from audioprep.services.api.auth import tenant_from_authorization
from audioprep.services.api.problems import ProblemError
from audioprep.shared.settings import Settings

LIMITED_PREFIX = "/api/"
MAX_BUCKETS = 10_000  # anonymous callers are keyed by address; keep memory bounded


@dataclass
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """`rate` tokens a second up to `burst`; one bucket per key, least recently used evicted."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_buckets: int = MAX_BUCKETS,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self.max_buckets = max_buckets
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def take(self, key: str) -> float:
        """Spend one token: 0.0 when allowed, else the seconds until one is available."""
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(tokens=self.burst, updated=now)
            self._buckets[key] = bucket
            if len(self._buckets) > self.max_buckets:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


def rate_limit_key(scope: Scope, settings: Settings) -> str:
    """The caller's tenant; callers without a valid key share a bucket per client address."""
    tenant = tenant_from_authorization(_header(scope, b"authorization"), settings)
    if tenant is not None:
        return f"tenant:{tenant}"
    client = scope.get("client")
    return f"anonymous:{client[0] if client else '?'}"


def rate_limit_middleware(settings: Settings) -> Callable[[ASGIApp], ASGIApp]:
    """Litestar middleware factory; a no-op when AUDIOPREP_RATE_LIMIT_PER_S is 0."""
    buckets = (
        TokenBuckets(settings.rate_limit_per_s, settings.rate_limit_burst)
        if settings.rate_limit_per_s > 0
        else None
    )

    def wrap(app: ASGIApp) -> ASGIApp:
        if buckets is None:
            return app  # off: not even a pass-through layer on the hot path

        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP or not scope["path"].startswith(LIMITED_PREFIX):
                await app(scope, receive, send)
                return
            wait = buckets.take(rate_limit_key(scope, settings))
            if wait > 0:
                retry_after = max(1, math.ceil(wait))
                raise ProblemError(
                    429,
                    "rate_limited",
                    f"too many requests; retry in {retry_after} s",
                    headers={"Retry-After": str(retry_after)},
                    extra={"retryAfterS": retry_after},
                )
            await app(scope, receive, send)

        return middleware

    return wrap
