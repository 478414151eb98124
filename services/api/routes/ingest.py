"""POST /api/audio/ingest: a multipart upload, or JSON {source: url|youtube, url}."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, post
from litestar.di import NamedDependency
from litestar.status_codes import HTTP_202_ACCEPTED

from services.api.auth import tenant_for
from services.api.bodies import declares_empty_body, empty_body, is_json_media_type, json_body
from services.api.context import ApiContext
from services.api.jobs import existing_job, job_id_for, submit, traceparent_of
from services.api.problems import ProblemError
from services.api.schemas import JobAccepted, UrlIngestRequest
from services.api.uploads import store_upload
from services.api.url_check import check_url
from shared import keys
from shared.events import JobRequested


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
    if request.headers.get("idempotency-key") and await existing_job(api, job_id, tenant):
        return Response(JobAccepted(job_id=job_id), status_code=HTTP_202_ACCEPTED)
    ctype = request.headers.get("content-type", "")
    if declares_empty_body(request):
        raise empty_body()
    if is_json_media_type(ctype):
        body = await json_body(request, UrlIngestRequest)
        check_url(body.url, body.source, api.settings)
        event = JobRequested(
            job_id=job_id, kind="ingest", tenant=tenant, source=body.source, url=body.url
        )
    elif not ctype.lower().startswith("multipart/"):
        raise ProblemError(
            415,
            "unsupported_media_type",
            "send multipart/form-data (a `file` upload) or application/json (a URL)",
        )
    else:
        upload = await store_upload(
            request,
            api.storage,
            lambda name: keys.upload_key(tenant, job_id, name),
            api.settings.max_upload_bytes,
        )
        event = JobRequested(
            job_id=job_id,
            kind="ingest",
            tenant=tenant,
            source="upload",
            upload_key=upload.key,
            filename=keys.safe_filename(upload.filename),
        )
    await submit(api, event, traceparent_of(request))
    return Response(JobAccepted(job_id=job_id), status_code=HTTP_202_ACCEPTED)
