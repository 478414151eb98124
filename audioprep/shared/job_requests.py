"""One typed request per job kind, decoded and checked once where a worker takes the job.

On the wire a request is `JobRequested` — flat optional fields, the recipe as plain JSON —
because an event must decode forever while the rules for its contents may tighten
(docs/architecture.md, "Decisions"). Handlers never look at those loose fields: they take the
request of their kind from here, where every field is validated into its struct (`Recipe`,
`OutputOptions`, `Output`, `Metadata`, `Chapter`), so a request that no longer passes fails
its job once with a clear code instead of somewhere deep in a handler.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from audioprep.domain.errors import INVALID_RECIPE, Permanent
from audioprep.domain.events import JobRequested
from audioprep.domain.recipe import OutputOptions, Recipe, RecipeError, check_recipe
from audioprep.shared.metadata import (
    Chapter,
    Metadata,
    MetadataError,
    Output,
    parse_chapters,
    parse_metadata,
)

INVALID_REQUEST = "invalid_request"
INVALID_METADATA = "invalid_metadata"
PREVIEW_DEFAULT_FORMAT = "opus"


class IngestRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Bring audio in: an upload already in storage, or a URL / YouTube link to fetch."""

    job_id: str
    tenant: str
    source: Literal["upload", "url", "youtube"]
    upload_key: str | None = None
    url: str | None = None
    filename: str | None = None
    retry_of: str | None = None


class PreviewRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Render a recipe of a stored source to one small, playable file (render-cached)."""

    job_id: str
    tenant: str
    source_key: str
    recipe: Recipe
    format: str
    options: OutputOptions | None
    cache_key: str | None


class SaveRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Render a recipe of a stored source to one or more publish-ready files."""

    job_id: str
    tenant: str
    source_key: str
    recipe: Recipe
    outputs: list[Output]  # always at least one: a single-`format` save is one output
    several: bool  # asked for with `outputs` (the result then lists them)
    filename: str | None
    options: OutputOptions | None  # defaults for outputs without their own
    metadata: Metadata | None
    chapters: list[Chapter]


RenderRequest = PreviewRequest | SaveRequest


def ingest_request(event: JobRequested) -> IngestRequest:
    if event.kind != "ingest" or event.source is None:
        raise Permanent("ingest job without a source", code=INVALID_REQUEST)
    if event.source == "upload" and not event.upload_key:
        raise Permanent("upload job without upload key", code=INVALID_REQUEST)
    if event.source != "upload" and not event.url:
        raise Permanent(f"{event.source} job without url", code=INVALID_REQUEST)
    return IngestRequest(
        job_id=event.job_id,
        tenant=event.tenant,
        source=event.source,
        upload_key=event.upload_key,
        url=event.url,
        filename=event.filename,
        retry_of=event.retry_of,
    )


def render_request(event: JobRequested) -> RenderRequest:
    """The preview or save this event asks for; Permanent (invalid_request, invalid_recipe,
    invalid_metadata) when a field doesn't pass."""
    if event.kind not in ("preview", "save") or not event.source_key:
        raise Permanent("render job without sourceKey", code=INVALID_REQUEST)
    try:
        recipe = msgspec.convert(event.recipe or {}, Recipe)
        check_recipe(recipe)
        options = msgspec.convert(event.options, OutputOptions) if event.options else None
    except (msgspec.ValidationError, RecipeError) as exc:
        raise Permanent(f"invalid recipe: {exc}", code=INVALID_RECIPE) from exc
    if event.kind == "preview":
        return PreviewRequest(
            job_id=event.job_id,
            tenant=event.tenant,
            source_key=event.source_key,
            recipe=recipe,
            format=event.format or PREVIEW_DEFAULT_FORMAT,
            options=options,
            cache_key=event.cache_key,
        )
    if event.outputs:
        try:
            outputs = msgspec.convert(event.outputs, list[Output])
        except msgspec.ValidationError as exc:
            raise Permanent(f"invalid outputs: {exc}", code=INVALID_REQUEST) from exc
    else:
        try:
            outputs = [msgspec.convert({"format": event.format or ""}, Output)]
        except msgspec.ValidationError:
            raise Permanent(
                f"unknown output format {event.format!r}", code=INVALID_RECIPE
            ) from None
    try:
        metadata = parse_metadata(event.metadata) if event.metadata else None
        chapters = parse_chapters(event.chapters)
    except (msgspec.ValidationError, MetadataError) as exc:
        raise Permanent(f"invalid metadata: {exc}", code=INVALID_METADATA) from exc
    return SaveRequest(
        job_id=event.job_id,
        tenant=event.tenant,
        source_key=event.source_key,
        recipe=recipe,
        outputs=outputs,
        several=bool(event.outputs),
        filename=event.filename,
        options=options,
        metadata=metadata,
        chapters=chapters,
    )
