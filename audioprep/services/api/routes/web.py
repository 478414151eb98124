"""The web page at `/` (static files, no build step) and the waveform peaks it draws."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar import MediaType, Request, Response, Router, get
from litestar.datastructures import CacheControlHeader
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.static_files import create_static_files_router
from litestar.types import ControllerRouterHandler

from audioprep.services.api.auth import tenant_for
from audioprep.services.api.context import ApiContext
from audioprep.services.api.jobs import load_view
from audioprep.services.api.openapi import problems
from audioprep.services.api.problems import ProblemError
from audioprep.shared.storage import StorageNotFound

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
# No hashed file names (no build step): let browsers keep the files but revalidate each time.
_REVALIDATE = CacheControlHeader(no_cache=True)


_AUTH_META = b'<meta name="audioprep-auth" content="">'


@get("/", include_in_schema=False, cache_control=_REVALIDATE)
async def index(api: NamedDependency[ApiContext]) -> Response[bytes]:
    """The single page; read per request so an edited page shows up without a restart.

    It learns here whether this server wants an API key (`<meta name="audioprep-auth">` is
    `key` or `open`), so it shows the key box only where one is needed.
    """
    mode = b"key" if api.settings.api_keys else b"open"
    page = (WEB_DIR / "index.html").read_bytes()
    page = page.replace(_AUTH_META, _AUTH_META.replace(b'content=""', b'content="' + mode + b'"'))
    return Response(page, media_type=MediaType.HTML)


@get(
    "/api/audio/jobs/{job_id:str}/peaks",
    summary="Waveform peaks of a completed ingest job",
    description=(
        "The stored peaks JSON `{version, sampleRate, points, min, max}` of the job's source. "
        "404 for an unknown job or one without peaks; 409 while the job is not completed."
    ),
    responses=problems(401, 404, 409),
)
async def get_peaks(
    request: Request[Any, Any, Any], api: NamedDependency[ApiContext], job_id: FromPath[str]
) -> Response[bytes]:
    tenant = tenant_for(request, api.settings)
    view = await load_view(api, job_id, tenant)
    if view.kind != "ingest":
        raise ProblemError(404, "no_peaks", f"job {job_id} is a {view.kind} job: it has no peaks")
    if view.status != "completed":
        raise ProblemError(
            409, "job_not_completed", f"job {job_id} is {view.status}: peaks exist once completed"
        )
    key = view.result.peaks_key if view.result is not None else None
    if not key:
        raise ProblemError(404, "no_peaks", f"job {job_id} has no waveform peaks")
    try:
        data = await api.storage.read_bytes(key)
    except StorageNotFound as exc:
        raise ProblemError(404, "no_peaks", f"the peaks of job {job_id} are gone") from exc
    # Peaks of a completed job never change.
    return Response(
        data,
        media_type=MediaType.JSON,
        headers={"Cache-Control": "private, max-age=86400, immutable"},
    )


static_router: Router = create_static_files_router(
    path="/static",
    directories=[WEB_DIR],
    name="web_static",
    cache_control=_REVALIDATE,
    include_in_schema=False,
)

web_handlers: list[ControllerRouterHandler] = [index, get_peaks, static_router]
