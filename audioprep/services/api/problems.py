"""RFC 9457 problem+json: one exception type and one place that maps exceptions to responses."""

from __future__ import annotations

import logging
import re
from typing import Any

import nats.errors
import nats.js.errors
from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException, NotFoundException, ValidationException

from audioprep.domain.errors import STORAGE_FULL, Retryable
from audioprep.shared.nats_conn import NatsUnavailable

log = logging.getLogger("audioprep.api")

PROBLEM_JSON = "application/problem+json"
MSG_ID_IN_PROCESS = 10158
# A full media-storage volume: the client may retry, but not in a second.
STORAGE_FULL_RETRY_AFTER_S = 30
_FIELD_RE = re.compile(r"at `\$\.?([^`]*)`")
_MISSING_RE = re.compile(r"missing required field `([^`]*)`")


class ProblemError(Exception):
    """Raise from a handler to answer with a problem document and a stable `code`."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        title: str | None = None,
        field: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.title = title or code.replace("_", " ").capitalize()
        self.field = field
        self.headers = headers or {}
        self.extra = extra or {}


def problem_response(request: Request[Any, Any, Any], problem: ProblemError) -> Response[Any]:
    body: dict[str, Any] = {
        "type": f"https://audioprep.dev/problems/{problem.code}",
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail,
        "code": problem.code,
        "instance": request.url.path,
    }
    if problem.field:
        body["field"] = problem.field
    body.update(problem.extra)
    return Response(
        body, status_code=problem.status, media_type=PROBLEM_JSON, headers=problem.headers
    )


def field_from_message(message: str) -> str | None:
    """`Expected int >= 0 - at `$.trim.startMs`` → `trim.startMs`."""
    match = _FIELD_RE.search(message)
    return match.group(1) if match else None


_ROOT_TYPE_RE = re.compile(r"^Expected `object`, got `([^`]*)`$")


def validation_problem(message: str, field: str | None = None) -> ProblemError:
    """A msgspec validation message as a 422: `invalid_recipe` under `recipe`, else
    `validation_error`; `field` is the JSON path (none for the body itself)."""
    root = _ROOT_TYPE_RE.match(message)
    if root is not None:
        return ProblemError(
            422, "validation_error", f"the body must be a JSON object, not {root.group(1)}"
        )
    field = field_from_message(message) or field
    missing = _MISSING_RE.search(message)
    if missing is not None:
        field = f"{field}.{missing.group(1)}" if field else missing.group(1)
    if field is not None and (field == "recipe" or field.startswith("recipe.")):
        return ProblemError(422, "invalid_recipe", message, field=field)
    return ProblemError(422, "validation_error", message, field=field)


def _validation_problem(exc: ValidationException) -> ProblemError:
    """Litestar's own validation (path and query parameters): the same mapping."""
    extra = exc.extra if isinstance(exc.extra, list) else []
    messages = [str(e.get("message", "")) for e in extra if isinstance(e, dict)]
    message = "; ".join(m for m in messages if m) or str(exc.detail)
    keys = [str(e["key"]) for e in extra if isinstance(e, dict) and e.get("key")]
    return validation_problem(message, keys[0] if keys else None)


def handle_exception(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """The single exception → problem+json mapping for the whole API."""
    if isinstance(exc, ProblemError):
        return problem_response(request, exc)
    if isinstance(exc, ValidationException):
        return problem_response(request, _validation_problem(exc))
    if isinstance(exc, NotFoundException):
        return problem_response(request, ProblemError(404, "not_found", str(exc.detail)))
    if isinstance(exc, HTTPException):
        code = {
            401: "unauthorized",
            403: "forbidden",
            405: "method_not_allowed",
            413: "too_large",
            415: "unsupported_media_type",
            429: "rate_limited",
        }.get(exc.status_code, "bad_request" if exc.status_code < 500 else "internal_error")
        problem = ProblemError(exc.status_code, code, str(exc.detail), headers=exc.headers)
        return problem_response(request, problem)
    if isinstance(exc, Retryable) and exc.code == STORAGE_FULL:
        # Media storage is out of space (ENOSPC): nothing was stored or published. The event
        # store lives on its own volume and is unaffected (docs/reliability.md, "Disk full").
        log.warning("storage full", extra={"path": request.url.path, "error": exc.message})
        problem = ProblemError(
            507,
            STORAGE_FULL,
            "media storage is full; nothing was stored. Retry later (an operator frees space)",
            title="Storage full",
            headers={"Retry-After": str(STORAGE_FULL_RETRY_AFTER_S)},
        )
        return problem_response(request, problem)
    if _is_backend_outage(exc):
        # NATS or storage briefly away (restart, leader election): the client should retry.
        log.warning(
            "backend unavailable",
            extra={"path": request.url.path, "error": f"{type(exc).__name__}: {exc}"},
        )
        problem = ProblemError(
            503,
            "service_unavailable",
            "a backend (NATS or storage) is briefly unavailable; retry shortly",
            headers={"Retry-After": "1"},
        )
        return problem_response(request, problem)
    log.exception("unhandled error", extra={"path": request.url.path})
    return problem_response(request, ProblemError(500, "internal_error", "internal server error"))


def _is_backend_outage(exc: BaseException) -> bool:
    """Transient infrastructure errors, as opposed to bugs."""
    if isinstance(exc, Retryable | NatsUnavailable | TimeoutError | ConnectionError):
        return True
    if isinstance(exc, nats.js.errors.ServiceUnavailableError):
        return True
    if isinstance(exc, nats.js.errors.APIError):  # JetStream said no: only "unavailable" is
        # 10158 "duplicate message id is in process": an earlier publish of this very job
        # (a retry of an in-doubt request) is still being stored; we can't know yet.
        return exc.code in (503, 504) or exc.err_code in (10008, 10023, MSG_ID_IN_PROCESS)
    # Timeouts, no responders, connection closed or draining...
    return isinstance(exc, nats.errors.Error)


__all__ = ["PROBLEM_JSON", "MediaType", "ProblemError", "handle_exception", "problem_response"]
