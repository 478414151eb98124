"""POST /api/audio/ingest: a multipart upload, or JSON {source: url|youtube, url}."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, post
from litestar.di import NamedDependency
from litestar.status_codes import HTTP_202_ACCEPTED

from audioprep.domain.events import JobRequested
from audioprep.services.api.auth import tenant_for
from audioprep.services.api.bodies import (
    declares_empty_body,
    empty_body,
    is_json_media_type,
    json_body,
)
from audioprep.services.api.context import ApiContext
from audioprep.services.api.jobs import (
    body_fingerprint,
    has_idempotency_key,
    job_id_for,
    load_view,
    request_fingerprint,
    submit,
    traceparent_of,
)
from audioprep.services.api.previews import replayed_job
from audioprep.services.api.problems import ProblemError
from audioprep.services.api.schemas import JobAccepted, UrlIngestRequest
from audioprep.services.api.uploads import hash_upload, store_upload
from audioprep.services.api.url_check import check_url
from audioprep.shared import keys

ROUTE = "POST /api/audio/ingest"  # what an Idempotency-Key is fingerprinted with, and the body


@post(
    "/api/audio/ingest",
    status_code=HTTP_202_ACCEPTED,
    request_max_body_size=None,
    summary="Ingest audio from an upload or a URL",
    description=(
        'multipart/form-data with a `file` part, or JSON `{"source": "url"|"youtube", '
        '"url": ...}`. Answers 202 with the job id at once; poll the job for the result.'
    ),
)
async def ingest(
    request: Request[Any, Any, Any], api: NamedDependency[ApiContext]
) -> Response[JobAccepted]:
    tenant = tenant_for(request, api.settings)
    job_id = job_id_for(request, tenant)
    keyed = has_idempotency_key(request)
    ctype = request.headers.get("content-type", "")
    if declares_empty_body(request):
        raise empty_body()
    if is_json_media_type(ctype):
        body = await json_body(request, UrlIngestRequest)
        fingerprint = body_fingerprint(ROUTE, body) if keyed else None
        replayed = (
            await replayed_job(api, job_id, tenant, kind="ingest", fingerprint=fingerprint)
            if keyed
            else None
        )
        if replayed is not None:
            return await _replayed(api, replayed, tenant)
        check_url(body.url, body.source, api.settings)
        event = JobRequested(
            job_id=job_id,
            kind="ingest",
            tenant=tenant,
            source=body.source,
            url=body.url,
            request_fingerprint=fingerprint,
        )
    elif not ctype.lower().startswith("multipart/"):
        raise ProblemError(
            415,
            "unsupported_media_type",
            "send multipart/form-data (a `file` upload) or application/json (a URL)",
        )
    else:
        limit = api.settings.max_upload_bytes

        async def replay_fingerprint() -> str:
            # The same file again? It is read and hashed, not stored a second time.
            digest = await hash_upload(request, limit)
            return _upload_fingerprint(digest.filename, digest.sha256)

        replayed = (
            await replayed_job(api, job_id, tenant, kind="ingest", fingerprint=replay_fingerprint)
            if keyed
            else None
        )
        if replayed is not None:
            return await _replayed(api, replayed, tenant)
        upload = await store_upload(
            request,
            api.storage,
            lambda name: keys.upload_key(tenant, job_id, name),
            limit,
            hash_content=keyed,
        )
        event = JobRequested(
            job_id=job_id,
            kind="ingest",
            tenant=tenant,
            source="upload",
            upload_key=upload.key,
            filename=keys.safe_filename(upload.filename),
            request_fingerprint=(
                _upload_fingerprint(upload.filename, upload.sha256) if upload.sha256 else None
            ),
        )
    try:
        await submit(api, event, traceparent_of(request))
    except ProblemError:
        # A concurrent request with this key but another file won the race: drop our copy.
        # (With the same file name both wrote the same key; the winner's job reads that one.)
        # A job we can't see yet (503: the publish may have landed) keeps its upload.
        if event.upload_key:
            won = await api.events.first_event(job_id)
            winner = won.event if won is not None else None
            if isinstance(winner, JobRequested) and winner.upload_key != event.upload_key:
                await api.storage.delete(event.upload_key)
        raise
    return Response(JobAccepted(job_id=job_id), status_code=HTTP_202_ACCEPTED)


def _upload_fingerprint(filename: str, sha256: str) -> str:
    """An upload stands for its route, its file name and its content."""
    return request_fingerprint(ROUTE, f"upload\n{filename}\n{sha256}".encode())


async def _replayed(api: ApiContext, job_id: str, tenant: str) -> Response[JobAccepted]:
    view = await load_view(api, job_id, tenant)
    return Response(JobAccepted(job_id=job_id, status=view.status), status_code=HTTP_202_ACCEPTED)
