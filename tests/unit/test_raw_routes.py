"""Routes served by `served_raw` answer as Litestar's handler layer would: the same 202 bytes,
the route's guards run first, errors are problem+json, and hooks it would skip are refused."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from litestar import Litestar, Request, Response, post
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.handlers.base import BaseRouteHandler
from litestar.testing import TestClient

from audioprep.domain.views import ErrorInfo, JobResult, JobView
from audioprep.services.api.problems import ProblemError, handle_exception
from audioprep.services.api.raw_routes import (
    API_STATE,
    accepted_messages,
    json_messages,
    served_raw,
)
from audioprep.services.api.schemas import JobAccepted


def _litestar_answer(job_id: str, status: str) -> list[dict[str, Any]]:
    response = Response(
        JobAccepted(job_id=job_id, status=status),
        status_code=202,
        headers={"Location": f"/api/audio/jobs/{job_id}"},
    )
    return _sent(response)


def _sent(response: Response[Any]) -> list[dict[str, Any]]:
    scope: Any = {"type": "http", "method": "POST", "path": "/x", "headers": [], "state": {}}
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "http.disconnect"}

    request: Request[Any, Any, Any] = Request(scope)
    asgi = response.to_asgi_response(app=None, request=request)
    asyncio.run(asgi(scope, receive, send))  # type: ignore[arg-type]
    return sent


@pytest.mark.parametrize(
    "answer",
    [("01JBQ4V7Z8X9Y0A1B2C3D4E5F6", "pending"), ("DFBYXQQA9EJ0JZKD3GJ7MM9Q6Z", "completed")],
)
def test_the_202_is_litestars_byte_for_byte(answer: tuple[str, str]) -> None:
    assert list(accepted_messages(answer)) == _litestar_answer(*answer)


_AT = datetime(2026, 12, 1, 18, 59, 7, 123456, tzinfo=UTC)
VIEWS = [
    JobView(job_id="01JBQ4V7Z8X9Y0A1B2C3D4E5F6", kind="save", status="pending", progress=0,
            stage="", attempt=0, created_at=_AT, updated_at=_AT, seq=7, queue_position=3),
    JobView(job_id="DFBYXQQA9EJ0JZKD3GJ7MM9Q6Z", kind="ingest", status="completed",
            progress=100, stage="done", attempt=2, created_at=_AT,
            updated_at=_AT.replace(microsecond=0), seq=2**40, tenant="t-ä",
            result=JobResult(source_key="sources/x/Ünïcode ✓.wav", duration_ms=3000,
                             title='a "quoted" <title>', loudness={"lufs": -16.04}),
            download_url="/api/storage/download?key=a%2Fb&expires=1&sig=x"),
    JobView(job_id="01JBQ4V7Z8X9Y0A1B2C3D4E5F7", kind="preview", status="failed", progress=40,
            stage="rendering", attempt=3, created_at=_AT, updated_at=_AT, seq=9,
            error=ErrorInfo(code="unsupported_media", message="no audio\nstream")),
]  # fmt: skip


@pytest.mark.parametrize("view", VIEWS, ids=["pending", "completed", "failed"])
def test_the_poll_answer_is_litestars_byte_for_byte(view: JobView) -> None:
    assert list(json_messages(view)) == _sent(Response(view))


calls: list[bytes] = []


async def _serve(request: Request[Any, Any, Any], api: Any) -> tuple[str, str]:
    body = await request.body()
    calls.append(body)
    if body == b"boom":
        raise ProblemError(422, "validation_error", "boom", field="x")
    return api, "pending"


async def _deny(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    if connection.headers.get("authorization") != "Bearer ok":
        raise ProblemError(401, "unauthorized", "no key")


@post("/raw", middleware=[served_raw(_serve)], guards=[_deny])
async def raw_route() -> None:
    raise AssertionError("served_raw answers this route")


async def _hook(response: Response[Any]) -> Response[Any]:
    return response


@post("/hooked", middleware=[served_raw(_serve)], after_request=_hook)
async def hooked_route() -> None:
    raise AssertionError("never reached")


def _client() -> TestClient[Litestar]:
    app = Litestar(
        route_handlers=[raw_route, hooked_route],
        exception_handlers={Exception: handle_exception},
        state=State({API_STATE: "01JBQ4V7Z8X9Y0A1B2C3D4E5F6"}),
        logging_config=None,
    )
    return TestClient(app)


def test_guards_run_first_and_errors_are_problems() -> None:
    calls.clear()
    with _client() as client:
        denied = client.post("/raw", content=b"{}")
        assert denied.status_code == 401 and denied.json()["code"] == "unauthorized"
        assert calls == []  # the guard refused it before the body was read

        ok = client.post("/raw", content=b"{}", headers={"Authorization": "Bearer ok"})
        assert ok.status_code == 202
        assert ok.json() == {"jobId": "01JBQ4V7Z8X9Y0A1B2C3D4E5F6", "status": "pending"}
        assert ok.headers["location"] == "/api/audio/jobs/01JBQ4V7Z8X9Y0A1B2C3D4E5F6"

        bad = client.post("/raw", content=b"boom", headers={"Authorization": "Bearer ok"})
        assert bad.status_code == 422
        assert bad.headers["content-type"] == "application/problem+json"
        assert bad.json()["field"] == "x" and bad.json()["instance"] == "/raw"

        assert client.get("/raw").status_code == 405  # other methods: Litestar's answer
        assert calls == [b"{}", b"boom"]


def test_a_route_with_hooks_it_would_skip_is_refused() -> None:
    calls.clear()
    with _client() as client:
        answer = client.post("/hooked", content=b"{}")
    assert answer.status_code == 500 and calls == []
