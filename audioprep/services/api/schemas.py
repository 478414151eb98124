"""Request and response bodies (camelCase JSON, validated by msgspec through Litestar)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from audioprep.domain.recipe import SAFE_KEY_PATTERN, OutputOptions, Recipe, SaveFormat
from audioprep.shared.metadata import ChapterList, Metadata, OutputList
from audioprep.shared.presets import PresetName

_Url = Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
_Key = Annotated[
    str,
    msgspec.Meta(min_length=1, max_length=1024, extra_json_schema={"pattern": SAFE_KEY_PATTERN}),
]
_Filename = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]


class _Body(msgspec.Struct, frozen=True, kw_only=True, rename="camel", forbid_unknown_fields=True):
    pass


class UrlIngestRequest(_Body, frozen=True, kw_only=True):
    source: Literal["url", "youtube"]
    url: _Url


class PreviewRequest(_Body, frozen=True, kw_only=True):
    source_key: _Key
    recipe: Recipe = msgspec.field(default_factory=Recipe)
    format: Literal["opus", "aac"] = "opus"
    preset: PresetName | None = None  # a saved preset; the request's fields override it


class SaveRequest(_Body, frozen=True, kw_only=True):
    """One `format`, or 1-5 `outputs` rendered in one job (never both; the OpenAPI document
    says so with a `oneOf`). With `outputs`, `filename` and `options` are the defaults of
    the outputs that have none."""

    source_key: _Key
    recipe: Recipe = msgspec.field(default_factory=Recipe)
    format: SaveFormat | None = None
    outputs: OutputList | None = None  # docs/publishing.md
    filename: _Filename | None = None
    options: OutputOptions | None = None
    metadata: Metadata | None = None  # docs/publishing.md
    chapters: ChapterList | None = None
    preset: PresetName | None = None


# `format` xor `outputs` (a null one counts as left out): added to SaveRequest's schema
# component (openapi.py).
SAVE_REQUEST_RULES = {
    "oneOf": [
        {"required": ["format"], "properties": {"format": {"type": "string"}}},
        {"required": ["outputs"], "properties": {"outputs": {"type": "array"}}},
    ]
}


# A preset holds `format` or `outputs` or neither (the save's own fields may add one), never
# both (routes/presets.py answers 422 `validation_error` on `outputs`).
PRESET_RULES = {
    "not": {
        "required": ["format", "outputs"],
        "properties": {"format": {"type": "string"}, "outputs": {"type": "array"}},
    }
}


class JobAccepted(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    job_id: str
    status: str = "pending"


class DownloadLink(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    download_url: str


class Problem(msgspec.Struct, frozen=True, kw_only=True):
    """RFC 9457 problem details; `code` is stable and meant for programs."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    instance: str
    field: str | None = None
    # 409 `preview_not_ready`: where the job is (`status` is the HTTP status, per RFC 9457).
    job_status: str | None = msgspec.field(default=None, name="jobStatus")
    # 422 `invalid_recipe` for a trim past the end: the source's duration.
    source_duration_ms: int | None = msgspec.field(default=None, name="sourceDurationMs")
