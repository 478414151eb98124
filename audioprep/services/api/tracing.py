"""W3C trace context for every request: keep a valid `traceparent`, else start a trace.

The (possibly new) `traceparent` is written back into the request headers, so handlers pass it
to the events they publish (EventStore puts it in a message header and workers log its trace
id), and the trace id is bound to every log line of the request.
"""

from __future__ import annotations

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

from audioprep.shared import logs


def trace_middleware(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        headers = scope["headers"]
        incoming = None
        for k, v in headers:
            if k.lower() == b"traceparent":
                incoming = v.decode("latin-1")
                break
        parsed = logs.parse_traceparent(incoming) if incoming else None
        if parsed is not None and incoming is not None:
            traceparent, trace_id = incoming, parsed[0]
        else:
            traceparent = logs.new_traceparent()
            trace_id = traceparent[3:35]  # 00-<trace id>-<parent id>-01
        if incoming is not None:  # one traceparent, the one we keep (ours if theirs was bad)
            headers = [(k, v) for k, v in headers if k.lower() != b"traceparent"]
        scope["headers"] = [*headers, (b"traceparent", traceparent.encode())]
        token = logs.bind(trace_id=trace_id)
        try:
            await app(scope, receive, send)
        finally:
            logs.unbind(token)

    return middleware
