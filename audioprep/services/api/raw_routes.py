"""The hot routes served below Litestar's handler layer (issue 22): the two job-creating edit
routes and the poll.

`POST /api/audio/edit/save` and `/preview` and `GET /api/audio/jobs/{job_id}` are declared as
ordinary Litestar handlers (so the router, the 405/OPTIONS answers and the OpenAPI document
know them) and carry `served_raw(fn)` (a 202 + `JobAccepted`) or `served_raw_json(fn)` (a 200
with `fn`'s answer as JSON) as their own route middleware. That middleware answers the request
itself: it runs the route's guards as Litestar would, calls `fn(request, api)`, and writes the
answer as two ASGI messages. What it skips is the per-request work of Litestar's handler layer: the
dependency injection of `api`, the kwargs model, building a `Response` and converting it to an
ASGI response (about 30 µs CPU per request of ~150; bench/RESULTS.md).

Everything around the route is unchanged: the app's middleware (trace context, rate limit)
wraps it as before, errors go through the same `handle_exception` (problem+json), and the
answer has the same status, headers (in the same order) and body as Litestar's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from litestar import Litestar, Request
from litestar.handlers import HTTPRouteHandler
from litestar.types import ASGIApp, Receive, Scope, Send

from audioprep.services.api.context import ApiContext
from audioprep.services.api.problems import handle_exception
from audioprep.services.api.schemas import JobAccepted

# app.state key under which the lifespan leaves the ApiContext.
API_STATE = "api_context"

Accepted = tuple[str, str]  # (job id, status): the body of a 202
RawHandler = Callable[[Request[Any, Any, Any], ApiContext], Awaitable[Accepted]]
JsonHandler = Callable[[Request[Any, Any, Any], ApiContext], Awaitable[msgspec.Struct]]
Messages = tuple[dict[str, Any], dict[str, Any]]  # http.response.start, http.response.body

_encode = msgspec.json.Encoder().encode
_JSON = b"application/json"


def accepted_messages(answer: Accepted) -> tuple[dict[str, Any], dict[str, Any]]:
    """The `http.response.start` and `http.response.body` of a 202 `JobAccepted`, byte for
    byte what Litestar sends for `Response(JobAccepted, 202, headers={"Location": ...})`."""
    job_id, status = answer
    body = _encode(JobAccepted(job_id=job_id, status=status))
    headers = [
        (b"location", b"/api/audio/jobs/" + job_id.encode()),
        (b"content-type", _JSON),
        (b"content-length", str(len(body)).encode()),
    ]
    start = {"type": "http.response.start", "status": 202, "headers": headers}
    return start, {"type": "http.response.body", "body": body, "more_body": False}


def json_messages(value: msgspec.Struct) -> Messages:
    """A 200 with `value` as JSON, byte for byte what Litestar sends for a handler returning
    it."""
    body = _encode(value)
    headers = [(b"content-type", _JSON), (b"content-length", str(len(body)).encode())]
    start = {"type": "http.response.start", "status": 200, "headers": headers}
    return start, {"type": "http.response.body", "body": body, "more_body": False}


def _check_handler(handler: HTTPRouteHandler) -> None:
    """What this module would leave out (request/response hooks, response headers or cookies
    set on a layer) is refused rather than silently skipped."""
    skipped = (
        handler.resolve_before_request(),
        handler.resolve_after_response(),
        any(getattr(layer, "after_request", None) for layer in handler.ownership_layers),
        handler.resolve_response_headers(),
        handler.resolve_response_cookies(),
    )
    if any(skipped):
        raise RuntimeError(f"{handler.handler_name}: served_raw runs no hooks, adds no headers")


def served_raw(serve: RawHandler) -> Callable[[ASGIApp], ASGIApp]:
    """Route middleware answering the route with `serve`'s 202 (see the module's doc)."""

    async def messages(request: Request[Any, Any, Any], api: ApiContext) -> Messages:
        return accepted_messages(await serve(request, api))

    return _answering(messages)


def served_raw_json(serve: JsonHandler) -> Callable[[ASGIApp], ASGIApp]:
    """Route middleware answering the route with `serve`'s value as a 200 JSON body."""

    async def messages(request: Request[Any, Any, Any], api: ApiContext) -> Messages:
        return json_messages(await serve(request, api))

    return _answering(messages)


def _answering(
    serve: Callable[[Request[Any, Any, Any], ApiContext], Awaitable[Messages]],
) -> Callable[[ASGIApp], ASGIApp]:
    def middleware(app: ASGIApp) -> ASGIApp:  # `app` (Litestar's handler layer) is not called
        # Litestar builds one middleware stack per route handler: one handler to check here.
        checked = False

        async def raw(scope: Scope, receive: Receive, send: Send) -> None:
            nonlocal checked
            handler: HTTPRouteHandler = scope["route_handler"]  # type: ignore[assignment]
            if not checked:
                _check_handler(handler)
                checked = True
            request: Request[Any, Any, Any] = Request(scope, receive, send)
            try:
                if handler.resolve_guards():
                    await handler.authorize_connection(connection=request)
                litestar: Litestar = scope["litestar_app"]
                start, body = await serve(request, litestar.state[API_STATE])
            except Exception as exc:
                response = handle_exception(request, exc)
                await response.to_asgi_response(app=None, request=request)(scope, receive, send)
                return
            await send(start)  # type: ignore[arg-type]
            await send(body)  # type: ignore[arg-type]

        return raw

    return middleware
