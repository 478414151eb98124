"""Download links for job results: HMAC-signed for local storage, presigned for S3/R2."""

from __future__ import annotations

import logging
from datetime import timedelta

import msgspec

from audioprep.domain.views import JobView
from audioprep.services.api.context import ApiContext
from audioprep.shared import signing

log = logging.getLogger("audioprep.api")

LINK_TTL_S = signing.DEFAULT_TTL_S


async def download_link(api: ApiContext, key: str) -> str:
    """A URL a browser can fetch `key` from without credentials, valid for about an hour."""
    if api.storage.is_local:
        settings = api.settings
        return signing.download_url(
            settings.base_url, settings.signing_secret, key, ttl_s=LINK_TTL_S
        )
    url = await api.storage.sign_get(key, timedelta(seconds=LINK_TTL_S))
    if not url:
        raise RuntimeError("storage gave no signed URL")
    return url


def result_key(view: JobView) -> str | None:
    """The output a job produced, if any (preview or prepared file)."""
    if view.result is None or view.status != "completed":
        return None
    return view.result.preview_key or view.result.prepared_key


async def with_download_url(api: ApiContext, view: JobView) -> JobView:
    """The view plus `downloadUrl` when it has an output (and one per `result.outputs[]`
    entry of a save with several); signing failures only log."""
    key = result_key(view)
    if key is None:
        return view
    try:
        url = await download_link(api, key)
        result = view.result
        if result is not None and result.outputs:
            outputs = [
                msgspec.structs.replace(o, download_url=await download_link(api, o.prepared_key))
                for o in result.outputs
            ]
            view = msgspec.structs.replace(
                view, result=msgspec.structs.replace(result, outputs=outputs)
            )
    except Exception as exc:
        log.warning("download link not signed", extra={"job_id": view.job_id, "error": repr(exc)})
        return view
    return msgspec.structs.replace(view, download_url=url)
