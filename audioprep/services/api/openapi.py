"""OpenAPI details Litestar can't infer, added to the generated document at start-up.

- explicit operation ids and tags (generated clients name their functions after them), the
  API-key security scheme when keys are configured;
- request bodies the handlers decode themselves: msgspec's own schema of the `opt={JSON_BODY:
  …}` types (what it validates is what it documents) and the two-faced ingest body, with the
  YouTube rule as a `oneOf`;
- headers Litestar doesn't see (Idempotency-Key, Range, Last-Event-ID), the real media types of
  the SSE and audio routes, answers no decorator declares (cancel's 200, 206, 429, 503);
- every 4xx/5xx answer is problem+json.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, get_args

import msgspec
from litestar import Litestar
from litestar.enums import ParamType
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import (
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    Parameter,
    Reference,
    RequestBody,
    Schema,
    SecurityScheme,
    Tag,
)
from litestar.openapi.spec.enums import OpenAPIFormat, OpenAPIType
from litestar.routes import HTTPRoute

from audioprep.domain.events import Event
from audioprep.domain.views import JobView
from audioprep.services.api.auth import ApiKeyGuard
from audioprep.services.api.problems import PROBLEM_JSON
from audioprep.services.api.schemas import (
    PRESET_RULES,
    SAVE_REQUEST_RULES,
    DownloadLink,
    JobAccepted,
    Problem,
    SaveRequest,
)
from audioprep.services.api.serving import CONTENT_TYPES
from audioprep.services.api.url_check import YOUTUBE_HOSTS
from audioprep.shared.presets import NAME_PATTERN as PRESET_NAME_PATTERN

# Route option (`opt={JSON_BODY: SomeStruct}`): the handler decodes that msgspec type from a
# JSON body itself (services/api/bodies.py); the schema documents it as the request body.
JSON_BODY = "json_body"
_REF = "#/components/schemas/{name}"

# Response bodies (Litestar encodes them with msgspec) whose generated components are replaced
# by msgspec's own schema, plus the union of job events an SSE message carries as `data`.
RESPONSE_TYPES: tuple[Any, ...] = (JobView, JobAccepted, DownloadLink, Problem)
EVENT_COMPONENT = "JobEvent"


_DESCRIPTIONS = {
    400: "Malformed request (bad JSON, bad header)",
    401: "Missing or unknown API key",
    403: "Forbidden (bad or expired signature)",
    404: "Unknown job or object, or another tenant's",
    409: "Conflict (job not in the right state, key used by another tenant)",
    413: "Body or upload too large",
    415: "Unsupported content type",
    416: "Range not satisfiable",
    422: "Validation failed; `field` names the offending field",
    429: "Rate limited (per tenant); retry after `Retry-After` seconds",
    503: "NATS or storage briefly unavailable; retry after `Retry-After` seconds",
    507: "Media storage is full (`storage_full`); nothing was stored; retry after `Retry-After`",
}
# Routes that write an upload to media storage: a full volume answers 507.
_STORES_UPLOADS = ("/api/audio/ingest", "/api/images")

# Every operation's explicit id and tag.
OPERATIONS: dict[tuple[str, str], tuple[str, str]] = {
    ("post", "/api/audio/ingest"): ("ingestAudio", "ingest"),
    ("post", "/api/audio/edit/preview"): ("previewEdit", "edit"),
    ("post", "/api/audio/edit/save"): ("saveEdit", "edit"),
    ("get", "/api/audio/edit/preview/{job_id}/audio"): ("getPreviewAudio", "edit"),
    ("get", "/api/audio/jobs/{job_id}"): ("getJob", "jobs"),
    ("post", "/api/audio/jobs/{job_id}/cancel"): ("cancelJob", "jobs"),
    ("get", "/api/audio/jobs/{job_id}/events"): ("getJobEvents", "jobs"),
    ("get", "/api/audio/jobs/{job_id}/peaks"): ("getJobPeaks", "jobs"),
    ("get", "/api/storage/download"): ("download", "storage"),
    ("post", "/api/webhooks"): ("createWebhook", "webhooks"),
    ("get", "/api/webhooks"): ("listWebhooks", "webhooks"),
    ("get", "/api/webhooks/{webhook_id}"): ("getWebhook", "webhooks"),
    ("delete", "/api/webhooks/{webhook_id}"): ("deleteWebhook", "webhooks"),
    ("post", "/api/webhooks/{webhook_id}/rotate-secret"): ("rotateWebhookSecret", "webhooks"),
    ("post", "/api/webhooks/{webhook_id}/enable"): ("enableWebhook", "webhooks"),
    ("get", "/api/webhooks/{webhook_id}/deliveries"): ("listWebhookDeliveries", "webhooks"),
    ("get", "/api/webhooks/{webhook_id}/deliveries/{delivery_id}"): (
        "getWebhookDelivery",
        "webhooks",
    ),
    ("post", "/api/webhooks/{webhook_id}/deliveries/{delivery_id}/replay"): (
        "replayWebhookDelivery",
        "webhooks",
    ),
    ("post", "/api/images"): ("uploadImage", "publishing"),
    ("post", "/api/presets"): ("createPreset", "publishing"),
    ("get", "/api/presets"): ("listPresets", "publishing"),
    ("get", "/api/presets/{name}"): ("getPreset", "publishing"),
    ("put", "/api/presets/{name}"): ("replacePreset", "publishing"),
    ("delete", "/api/presets/{name}"): ("deletePreset", "publishing"),
    ("get", "/api/usage"): ("getUsage", "usage"),
    ("get", "/healthz"): ("getLiveness", "health"),
    ("get", "/readyz"): ("getReadiness", "health"),
}
TAGS = {
    "ingest": "Bring audio in: an upload, a web page or direct link, YouTube.",
    "edit": "Preview a recipe (render cache, coalescing) and save the final render.",
    "jobs": "Every request is a job: poll it, follow its events, cancel it.",
    "storage": "Signed, expiring downloads of stored results.",
    "webhooks": "Signed, retried, replayable notifications when jobs end (docs/webhooks.md).",
    "publishing": "Cover images and saved presets for publish-ready saves (docs/publishing.md).",
    "usage": "What each tenant used per day (docs/fairness.md).",
    "health": "Liveness and readiness.",
}
BEARER = "apiKey"
_METHODS = ("get", "post", "put", "delete", "patch")
_EDIT_POSTS = ("/api/audio/edit/preview", "/api/audio/edit/save")
_PREVIEW_AUDIO = ("audio/ogg", "audio/mp4")
_DOWNLOAD_TYPES = tuple(sorted({*CONTENT_TYPES.values(), "application/octet-stream"}))

# http(s), a host *name* (its last label starts with a letter, so no IP literal in any
# spelling matches), a port, printable ASCII after it. Public IP literals are accepted too, but
# the pattern can't tell them from private ones, so it leaves them all out.
_LABEL = "[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_TOP_LABEL = "[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PORT_PATH = "(:[1-9][0-9]{0,3})?([/?#][!-~]*)?$"
URL_PATTERN = f"^https?://({_LABEL}[.])*{_TOP_LABEL}{_PORT_PATH}"
_YOUTUBE_HOSTS = "|".join(host.replace(".", "[.]") for host in sorted(YOUTUBE_HOSTS))
YOUTUBE_PATTERN = f"^https?://({_YOUTUBE_HOSTS}){_PORT_PATH}"  # the hosts url_check accepts


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


def _string(**kwargs: Any) -> Schema:
    return Schema(type=OpenAPIType.STRING, **kwargs)


def _ref(name: str) -> Reference:
    return Reference(ref=_REF.format(name=name))


def _header(description: str, *, required: bool = False) -> OpenAPIHeader:
    return OpenAPIHeader(schema=_string(), description=description, required=required)


_RETRY_AFTER: dict[str, OpenAPIHeader | Reference] = {
    "Retry-After": _header("Seconds to wait before retrying", required=True)
}
_JOB_ID = _string(
    pattern="^[0-9A-HJKMNP-TV-Z]{26}$",
    description="A job id (26 Crockford base32 characters); anything else is a 404.",
)
_EVENT_ID = _string(
    pattern="^[0-9]{0,19}$",
    description="A stream sequence: only later events are sent (empty: all of them)",
)


def _idempotency_key() -> Parameter:
    return Parameter(
        name="Idempotency-Key",
        param_in=ParamType.HEADER,
        required=False,
        description=(
            "Same key (per tenant), same route and body → the same job, also long after; the "
            "key with another body or route → 422 `idempotency_key_reused`."
        ),
        schema=_string(min_length=1, max_length=200, pattern=r"\S"),
    )


def _range() -> Parameter:
    return Parameter(
        name="Range",
        param_in=ParamType.HEADER,
        required=False,
        description=(
            "One byte range (`bytes=a-b`, `a-`, `-n`) → 206; several ranges or a garbled "
            "header → the whole object (RFC 9110 lets a server ignore it); a start past the "
            "end → 416."
        ),
        schema=_string(max_length=256),
    )


def _file_part(description: str) -> Schema:
    """A multipart/form-data body with one required `file` part."""
    return Schema(
        type=OpenAPIType.OBJECT,
        required=["file"],
        properties={
            "file": _string(format=OpenAPIFormat.BINARY, min_length=1, description=description)
        },
    )


def _ingest_body() -> RequestBody:
    multipart = _file_part("The audio (or video) file; its name names the source.")

    def url_body(source: str, pattern: str, description: str) -> Schema:
        return Schema(
            type=OpenAPIType.OBJECT,
            required=["source", "url"],
            additional_properties=False,
            description=description,
            properties={
                "source": _string(const=source),
                "url": _string(max_length=4096, pattern=pattern),
            },
        )

    url_ingest = Schema(
        title="UrlIngestRequest",
        one_of=[
            url_body(
                "url",
                URL_PATTERN,
                "A direct link, a page with an <audio>/<video> tag, a podcast feed or a site "
                "yt-dlp knows. Private, loopback and link-local targets are refused: 422 "
                "`forbidden_url` at once for `localhost` names and IP literals, or the job "
                "fails with it when the host name resolves to one.",
            ),
            url_body(
                "youtube",
                YOUTUBE_PATTERN,
                "A youtube.com / youtu.be URL (only YouTube extractors run).",
            ),
        ],
    )
    return RequestBody(
        required=True,
        description=(
            "Either a multipart upload (`file` part, streamed to storage, size-limited) or a "
            "JSON URL ingest."
        ),
        content={
            "multipart/form-data": OpenAPIMediaType(schema=multipart),
            "application/json": OpenAPIMediaType(schema=url_ingest),
        },
    )


def _image_body() -> RequestBody:
    image = _file_part("A JPEG or PNG picture (its content decides, not its name or type).")
    return RequestBody(
        required=True,
        description="A multipart upload with a `file` part.",
        content={"multipart/form-data": OpenAPIMediaType(schema=image)},
    )


def complete_schema(app: Litestar) -> None:
    """Startup hook: add what decorators can't say to the generated OpenAPI document."""
    schema = app.openapi_schema
    paths: dict[str, Any] = schema.paths or {}
    _add_msgspec_components(app, paths)
    keyed = any(isinstance(guard, ApiKeyGuard) for guard in app.guards)
    for path, item in paths.items():
        for method in _METHODS:
            operation = getattr(item, method, None)
            if operation is None:
                continue
            known = OPERATIONS.get((method, path))
            if known is not None:
                operation.operation_id, operation.tags = known[0], [known[1]]
            _complete_operation(method, path, operation, keyed=keyed)
    schema.tags = [Tag(name=name, description=text) for name, text in TAGS.items()]
    if keyed:
        schema.components.security_schemes = {
            BEARER: SecurityScheme(
                type="http",
                scheme="bearer",
                description="An API key of AUDIOPREP_API_KEYS: `Authorization: Bearer <key>`.",
            )
        }


