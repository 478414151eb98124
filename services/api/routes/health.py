"""Liveness and readiness."""

from __future__ import annotations

from litestar import Response, get
from litestar.di import NamedDependency

from services.api.context import ApiContext


@get("/healthz", summary="Liveness", include_in_schema=True)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", summary="Readiness: NATS and storage reachable")
async def readyz(api: NamedDependency[ApiContext]) -> Response[dict[str, str]]:
    checks: dict[str, str] = {}
    try:
        await api.nc.flush(timeout=2)
        checks["nats"] = "ok"
    except Exception as exc:
        checks["nats"] = f"error: {exc.__class__.__name__}"
    try:
        await api.storage.ping()
        checks["storage"] = "ok"
    except Exception as exc:
        checks["storage"] = f"error: {exc.__class__.__name__}"
    ok = all(v == "ok" for v in checks.values())
    return Response(checks, status_code=200 if ok else 503)
