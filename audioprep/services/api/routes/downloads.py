"""GET /api/storage/download: local-storage objects behind an HMAC-signed, expiring link."""

from __future__ import annotations

from typing import Any

from litestar import Request, get
from litestar.di import NamedDependency
from litestar.params import FromQuery
from litestar.response import Stream

from audioprep.services.api.context import ApiContext
from audioprep.services.api.openapi import problems
from audioprep.services.api.problems import ProblemError
from audioprep.services.api.serving import serve_object
from audioprep.shared import keys, signing


@get(
    signing.DOWNLOAD_PATH,
    summary="Download a stored result through a signed link",
    description=(
        "Links come from a job's `downloadUrl`. No API key is needed: the HMAC signature "
        "(over key, expiry and the key's tenant) is the credential. Any change to the query, "
        "or an expired link, is a 403. Supports `Range`."
    ),
    responses=problems(403, 404, 416),
    response_description="The object's bytes (200), or one range of them (206)",
)
async def storage_download(
    request: Request[Any, Any, Any],
    api: NamedDependency[ApiContext],
    key: FromQuery[str | None] = None,
    expires: FromQuery[str | None] = None,
    sig: FromQuery[str | None] = None,
) -> Stream:
    try:
        verified = signing.verify(api.settings.signing_secret, key, expires, sig)
    except signing.SignatureError as exc:
        raise ProblemError(403, exc.code, exc.message) from None
    name = keys.safe_filename(verified.rsplit("/", 1)[-1])
    return await serve_object(api.storage, verified, request.headers, download_name=name)
