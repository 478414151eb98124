"""Edit routes: preview a recipe (render cache, coalescing), save a render, play a preview."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

import msgspec
from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.status_codes import HTTP_202_ACCEPTED

from audioprep.domain.events import JobRequested
from audioprep.domain.recipe import OutputOptions, Recipe, RecipeError, check_recipe
from audioprep.services.api.auth import tenant_for
from audioprep.services.api.context import ApiContext
from audioprep.services.api.jobs import (
    body_fingerprint,
    has_idempotency_key,
    job_id_for,
    load_view,
    submit,
    traceparent_of,
)
from audioprep.services.api.joins import check_joins
from audioprep.services.api.links import LINK_TTL_S
from audioprep.services.api.openapi import JSON_BODY, problems
from audioprep.services.api.previews import replayed_job, request_preview
from audioprep.services.api.problems import ProblemError
from audioprep.services.api.raw_routes import Accepted, served_raw
from audioprep.services.api.routes.images import publishing_fields
from audioprep.services.api.routes.presets import body_with_preset
from audioprep.services.api.schemas import DownloadLink, JobAccepted, PreviewRequest, SaveRequest
from audioprep.services.api.serving import serve_object
from audioprep.shared import keys
from audioprep.shared.ids import is_job_id

# What an Idempotency-Key is fingerprinted with, besides the body.
PREVIEW = "POST /api/audio/edit/preview"
SAVE = "POST /api/audio/edit/save"


def _check_recipe(recipe: Recipe) -> None:
    try:
        check_recipe(recipe)
    except RecipeError as exc:
        field = f"recipe.{exc.field}"
        reason = exc.message.split(" - at ", 1)[0]
        raise ProblemError(422, "invalid_recipe", f"{field} {reason}", field=field) from None


async def _check_source(api: NamedDependency[ApiContext], key: str, tenant: str) -> None:
    """The source must be a safe key of this tenant that exists in storage."""
    if not keys.is_safe_key(key):
        raise ProblemError(422, "invalid_source_key", "not a valid storage key", field="sourceKey")
    if keys.tenant_of_key(key) != tenant or not await api.storage.exists(key):
        raise ProblemError(404, "source_not_found", f"no source {key!r}", field="sourceKey")


def _check_outputs(data: SaveRequest) -> None:
    """`format` for one file, or `outputs` for several: exactly one of them."""
    if data.format is not None and data.outputs is not None:
        raise ProblemError(
            422,
            "validation_error",
            "give either `format` (one file) or `outputs` (several), not both",
            field="outputs",
        )
    if data.format is None and data.outputs is None:
        raise ProblemError(
            422, "validation_error", "`format` or `outputs` is required", field="format"
        )


def _ingest_job_of(source_key: str) -> str | None:
    """`[tenants/<t>/]sources/<ingestJobId>/<name>` → the ingest job id."""
    parts = source_key.split("/")
    if parts[0] == "tenants":
        parts = parts[2:]
    if len(parts) >= 3 and parts[0] == "sources" and is_job_id(parts[1]):
        return parts[1]
    return None


async def _check_trim_in_source(
    api: NamedDependency[ApiContext], source_key: str, recipe: Recipe, tenant: str
) -> None:
    """A trim that starts at or past the end of the source is refused now, not by the worker.

    The duration is the one its ingest measured (the job view); without that view (another
    kind of key, a job the view doesn't know) the request goes ahead as before.
    """
    if recipe.trim is None or recipe.trim.start_ms == 0:
        return
    ingest_job = _ingest_job_of(source_key)
    if ingest_job is None:
        return
    try:
        view = await load_view(api, ingest_job, tenant)
    except ProblemError:
        return
    result = view.result
    if view.kind != "ingest" or result is None or result.source_key != source_key:
        return
    duration = result.duration_ms
    if duration is not None and recipe.trim.start_ms >= duration:
        raise ProblemError(
            422,
            "invalid_recipe",
            f"recipe.trim.startMs {recipe.trim.start_ms} is at or past the end of the source "
            f"({duration} ms)",
            field="recipe.trim.startMs",
            extra={"sourceDurationMs": duration},
        )


def _accepted(answer: Accepted) -> Response[JobAccepted]:
    job_id, status = answer
    return Response(
        JobAccepted(job_id=job_id, status=status),
        status_code=HTTP_202_ACCEPTED,
        headers={"Location": f"/api/audio/jobs/{job_id}"},
    )


async def _replay(
    request: Request[Any, Any, Any],
    api: ApiContext,
    job_id: str,
    tenant: str,
    kind: Literal["preview", "save"],
    route: str,
    data: msgspec.Struct,
) -> tuple[str | None, Accepted | None]:
    """The request's fingerprint (with an Idempotency-Key) and, for a replay of the key, the
    answer the first request got. Without a key the id is fresh: there is nothing to replay
    (two lookups saved)."""
    if not has_idempotency_key(request):
        return None, None
    fingerprint = body_fingerprint(route, data)
    replayed = await replayed_job(api, job_id, tenant, kind=kind, fingerprint=fingerprint)
    if replayed is None:
        return fingerprint, None
    view = await load_view(api, replayed, tenant)
    return fingerprint, (replayed, view.status)


async def _check_render(api: ApiContext, source_key: str, recipe: Recipe, tenant: str) -> None:
    """What a preview and a save check before they publish: the recipe, the source, the trim
    against the source's length, the intro/outro sources."""
    _check_recipe(recipe)
    await _check_source(api, source_key, tenant)
    await _check_trim_in_source(api, source_key, recipe, tenant)
    await check_joins(api, recipe, tenant)


async def preview_job(request: Request[Any, Any, Any], api: ApiContext) -> Accepted:
    """POST /api/audio/edit/preview: the job that renders (or already has) the preview."""
    tenant = tenant_for(request, api.settings)
    job_id = job_id_for(request, tenant)
    data, _ = await body_with_preset(request, api, tenant, PreviewRequest, save=False)
    fingerprint, replay = await _replay(request, api, job_id, tenant, "preview", PREVIEW, data)
    if replay is not None:
        return replay
    await _check_render(api, data.source_key, data.recipe, tenant)
    answer = await request_preview(
        api,
        job_id=job_id,
        tenant=tenant,
        source_key=data.source_key,
        recipe=data.recipe,
        fmt=data.format,
        fingerprint=fingerprint,
        traceparent=traceparent_of(request),
    )
    return answer.job_id, answer.status


async def save_job(request: Request[Any, Any, Any], api: ApiContext) -> Accepted:
    """POST /api/audio/edit/save: the job that renders and stores the result."""
    tenant = tenant_for(request, api.settings)
    job_id = job_id_for(request, tenant)
    data, preset_revision = await body_with_preset(request, api, tenant, SaveRequest, save=True)
    fingerprint, replay = await _replay(request, api, job_id, tenant, "save", SAVE, data)
    if replay is not None:
        return replay
    _check_outputs(data)
    await _check_render(api, data.source_key, data.recipe, tenant)
    options: OutputOptions | None = data.options
    metadata, chapters = await publishing_fields(api, tenant, data.metadata, data.chapters)
    outputs = [msgspec.to_builtins(o) for o in data.outputs] if data.outputs else None
    event = JobRequested(
        job_id=job_id,
        kind="save",
        tenant=tenant,
        source_key=data.source_key,
        recipe=msgspec.to_builtins(data.recipe),
        format=data.outputs[0].format if data.outputs else data.format,
        outputs=outputs,
        filename=keys.safe_filename(data.filename) if data.filename else None,
        options=msgspec.to_builtins(options) if options is not None else None,
        request_fingerprint=fingerprint,
        metadata=metadata,
        chapters=chapters,
        preset=data.preset,
        preset_revision=preset_revision,
    )
    await submit(api, event, traceparent_of(request))
    return job_id, "pending"


@post(
    "/api/audio/edit/preview",
    summary="Preview a recipe",
    description=(
        "Renders a browser-playable preview (opus in Ogg, or aac in M4A). A render-cache hit "
        "(same source, normalized recipe, format and renderer version) answers with a job "
        "that is already `completed` (`result.fromCache`) and no worker work; while an "
        "identical preview is being rendered, the request joins that job (same `jobId`)."
    ),
    status_code=HTTP_202_ACCEPTED,
    responses=problems(400, 401, 404, 409, 413, 415, 422),
    opt={JSON_BODY: PreviewRequest},
    middleware=[served_raw(preview_job)],
)
async def preview(
    request: Request[Any, Any, Any], api: NamedDependency[ApiContext]
) -> Response[JobAccepted]:
    # Declares the route (router, OpenAPI); `served_raw` answers it with `preview_job`.
    return _accepted(await preview_job(request, api))


@post(
    "/api/audio/edit/save",
    summary="Render and save",
    description=(
        "Renders the recipe into `format` (wav, flac, mp3, opus, aac) with optional encoder "
        "`options`; the result's `preparedKey` names the file and the job view carries a "
        "signed `downloadUrl`. With `outputs` (1-5 formats, instead of `format`) the recipe "
        "runs once and feeds every encoder: `result.outputs[]` has each file's key, size, "
        "loudness report and `downloadUrl`. `metadata` and `chapters` go into every file "
        "(docs/publishing.md)."
    ),
    status_code=HTTP_202_ACCEPTED,
    responses=problems(400, 401, 404, 409, 413, 415, 422),
    opt={JSON_BODY: SaveRequest},
    middleware=[served_raw(save_job)],
)
async def save(
    request: Request[Any, Any, Any], api: NamedDependency[ApiContext]
) -> Response[JobAccepted]:
    # Declares the route (router, OpenAPI); `served_raw` answers it with `save_job`.
    return _accepted(await save_job(request, api))


@get(
    "/api/audio/edit/preview/{job_id:str}/audio",
    summary="Play a preview",
    description=(
        "Local storage: the preview's bytes with its content type and `Range` support "
        "(206 partial content), so a browser `<audio>` element can seek. S3/R2: JSON "
        '`{"downloadUrl"}` with a presigned URL.'
    ),
    responses=problems(401, 404, 409, 416),
    response_description="audio bytes (200/206), or JSON {downloadUrl} on S3/R2",
)
async def preview_audio(
    request: Request[Any, Any, Any], api: NamedDependency[ApiContext], job_id: FromPath[str]
) -> Response[Any]:
    tenant = tenant_for(request, api.settings)
    view = await load_view(api, job_id, tenant)
    if view.kind != "preview":
        raise ProblemError(404, "not_a_preview", f"job {job_id} is a {view.kind} job")
    key = view.result.preview_key if view.result else None
    if view.status != "completed" or not key:
        raise ProblemError(
            409,
            "preview_not_ready",
            f"the preview is {view.status}; poll the job until it is completed",
            extra={"jobStatus": view.status},  # `status` is the HTTP status (RFC 9457)
        )
    if not api.storage.is_local:
        url = await api.storage.sign_get(key, timedelta(seconds=LINK_TTL_S))
        if not url:
            raise ProblemError(503, "signing_failed", "could not sign a download URL")
        return Response(DownloadLink(download_url=url))
    return await serve_object(api.storage, key, request.headers)