def _complete_operation(method: str, path: str, operation: Any, *, keyed: bool) -> None:
    responses: dict[str, Any] = dict(operation.responses or {})
    operation.responses = responses
    if path == "/api/audio/ingest":
        operation.request_body = _ingest_body()
        for status in (400, 409, 413, 415, 422):
            responses.setdefault(str(status), _problem_response(_DESCRIPTIONS[status]))
    if path == "/api/images":
        operation.request_body = _image_body()
    if method == "post" and path in ("/api/audio/ingest", *_EDIT_POSTS):
        _add_parameter(operation, _idempotency_key())
    for parameter in operation.parameters or []:
        if parameter.name == "job_id" and parameter.param_in == ParamType.PATH:
            parameter.schema = _JOB_ID
        if path.startswith("/api/presets/") and parameter.name == "name":
            parameter.schema = _string(pattern=PRESET_NAME_PATTERN)
    if path in _EDIT_POSTS and "202" in responses:
        responses["202"].headers = {"Location": _header("The job's poll URL", required=True)}
    if path == "/api/audio/jobs/{job_id}/cancel":
        responses["202"].description = "Cancel requested: the job's view (maybe `cancelled`)"
        responses["200"] = OpenAPIResponse(
            description="The job had already finished: its view, unchanged (nothing published)",
            content={"application/json": OpenAPIMediaType(schema=_ref("JobView"))},
        )
    if path == "/api/audio/jobs/{job_id}/events":
        _events_operation(operation, responses)
    if path == "/api/audio/edit/preview/{job_id}/audio":
        _add_parameter(operation, _range())
        content = _binary(*_PREVIEW_AUDIO)
        content["application/json"] = OpenAPIMediaType(schema=_ref("DownloadLink"))
        responses["200"] = OpenAPIResponse(
            description=(
                "Local storage: the preview (Ogg Opus or M4A/AAC) with `Accept-Ranges`; S3/R2: "
                "`{downloadUrl}`, a presigned link"
            ),
            content=content,
        )
        responses["206"] = _partial(_PREVIEW_AUDIO)
        responses["416"] = _range_not_satisfiable()
    if path == "/api/storage/download":
        _download_operation(operation, responses)
    if path == "/api/audio/jobs/{job_id}/peaks" and "200" in responses:
        responses["200"].content = {"application/json": OpenAPIMediaType(schema=_PEAKS)}
    if path == "/readyz" and "200" in responses:
        responses["503"] = OpenAPIResponse(
            description="NATS or storage is not reachable (the failing one says why)",
            content=responses["200"].content,
        )
    _complete_errors(path, operation, responses, keyed=keyed)


