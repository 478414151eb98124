"""Saved presets of a tenant: a recipe plus output and metadata defaults, in KV bucket `presets`.

Key `<tenant>.<name>`; each write is a new KV revision (the bucket keeps PRESETS_HISTORY of
them), and `version` counts the writes of one preset since it was created. A job made from a
preset carries the resolved recipe in its JobRequested (plus the preset's name and revision),
so updating or deleting the preset never changes a job. docs/publishing.md.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Final

import msgspec
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from audioprep.domain.events import utcnow
from audioprep.domain.recipe import OutputOptions, Recipe, SaveFormat, normalized_recipe_bytes
from audioprep.shared import kv_read, names
from audioprep.shared.metadata import Metadata, OutputList
from audioprep.shared.names import Names

NAME_PATTERN: Final = r"^[A-Za-z0-9_-]{1,64}$"
_NAME_RE: Final = re.compile(NAME_PATTERN)
MAX_PRESETS_PER_TENANT: Final = 200

PresetName = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]


def is_preset_name(name: str) -> bool:
    return bool(_NAME_RE.match(name))


class PresetFields(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    rename="camel",
    forbid_unknown_fields=True,
    omit_defaults=True,
):
    """What a preset holds: every field optional, request fields override it."""

    recipe: Recipe | None = None
    metadata: Metadata | None = None
    format: SaveFormat | None = None
    options: OutputOptions | None = None
    outputs: OutputList | None = None  # several files per save (instead of `format`)


class Preset(PresetFields, frozen=True, kw_only=True):
    name: PresetName
    version: int = 1
    created_at: datetime
    updated_at: datetime


class StoredPreset(msgspec.Struct, frozen=True, kw_only=True):
    preset: Preset
    revision: int  # the KV revision: what a job records


class PresetExists(Exception):
    pass


class PresetNotFound(Exception):
    pass


class TooManyPresets(Exception):
    pass


_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(Preset)


class PresetStore:
    def __init__(self, nc: Client, kv: KeyValue, bucket: str) -> None:
        self.nc = nc
        self.kv = kv
        self.bucket = bucket

    @classmethod
    async def open(cls, nc: Client, js: JetStreamContext, n: Names) -> PresetStore:
        return cls(nc, await js.key_value(n.presets_bucket), n.presets_bucket)

    async def get(self, tenant: str, name: str) -> StoredPreset:
        if not is_preset_name(name):
            raise PresetNotFound(name)
        try:
            entry = await self.kv.get(names.preset_key(tenant, name))
        except KeyNotFoundError:  # also KeyDeletedError
            raise PresetNotFound(name) from None
        if not entry.value or entry.revision is None:
            raise PresetNotFound(name)
        return StoredPreset(preset=_decoder.decode(entry.value), revision=entry.revision)

    async def _latest(self, tenant: str) -> dict[str, kv_read.KvEntry]:
        """The tenant's presets as stored now, complete also after a leader change (not a KV
        watch: its caught-up marker can come first and list no preset, shared/kv_read.py)."""
        keys = names.tenant_keys(tenant)
        return await kv_read.read_latest(self.nc, self.bucket, keys)

    async def names(self, tenant: str) -> list[str]:
        prefix = f"{names.check_token(tenant)}."
        return sorted(k.removeprefix(prefix) for k in await self._latest(tenant))

    async def list(self, tenant: str) -> list[StoredPreset]:
        found = await self._latest(tenant)
        out = [
            StoredPreset(preset=_decoder.decode(e.value), revision=e.revision)
            for e in found.values()
            if e.value
        ]
        return sorted(out, key=lambda p: p.preset.name)

    async def create(self, tenant: str, name: str, fields: PresetFields) -> StoredPreset:
        if len(await self.names(tenant)) >= MAX_PRESETS_PER_TENANT:
            raise TooManyPresets(name)
        now = utcnow()
        preset = Preset(name=name, created_at=now, updated_at=now, **_fields(fields))
        key = names.preset_key(tenant, name)
        try:
            revision = await self.kv.create(key, _encoder.encode(preset))
        except KeyWrongLastSequenceError:
            raise PresetExists(name) from None
        return StoredPreset(preset=preset, revision=revision)

    async def replace(self, tenant: str, name: str, fields: PresetFields) -> StoredPreset:
        """A new revision of an existing preset (compare-and-set on the revision read)."""
        current = await self.get(tenant, name)
        old = current.preset
        preset = Preset(
            name=name,
            version=old.version + 1,
            created_at=old.created_at,
            updated_at=utcnow(),
            **_fields(fields),
        )
        revision = await self.kv.update(
            names.preset_key(tenant, name), _encoder.encode(preset), last=current.revision
        )
        return StoredPreset(preset=preset, revision=revision)

    async def delete(self, tenant: str, name: str) -> None:
        current = await self.get(tenant, name)
        await self.kv.delete(names.preset_key(tenant, name), last=current.revision)


def _fields(fields: PresetFields) -> dict[str, Any]:
    return {
        "recipe": fields.recipe,
        "metadata": fields.metadata,
        "format": fields.format,
        "options": fields.options,
        "outputs": fields.outputs,
    }


def merge_into_request(preset: Preset, body: dict[str, Any], *, save: bool) -> dict[str, Any]:
    """The request body with the preset's values where the request has none: `recipe` and
    `metadata` merged field by field (the request's fields win), `format`/`outputs` taken
    from the preset only when the request has neither, `options` when it has none (saves; a
    preview's format is its own)."""
    merged = dict(body)
    if preset.recipe is not None:
        base = msgspec.json.decode(normalized_recipe_bytes(preset.recipe))  # non-defaults only
        request_recipe = body.get("recipe")
        if isinstance(request_recipe, dict):
            merged["recipe"] = {**base, **request_recipe}
        elif request_recipe is None:
            merged["recipe"] = base
    if not save:
        return merged
    if preset.metadata is not None:
        base = msgspec.to_builtins(preset.metadata)
        request_meta = body.get("metadata")
        if isinstance(request_meta, dict):
            merged["metadata"] = {**base, **request_meta}
        elif request_meta is None:
            merged["metadata"] = base
    chose_files = body.get("format") is not None or body.get("outputs") is not None
    if preset.format is not None and not chose_files:
        merged["format"] = preset.format
    if preset.outputs is not None and not chose_files:
        merged["outputs"] = msgspec.to_builtins(preset.outputs)
    if preset.options is not None and "options" not in body:
        merged["options"] = msgspec.to_builtins(preset.options)
    return merged
