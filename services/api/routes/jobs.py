"""GET /api/audio/jobs/{jobId}: the job view."""

from __future__ import annotations

from typing import Any

from litestar import Request, get

from services.api.auth import tenant_for
from services.api.context import ApiContext
from services.api.jobs import load_view
from shared.views import JobView


@get("/api/audio/jobs/{job_id:str}", summary="Poll a job")
async def get_job(request: Request[Any, Any, Any], api: ApiContext, job_id: str) -> JobView:
    tenant = tenant_for(request, api.settings)
    return await load_view(api, job_id, tenant)