def _events_operation(operation: Any, responses: dict[str, Any]) -> None:
    responses["200"] = OpenAPIResponse(
        description=(
            "Server-Sent Events: `id` = stream sequence, `event` = event type, `data` = the "
            "event JSON as stored; the stream ends after the terminal event"
        ),
        content={"text/event-stream": OpenAPIMediaType(schema=_SSE_MESSAGE)},
    )
    for name, where in (("Last-Event-ID", ParamType.HEADER), ("lastEventId", ParamType.QUERY)):
        _add_parameter(operation, Parameter(name=name, param_in=where, schema=_EVENT_ID))


def _download_operation(operation: Any, responses: dict[str, Any]) -> None:
    for parameter in operation.parameters or []:
        if parameter.name in ("key", "expires", "sig"):
            parameter.required = True
            parameter.schema = _string(min_length=1, max_length=2048)
    _add_parameter(operation, _range())
    responses["200"] = OpenAPIResponse(
        description="The object (`Content-Disposition: attachment`, `Accept-Ranges: bytes`)",
        content=_binary(*_DOWNLOAD_TYPES),
    )
    responses["206"] = _partial(_DOWNLOAD_TYPES)
    responses["416"] = _range_not_satisfiable()


def _complete_errors(path: str, operation: Any, responses: dict[str, Any], *, keyed: bool) -> None:
    """Who may answer what: the key (API routes, not the signed download), rate limit, outage."""
    on_api = path.startswith("/api/")
    needs_key = on_api and path != "/api/storage/download"
    if needs_key and keyed:
        operation.security = [{BEARER: []}]
        responses["401"] = _problem_response(
            _DESCRIPTIONS[401], {"WWW-Authenticate": _header('`Bearer realm="audioprep"`')}
        )
    else:
        operation.security = []
        responses.pop("401", None)
    if on_api:
        responses.setdefault("429", _problem_response(_DESCRIPTIONS[429], _RETRY_AFTER))
        responses.setdefault("503", _problem_response(_DESCRIPTIONS[503], _RETRY_AFTER))
    if path in _STORES_UPLOADS:
        responses.setdefault("507", _problem_response(_DESCRIPTIONS[507], _RETRY_AFTER))
    for status, response in list(responses.items()):
        if on_api and str(status)[0] in "45" and PROBLEM_JSON not in (response.content or {}):
            description = getattr(response, "description", "") or "Problem"
            responses[status] = _problem_response(description)


