"""JSON request bodies: one reader, one decoder and one error mapping for every route.

In this order (docs/http-api.md "Request errors" is the same table):
- more than JSON_BODY_LIMIT bytes                  → 413 `too_large`
- an empty body                                    → 400 `empty_body`
- a Content-Type that isn't JSON (none = JSON)     → 415 `unsupported_media_type`
- not JSON at all (syntax, cut off, NaN, not UTF-8) → 400 `malformed_json`
- JSON, but not what the route takes               → 422 `validation_error` / `invalid_recipe`
  with `field` (a JSON path without `$.`; none when the body itself isn't an object).

Decoding is msgspec's strict conversion (no "3" for 3; `3.0` is 3, as JSON Schema's `integer`
says), the same library that writes the request schemas into the OpenAPI document.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from litestar import Request

from audioprep.services.api.problems import ProblemError, validation_problem

T = TypeVar("T")

JSON_BODY_LIMIT = 64 * 1024


def is_json_media_type(content_type: str) -> bool:
    """`application/json` or any `application/<x>+json`, parameters ignored."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def declares_empty_body(request: Request[Any, Any, Any]) -> bool:
    return request.headers.get("content-length", "").strip() == "0"


def empty_body() -> ProblemError:
    return ProblemError(
        400, "empty_body", "the request body is empty; send a JSON object (see /schema)"
    )


async def read_limited(request: Request[Any, Any, Any], limit: int = JSON_BODY_LIMIT) -> bytes:
    """The whole body, refused with a 413 as soon as it passes `limit` (never buffered past)."""
    declared = request.headers.get("content-length", "").strip()
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def json_bytes(request: Request[Any, Any, Any]) -> bytes:
    """The request's body, checked for size, emptiness and a JSON content type."""
    raw = await read_limited(request)
    if not raw.strip():
        raise empty_body()
    content_type = request.headers.get("content-type")
    if content_type is not None and not is_json_media_type(content_type):
        raise ProblemError(
            415,
            "unsupported_media_type",
            f"send the body as application/json, not {content_type.split(';', 1)[0].strip()!r}",
        )
    return raw


async def json_body(request: Request[Any, Any, Any], type_: type[T]) -> T:
    """Read and decode the request's JSON body into `type_`, or raise the mapped problem."""
    return decode_json(await json_bytes(request), type_)


_DECODERS: dict[Any, msgspec.json.Decoder[Any]] = {}


def typed_decoder(type_: type[T]) -> msgspec.json.Decoder[T]:
    decoder = _DECODERS.get(type_)
    if decoder is None:
        decoder = _DECODERS[type_] = msgspec.json.Decoder(type_)
    return decoder


def decode_json(raw: bytes, type_: type[T]) -> T:
    """Parse first (any syntax error is a 400, wherever it is), then convert strictly.

    A well-formed body takes one pass of a prebuilt typed decoder (what almost every request
    is). Anything that pass refuses goes the long way: the generic parse, `3.0` → `3`, the
    strict conversion, so every error, and every body that needs the float rule, comes out
    exactly as before (tests/unit/test_bodies_fast_path.py compares the two).
    """
    try:
        return typed_decoder(type_).decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError):
        pass
    return decode_json_slow(raw, type_)


def decode_json_slow(raw: bytes, type_: type[T]) -> T:
    """The reference decoding: generic parse, integral floats as ints, strict conversion."""
    try:
        document = msgspec.json.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise malformed_json(exc) from None
    try:
        return msgspec.convert(_integral_floats_as_ints(document), type=type_)
    except msgspec.ValidationError as exc:
        raise validation_problem(str(exc)) from None


def _integral_floats_as_ints(value: Any) -> Any:
    """`3.0` → `3`: JSON Schema's `integer` is any number without a fraction, so the schema
    allows `"startMs": 3.0`; a float field takes the int as it is (strict mode allows that)."""
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, dict):
        return {k: _integral_floats_as_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral_floats_as_ints(v) for v in value]
    return value


def malformed_json(exc: Exception) -> ProblemError:
    if isinstance(exc, UnicodeDecodeError):
        reason = f"not UTF-8 (byte {exc.start})"
    else:
        reason = str(exc).removeprefix("JSON is malformed: ")
        reason = reason[:1].lower() + reason[1:]
    return ProblemError(400, "malformed_json", f"the body is not valid JSON: {reason}")


def _too_large(limit: int) -> ProblemError:
    return ProblemError(413, "too_large", f"JSON body over {limit} bytes", extra={"limit": limit})
