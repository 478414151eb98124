"""Saved presets of a tenant (KV bucket `presets`), and `"preset": "name"` on preview/save.

`POST /api/presets` → 201, `GET /api/presets`, `GET/PUT/DELETE /api/presets/{name}`. Another
tenant's preset is a 404 `preset_not_found`, exactly like one that does not exist. Kept out of
the OpenAPI document for now, like the webhook routes. docs/publishing.md.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any, TypeVar

import msgspec
from litestar import Request, Response, delete, get, post, put
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_204_NO_CONTENT

from audioprep.domain.recipe import OutputOptions, Recipe, RecipeError, SaveFormat, check_recipe
from audioprep.services.api import bodies
from audioprep.services.api.auth import tenant_for
from audioprep.services.api.bodies import decode_json, json_body, json_bytes, malformed_json
from audioprep.services.api.context import ApiContext
from audioprep.services.api.joins import check_joins
from audioprep.services.api.openapi import JSON_BODY, problems
from audioprep.services.api.options import options_for
from audioprep.services.api.problems import ProblemError
from audioprep.services.api.routes.images import publishing_fields
from audioprep.shared.metadata import Metadata, Output
from audioprep.shared.presets import (
    NAME_PATTERN,
    PresetExists,
    PresetFields,
    PresetName,
    PresetNotFound,
    PresetStore,
    StoredPreset,
    TooManyPresets,
    is_preset_name,
    merge_into_request,
)

T = TypeVar("T")


class PresetCreate(PresetFields, frozen=True, kw_only=True):
    name: PresetName


class PresetOut(msgspec.Struct, frozen=True, kw_only=True, rename="camel", omit_defaults=True):
    name: str
    version: int
    revision: int
    created_at: datetime
    updated_at: datetime
    recipe: Recipe | None = None
    metadata: Metadata | None = None
    format: SaveFormat | None = None
    options: OutputOptions | None = None
    outputs: list[Output] | None = None


class PresetList(msgspec.Struct, frozen=True, kw_only=True):
    presets: list[PresetOut]


def _out(stored: StoredPreset) -> PresetOut:
    p = stored.preset
    return PresetOut(
        name=p.name,
        version=p.version,
        revision=stored.revision,
        created_at=p.created_at,
        updated_at=p.updated_at,
        recipe=p.recipe,
        metadata=p.metadata,
        format=p.format,
        options=p.options,
        outputs=p.outputs,
    )


def _not_found(name: str) -> ProblemError:
    return ProblemError(404, "preset_not_found", f"no preset {name!r}", field="preset")


async def _store(api: ApiContext) -> PresetStore:
    return await PresetStore.open(api.nc, api.js, api.settings.names)


async def _checked(api: ApiContext, tenant: str, fields: PresetFields) -> PresetFields:
    if fields.recipe is not None:
        try:
            check_recipe(fields.recipe)
        except RecipeError as exc:
            field = f"recipe.{exc.field}"
            reason = exc.message.split(" - at ", 1)[0]
            raise ProblemError(422, "invalid_recipe", f"{field} {reason}", field=field) from None
        await check_joins(api, fields.recipe, tenant)
    await publishing_fields(api, tenant, fields.metadata, None)
    if fields.format is not None and fields.outputs is not None:
        raise ProblemError(
            422,
            "validation_error",
            "a preset has either `format` (one file) or `outputs` (several), not both",
            field="outputs",
        )
    return fields


def _fields_of(body: PresetFields) -> PresetFields:
    return PresetFields(
        recipe=body.recipe,
        metadata=body.metadata,
        format=body.format,
        options=body.options,
        outputs=body.outputs,
    )


@post(
    "/api/presets",
    summary="Save a preset",
    description=(
        'A named recipe, metadata and output choice of this tenant, used by `"preset": '
        '"name"` on a preview or save (the request\'s own fields win). 409 `preset_exists` '
        "when the name is taken (PUT replaces); a `metadata.coverKey` must be an uploaded image "
        "(404 `image_not_found`)."
    ),
    status_code=HTTP_201_CREATED,
    responses=problems(400, 401, 404, 409, 413, 415, 422),
    opt={JSON_BODY: PresetCreate},
)
async def create_preset(
    request: Request[Any, Any, Any], api: NamedDependency[ApiContext]
) -> Response[PresetOut]:
    tenant = tenant_for(request, api.settings)
    body = await json_body(request, PresetCreate)
    fields = await _checked(api, tenant, _fields_of(body))
    store = await _store(api)
    try:
        stored = await store.create(tenant, body.name, fields)
    except PresetExists:
        raise ProblemError(
            409,
            "preset_exists",
            f"preset {body.name!r} exists; PUT /api/presets/{body.name} replaces it",
            field="name",
        ) from None
    except TooManyPresets:
        raise ProblemError(422, "too_many_presets", "this tenant has too many presets") from None
    return Response(
        _out(stored),
        status_code=HTTP_201_CREATED,
        headers={"Location": f"/api/presets/{body.name}"},
    )


@get("/api/presets", summary="List the tenant's presets", responses=problems(401))
async def list_presets(
    request: Request[Any, Any, Any], api: NamedDependency[ApiContext]
) -> PresetList:
    tenant = tenant_for(request, api.settings)
    store = await _store(api)
    return PresetList(presets=[_out(s) for s in await store.list(tenant)])


@get("/api/presets/{name:str}", summary="One preset", responses=problems(401, 404))
async def get_preset(
    request: Request[Any, Any, Any], api: NamedDependency[ApiContext], name: FromPath[str]
) -> PresetOut:
    tenant = tenant_for(request, api.settings)
    try:
        return _out(await (await _store(api)).get(tenant, name))
    except PresetNotFound:
        raise _not_found(name) from None


@put(
    "/api/presets/{name:str}",
    summary="Replace a preset (or create it)",
    description="A new version of the preset (200), or a new preset under this name (201).",
    status_code=HTTP_200_OK,
    responses={
        201: ResponseSpec(data_container=PresetOut, description="Created under this name"),
        **problems(400, 401, 404, 409, 413, 415, 422),
    },
    opt={JSON_BODY: PresetFields},
)
async def put_preset(
    request: Request[Any, Any, Any], api: NamedDependency[ApiContext], name: FromPath[str]
) -> Response[PresetOut]:
    """Replace a preset (a new version); creates it when there is none (201)."""
    tenant = tenant_for(request, api.settings)
    if not is_preset_name(name):
        raise ProblemError(
            422, "validation_error", f"a preset name matches {NAME_PATTERN}", field="name"
        )
    fields = await _checked(api, tenant, await json_body(request, PresetFields))
    store = await _store(api)
    try:
        return Response(_out(await store.replace(tenant, name, fields)), status_code=HTTP_200_OK)
    except PresetNotFound:
        pass
    try:
        stored = await store.create(tenant, name, fields)
    except (PresetExists, TooManyPresets) as exc:
        raise ProblemError(409, "preset_conflict", f"preset {name!r} changed: {exc!r}") from None
    return Response(_out(stored), status_code=HTTP_201_CREATED)


@delete(
    "/api/presets/{name:str}",
    summary="Delete a preset",
    status_code=HTTP_204_NO_CONTENT,
    responses=problems(401, 404),
)
async def delete_preset(
    request: Request[Any, Any, Any], api: NamedDependency[ApiContext], name: FromPath[str]
) -> None:
    tenant = tenant_for(request, api.settings)
    try:
        await (await _store(api)).delete(tenant, name)
    except PresetNotFound:
        raise _not_found(name) from None


preset_handlers = [
    options_for("/api/presets", "GET, OPTIONS, POST"),
    options_for("/api/presets/{name:str}", "DELETE, GET, OPTIONS, PUT"),
    create_preset,
    list_presets,
    get_preset,
    put_preset,
    delete_preset,
]


async def body_with_preset(
    request: Request[Any, Any, Any], api: ApiContext, tenant: str, type_: type[T], *, save: bool
) -> tuple[T, int | None]:
    """The preview/save body with its `preset` resolved (request fields win), and the
    preset's KV revision (None without one). Same error mapping as `json_body`."""
    raw = await json_bytes(request)
    with contextlib.suppress(msgspec.DecodeError, UnicodeDecodeError):
        # One typed pass for a body without a preset (the common case); any other body
        # (a preset to merge, an error to report) takes the path below, as before.
        data = bodies.typed_decoder(type_).decode(raw)
        if getattr(data, "preset", None) is None:
            return data, None
    try:
        document = msgspec.json.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise malformed_json(exc) from None
    name = document.get("preset") if isinstance(document, dict) else None
    if name is None:
        return decode_json(raw, type_), None
    if not isinstance(name, str) or not is_preset_name(name):
        raise ProblemError(
            422, "validation_error", f"`preset` is a name matching {NAME_PATTERN}", field="preset"
        )
    try:
        stored = await (await _store(api)).get(tenant, name)
    except PresetNotFound:
        raise _not_found(name) from None
    merged = merge_into_request(stored.preset, document, save=save)
    return decode_json(msgspec.json.encode(merged), type_), stored.revision
