"""Liveness and readiness."""

from __future__ import annotations

import asyncio
import time

from litestar import Response, get
from litestar.di import NamedDependency

from audioprep.services.api.context import ApiContext

# Readiness writes one tiny value to the render-cache bucket (history 1: it replaces itself):
# the only honest answer to "can JetStream store?". A flush or account info says ok while the
# server refuses every write (file store limit reached, or a disk that filled up).
READYZ_KEY = "readyz"
READYZ_TIMEOUT_S = 2.0


@get("/healthz", summary="Liveness", include_in_schema=True)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", summary="Readiness: NATS reachable, JetStream can store, storage reachable")
async def readyz(api: NamedDependency[ApiContext]) -> Response[dict[str, str]]:
    checks: dict[str, str] = {}
    try:
        await api.nc.flush(timeout=2)
        checks["nats"] = "ok"
    except Exception as exc:
        checks["nats"] = f"error: {exc.__class__.__name__}"
    try:
        await asyncio.wait_for(
            api.cache_kv.put(READYZ_KEY, str(time.time()).encode()), READYZ_TIMEOUT_S
        )
        checks["jetstream"] = "ok"
    except Exception as exc:
        # 10047 "insufficient resources": the file store limit is reached (see
        # docs/reliability.md, "Disk full"); a timeout: the server can't write at all.
        detail = getattr(exc, "description", None) or exc.__class__.__name__
        checks["jetstream"] = f"error: cannot store: {detail}"
    try:
        await api.storage.ping()
        checks["storage"] = "ok"
    except Exception as exc:
        checks["storage"] = f"error: {exc.__class__.__name__}"
    ok = all(v == "ok" for v in checks.values())
    return Response(checks, status_code=200 if ok else 503)
