"""OPTIONS for a path served by several handler functions.

Litestar builds its automatic OPTIONS handler with the first route of a path, so its `Allow`
would name only that function's methods (`OPTIONS, POST` on /api/webhooks): such paths get
this handler, which names them all.
"""

from __future__ import annotations

from litestar import Response, route
from litestar.enums import HttpMethod
from litestar.handlers import HTTPRouteHandler
from litestar.status_codes import HTTP_204_NO_CONTENT


def options_for(path: str, methods: str) -> HTTPRouteHandler:
    """A 204 with `Allow: methods` for OPTIONS on `path` (kept out of the OpenAPI document)."""

    async def options_handler() -> Response[None]:
        return Response(None, status_code=HTTP_204_NO_CONTENT, headers={"Allow": methods})

    return route(path, http_method=[HttpMethod.OPTIONS], include_in_schema=False)(options_handler)
