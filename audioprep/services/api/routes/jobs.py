"""GET /api/audio/jobs/{jobId}: the job view."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, get
from litestar.di import NamedDependency
from litestar.params import FromPath

from audioprep.domain.views import JobView
from audioprep.services.api.auth import tenant_for
from audioprep.services.api.context import ApiContext
from audioprep.services.api.jobs import load_view
from audioprep.services.api.limits import queue_position
from audioprep.services.api.links import with_download_url
from audioprep.services.api.openapi import problems
from audioprep.services.api.raw_routes import served_raw_json


async def poll_job(request: Request[Any, Any, Any], api: ApiContext) -> JobView:
    """The tenant's job view, with its queue position while it waits and a signed link."""
    job_id: str = request.path_params["job_id"]
    tenant = tenant_for(request, api.settings)
    view = await load_view(api, job_id, tenant)
    if view.status == "pending" and view.attempt == 0:  # waiting: ask the dispatcher
        position = await queue_position(api, job_id)
        if position is not None:
            view = msgspec.structs.replace(view, queue_position=position)
    return await with_download_url(api, view)


@get(
    "/api/audio/jobs/{job_id:str}",
    summary="Poll a job",
    description=(
        "The job's view, folded from its events. `downloadUrl` (signed, expiring) is added "
        "when the result has a `previewKey` or `preparedKey`. A job accepted by a POST is "
        "never a 404, even before the projector has caught up. While it waits to start, "
        "`queuePosition` says how many jobs of its kind start before it (an estimate)."
    ),
    responses=problems(401, 404),
    middleware=[served_raw_json(poll_job)],
)
async def get_job(
    request: Request[Any, Any, Any], api: NamedDependency[ApiContext], job_id: FromPath[str]
) -> JobView:
    # Declares the route (router, OpenAPI); `served_raw_json` answers it with `poll_job`.
    return await poll_job(request, api)
