"""The intro and outro of a recipe name sources this tenant ingested (a save, a preview, a
preset): checked before anything is published or stored."""

from __future__ import annotations

from audioprep.domain.recipe import Recipe
from audioprep.services.api.context import ApiContext
from audioprep.services.api.problems import ProblemError
from audioprep.shared import keys


async def check_joins(api: ApiContext, recipe: Recipe, tenant: str) -> None:
    """An intro/outro is a source this tenant ingested: else 404 `intro_not_found` /
    `outro_not_found` (another tenant's key looks exactly like a missing one)."""
    for which, spec in (("intro", recipe.intro), ("outro", recipe.outro)):
        if spec is None:
            continue
        field, key = f"recipe.{which}.sourceKey", spec.source_key
        if not keys.is_safe_key(key):
            raise ProblemError(422, "invalid_source_key", "not a valid storage key", field=field)
        if keys.tenant_of_key(key) != tenant or not await api.storage.exists(key):
            raise ProblemError(
                404,
                f"{which}_not_found",
                f"no source {key!r} for the {which}; ingest it first",
                field=field,
            )