_SSE_MESSAGE = Schema(
    type=OpenAPIType.OBJECT,
    description="One SSE message (`retry: 2000` comes with the first; `: keep-alive` comments)",
    required=["id", "event", "data"],
    properties={
        "id": _string(pattern="^[0-9]+$", description="The event's stream sequence"),
        "event": _string(enum=sorted(cls.__name__ for cls in get_args(Event))),
        "data": _string(
            content_media_type="application/json",
            content_schema=_ref(EVENT_COMPONENT),
            description="The event as stored in stream JOBS",
        ),
        "retry": Schema(type=OpenAPIType.INTEGER),
    },
)
_PEAKS = Schema(
    type=OpenAPIType.OBJECT,
    required=["version", "sampleRate", "points", "min", "max"],
    properties={
        "version": Schema(type=OpenAPIType.INTEGER),
        "sampleRate": Schema(type=OpenAPIType.INTEGER),
        "points": Schema(type=OpenAPIType.INTEGER),
        "min": Schema(type=OpenAPIType.ARRAY, items=Schema(type=OpenAPIType.NUMBER)),
        "max": Schema(type=OpenAPIType.ARRAY, items=Schema(type=OpenAPIType.NUMBER)),
    },
)


def _add_parameter(operation: Any, parameter: Parameter) -> None:
    parameters = list(operation.parameters or [])
    if all(p.name != parameter.name for p in parameters):
        parameters.append(parameter)
    operation.parameters = parameters


