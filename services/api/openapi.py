"""OpenAPI details Litestar can't infer: problem+json responses, request bodies the handlers read
themselves (msgspec's own schema of what it validates) and the two-faced ingest body."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec
from litestar import Litestar
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, Reference, RequestBody, Schema
from litestar.openapi.spec.enums import OpenAPIType
from litestar.routes import HTTPRoute

from services.api.problems import PROBLEM_JSON
from services.api.schemas import Problem

# Route option (`opt={JSON_BODY: SomeStruct}`): the handler decodes that msgspec type from a
# JSON body itself (services/api/bodies.py); the schema documents it as the request body.
JSON_BODY = "json_body"
_REF = "#/components/schemas/{name}"

_DESCRIPTIONS = {
    400: "Malformed request (bad JSON, bad header)",
    401: "Missing or unknown API key",
    403: "Forbidden (bad or expired signature)",
    404: "Unknown job or object, or another tenant's",
    409: "Conflict (job not in the right state, reused Idempotency-Key)",
    413: "Body or upload too large",
    415: "Unsupported content type",
    416: "Range not satisfiable",
    422: "Validation failed; `field` names the offending field",
}


def problems(*statuses: int) -> dict[int, ResponseSpec]:
    """`responses=` entries documenting problem+json answers for these statuses."""
    return {
        status: ResponseSpec(
            data_container=Problem,
            description=_DESCRIPTIONS.get(status, "Problem"),
            media_type=PROBLEM_JSON,
            generate_examples=False,
        )
        for status in statuses
    }


def _ingest_body() -> RequestBody:
    multipart = Schema(
        type=OpenAPIType.OBJECT,
        required=["file"],
        properties={"file": Schema(type=OpenAPIType.STRING, format="binary")},  # type: ignore[arg-type]
    )
    url_body = Schema(
        type=OpenAPIType.OBJECT,
        required=["source", "url"],
        properties={
            "source": Schema(type=OpenAPIType.STRING, enum=["url", "youtube"]),
            "url": Schema(type=OpenAPIType.STRING, format="uri", max_length=4096),  # type: ignore[arg-type]
        },
    )
    return RequestBody(
        required=True,
        description=(
            "Either a multipart upload (`file` part, streamed to storage, size-limited) or a "
            "JSON URL ingest. The URL must be public http(s); private targets are refused."
        ),
        content={
            "multipart/form-data": OpenAPIMediaType(schema=multipart),
            "application/json": OpenAPIMediaType(schema=url_body),
        },
    )


def complete_schema(app: Litestar) -> None:
    """Startup hook: add what decorators can't say to the generated OpenAPI document.

    - the ingest body (multipart or JSON: the handler reads the raw request);
    - every 4xx/5xx answer is problem+json (Litestar's default 400 says plain JSON).
    """
    schema = app.openapi_schema
    paths: dict[str, Any] = schema.paths or {}
    _add_json_bodies(app, paths)
    ingest = paths.get("/api/audio/ingest")
    if ingest is not None and ingest.post is not None:
        ingest.post.request_body = _ingest_body()
        responses = ingest.post.responses or {}
        for status in (400, 401, 409, 413, 415, 422):
            responses.setdefault(str(status), _problem_response(_DESCRIPTIONS[status]))
        ingest.post.responses = responses
    for item in paths.values():
        for method in ("get", "post", "put", "delete", "patch"):
            operation = getattr(item, method, None)
            if operation is None or not operation.responses:
                continue
            for status, response in list(operation.responses.items()):
                if str(status)[0] in "45" and PROBLEM_JSON not in (response.content or {}):
                    description = getattr(response, "description", "") or "Problem"
                    operation.responses[status] = _problem_response(description)


def _problem_response(description: str) -> OpenAPIResponse:
    return OpenAPIResponse(
        description=description,
        content={
            PROBLEM_JSON: OpenAPIMediaType(schema=Reference(ref="#/components/schemas/Problem"))
        },
    )


def _add_json_bodies(app: Litestar, paths: dict[str, Any]) -> None:
    """`requestBody` of every handler with a JSON_BODY option, components from msgspec."""
    bodies: list[tuple[Any, type[Any]]] = []
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            body_type = handler.opt.get(JSON_BODY)
            item = paths.get(route.path_format)
            if body_type is None or item is None:
                continue
            for method in handler.http_methods:
                operation = getattr(item, method.lower(), None)
                if operation is not None:
                    bodies.append((operation, body_type))
    if not bodies:
        return
    refs, components = msgspec.json.schema_components(
        [body_type for _, body_type in bodies], ref_template=_REF
    )
    for (operation, _), ref in zip(bodies, refs, strict=True):
        operation.request_body = RequestBody(
            required=True,
            content={"application/json": OpenAPIMediaType(schema=to_openapi(ref))},
        )
    schemas = app.openapi_schema.components.schemas
    for name, component in components.items():
        schemas[name] = to_openapi(component)  # type: ignore[assignment]


_SCHEMA_FIELDS = {
    f.metadata.get("alias", f.name): f.name for f in dataclasses.fields(Schema) if f.init
}
_SUBSCHEMA_MAPS = {"properties", "patternProperties", "$defs", "dependentSchemas"}
_SUBSCHEMA_LISTS = {"anyOf", "oneOf", "allOf", "prefixItems"}
_SUBSCHEMAS = {"items", "not", "additionalProperties", "contains", "propertyNames", "if", "then"}


def to_openapi(node: dict[str, Any]) -> Schema | Reference:
    """A JSON Schema (msgspec's output) as Litestar's OpenAPI objects, keyword for keyword."""
    if "$ref" in node:
        return Reference(ref=node["$ref"])
    kwargs: dict[str, Any] = {}
    for key, value in node.items():
        name = _SCHEMA_FIELDS.get(key)
        if name is None:
            raise ValueError(f"JSON Schema keyword {key!r} has no OpenAPI field")
        if key in _SUBSCHEMA_MAPS:
            value = {k: to_openapi(v) for k, v in value.items()}
        elif key in _SUBSCHEMA_LISTS:
            value = [to_openapi(v) for v in value]
        elif key in _SUBSCHEMAS and isinstance(value, dict):
            value = to_openapi(value)
        elif key == "type":
            value = (
                [OpenAPIType(v) for v in value] if isinstance(value, list) else OpenAPIType(value)
            )
        kwargs[name] = value
    return Schema(**kwargs)
