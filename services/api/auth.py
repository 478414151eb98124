"""API keys → tenants. No keys configured: one open `default` tenant."""

from __future__ import annotations

import hmac
from typing import Any

from litestar import Request

from services.api.problems import ProblemError
from shared.keys import DEFAULT_TENANT
from shared.settings import Settings


def tenant_for(request: Request[Any, Any, Any], settings: Settings) -> str:
    """The caller's tenant from `Authorization: Bearer <key>`; 401 when keys are required."""
    if not settings.api_keys:
        return DEFAULT_TENANT
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() == "bearer" and key:
        for known, tenant in settings.api_keys.items():
            if hmac.compare_digest(known.encode(), key.strip().encode()):
                return tenant
    raise ProblemError(
        401,
        "unauthorized",
        "a valid API key is required: send `Authorization: Bearer <key>`",
        headers={"WWW-Authenticate": 'Bearer realm="audioprep"'},
    )