def _binary(*media_types: str) -> dict[str, OpenAPIMediaType]:
    binary = _string(format=OpenAPIFormat.BINARY)
    return {media_type: OpenAPIMediaType(schema=binary) for media_type in media_types}


def _partial(media_types: Sequence[str]) -> OpenAPIResponse:
    return OpenAPIResponse(
        description="One byte range of it (a single `Range`)",
        headers={
            "Content-Range": _header("`bytes a-b/size`", required=True),
            "Accept-Ranges": _header("`bytes`", required=True),
        },
        content=_binary(*media_types),
    )


def _range_not_satisfiable() -> OpenAPIResponse:
    return _problem_response(
        _DESCRIPTIONS[416], {"Content-Range": _header("`bytes */size`", required=True)}
    )


def _problem_response(
    description: str, headers: dict[str, OpenAPIHeader | Reference] | None = None
) -> OpenAPIResponse:
    return OpenAPIResponse(
        description=description,
        headers=headers,
        content={PROBLEM_JSON: OpenAPIMediaType(schema=_ref("Problem"))},
    )


def _add_msgspec_components(app: Litestar, paths: dict[str, Any]) -> None:
    """Request bodies of `opt={JSON_BODY: …}` handlers and the response components, as msgspec
    (which decodes and encodes them) describes them."""
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
    types = [body_type for _, body_type in bodies]
    refs, components = msgspec.json.schema_components(
        [*types, *RESPONSE_TYPES, Event], ref_template=_REF
    )
    for (operation, _), ref in zip(bodies, refs, strict=False):
        operation.request_body = RequestBody(
            required=True,
            content={"application/json": OpenAPIMediaType(schema=to_openapi(ref))},
        )
    components[EVENT_COMPONENT] = refs[-1]
    for name, rules in _RULES_ACROSS_FIELDS.items():  # what msgspec's schema can't state
        if name in components:
            components[name].update(rules)
    schemas = app.openapi_schema.components.schemas
    for name, component in components.items():
        schemas[name] = to_openapi(component)  # type: ignore[assignment]


_RULES_ACROSS_FIELDS = {
    SaveRequest.__name__: SAVE_REQUEST_RULES,
    "PresetCreate": PRESET_RULES,
    "PresetFields": PRESET_RULES,
}
_SCHEMA_FIELDS = {
    f.metadata.get("alias", f.name): f.name for f in dataclasses.fields(Schema) if f.init
}
_SUBSCHEMA_MAPS = {"properties", "patternProperties", "$defs", "dependentSchemas"}
_SUBSCHEMA_LISTS = {"anyOf", "oneOf", "allOf", "prefixItems"}
_SUBSCHEMAS = {
    "items",
    "not",
    "additionalProperties",
    "contains",
    "propertyNames",
    "if",
    "then",
    "contentSchema",
}


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
