"""GET /metrics: Prometheus text format (this process's counters + queue/stream gauges)."""

from __future__ import annotations

from litestar import Response, get
from litestar.di import NamedDependency
from prometheus_client import CONTENT_TYPE_LATEST

from audioprep.services.api.context import ApiContext
from audioprep.shared import metrics


@get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics_endpoint(api: NamedDependency[ApiContext]) -> Response[bytes]:
    body = await metrics.render(metrics.api_sampler(api.js, api.settings.names))
    return Response(body, media_type=CONTENT_TYPE_LATEST)
