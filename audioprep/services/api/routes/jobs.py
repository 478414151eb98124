"""GET /api/audio/jobs/{jobId}: the job view."""

from __future__ import annotations

from typing import Any

from litestar import Request, get
from litestar.di import NamedDependency
from litestar.params import FromPath

from audioprep.domain.views import JobView
from audioprep.services.api.auth import tenant_for
from audioprep.services.api.context import ApiContext
from audioprep.services.api.jobs import load_view
from audioprep.services.api.links import with_download_url
from audioprep.services.api.openapi import problems


@get(
    "/api/audio/jobs/{job_id:str}",
    summary="Poll a job",
    description=(
        "The job's view, folded from its events. `downloadUrl` (signed, expiring) is added "
        "when the result has a `previewKey` or `preparedKey`. A job accepted by a POST is "
        "never a 404, even before the projector has caught up."
    ),
    responses=problems(401, 404),
)
async def get_job(
    request: Request[Any, Any, Any], api: NamedDependency[ApiContext], job_id: FromPath[str]
) -> JobView:
    tenant = tenant_for(request, api.settings)
    return await with_download_url(api, await load_view(api, job_id, tenant))
