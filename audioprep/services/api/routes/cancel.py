"""POST /api/audio/jobs/{jobId}/cancel: ask for a job to stop."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response, post
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.status_codes import HTTP_200_OK, HTTP_202_ACCEPTED

from audioprep.domain.events import JobCancelRequested
from audioprep.domain.views import JobView
from audioprep.services.api.auth import tenant_for
from audioprep.services.api.context import ApiContext
from audioprep.services.api.jobs import load_view, traceparent_of
from audioprep.services.api.links import with_download_url
from audioprep.services.api.openapi import problems
from audioprep.shared.job_views import JobViews

log = logging.getLogger("audioprep.api")


@post(
    "/api/audio/jobs/{job_id:str}/cancel",
    summary="Cancel a job",
    description=(
        "Publishes JobCancelRequested and answers 202 with the job's view. A job no worker "
        "has started is `cancelled` at once; a running one becomes `cancelled` when its worker "
        "confirms (it stops the work and deletes partial outputs). Cancelling a finished job "
        "changes nothing and answers 200 with its current view."
    ),
    status_code=HTTP_202_ACCEPTED,
    responses=problems(401, 404),
)
async def cancel_job(
    request: Request[Any, Any, Any], api: NamedDependency[ApiContext], job_id: FromPath[str]
) -> Response[JobView]:
    tenant = tenant_for(request, api.settings)
    # as of its last event: the KV view may lag behind a job that just finished
    view = await load_view(api, job_id, tenant, fresh=True)
    if view.is_terminal:
        return Response(await with_download_url(api, view), status_code=HTTP_200_OK)
    event = JobCancelRequested(
        job_id=job_id, kind=view.kind, tenant=tenant, reason="requested via API"
    )
    seq = await api.events.append(event, traceparent=traceparent_of(request))
    log.info("cancel requested", extra={"job_id": job_id, "kind": view.kind})
    return Response(JobViews.with_event(view, event, seq), status_code=HTTP_202_ACCEPTED)
