"""API keys → tenants. No keys configured: one open `default` tenant."""

from __future__ import annotations

import hmac
from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from audioprep.services.api.problems import ProblemError
from audioprep.shared.keys import DEFAULT_TENANT
from audioprep.shared.settings import Settings
from audioprep.shared.signing import DOWNLOAD_PATH

MAX_KEY_CHARS = 512
PROTECTED_PREFIX = "/api/"
# The signed link is the credential here (browsers can't send a Bearer key from <audio>).
PUBLIC_API_PATHS = frozenset({DOWNLOAD_PATH})


def tenant_from_authorization(header: str, settings: Settings) -> str | None:
    """The tenant of `Bearer <key>`, DEFAULT_TENANT when no keys are configured, else None.

    Every configured key is compared in constant time, so timing tells nothing about which
    key (or how much of one) matched.
    """
    if not settings.api_keys:
        return DEFAULT_TENANT
    scheme, _, key = header.strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key or len(key) > MAX_KEY_CHARS:
        return None
    given = key.encode("utf-8", "replace")
    found: str | None = None
    for known, tenant in settings.api_keys.items():
        if hmac.compare_digest(known.encode(), given) and found is None:
            found = tenant
    return found


def is_admin(request: Request[Any, Any, Any], settings: Settings) -> bool:
    """The caller's key is marked `admin` in AUDIOPREP_API_KEYS (open mode: everyone is).

    Compared in constant time against every admin key, like the tenant lookup."""
    if not settings.api_keys:
        return True
    scheme, _, key = request.headers.get("authorization", "").strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key or len(key) > MAX_KEY_CHARS:
        return False
    given = key.encode("utf-8", "replace")
    found = False
    for known in settings.admin_keys:
        found = hmac.compare_digest(known.encode(), given) or found
    return found


def tenant_for(request: Request[Any, Any, Any], settings: Settings) -> str:
    """The caller's tenant from `Authorization: Bearer <key>`; 401 when keys are required."""
    return _tenant_or_401(request.headers.get("authorization", ""), settings)


class ApiKeyGuard:
    """App-wide guard: every /api/ route but signed downloads needs a valid key.

    Guards run before the body is read or validated, so a caller without a key gets 401 (not
    a 422 about its body) and an upload without a key is never streamed to storage. Handlers
    still call `tenant_for` to learn the tenant. (A class, so the OpenAPI document can tell
    that the app has it.)
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    # async on purpose: Litestar runs a sync guard in a worker thread on every request.
    async def __call__(
        self, connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler
    ) -> None:
        path = connection.scope["path"]
        if path.startswith(PROTECTED_PREFIX) and path not in PUBLIC_API_PATHS:
            _tenant_or_401(connection.headers.get("authorization", ""), self.settings)


def api_key_guard(settings: Settings) -> ApiKeyGuard:
    return ApiKeyGuard(settings)


def _tenant_or_401(header: str, settings: Settings) -> str:
    tenant = tenant_from_authorization(header, settings)
    if tenant is not None:
        return tenant
    raise ProblemError(
        401,
        "unauthorized",
        "a valid API key is required: send `Authorization: Bearer <key>`",
        headers={"WWW-Authenticate": 'Bearer realm="audioprep"'},
    )
