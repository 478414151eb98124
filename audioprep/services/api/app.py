"""The Litestar app factory: routes, problem+json errors, and the NATS/storage lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from litestar import Litestar
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from nats.aio.client import Client

from audioprep.services.api.auth import api_key_guard
from audioprep.services.api.context import ApiContext
from audioprep.services.api.docs_ui import render_plugins
from audioprep.services.api.openapi import complete_schema
from audioprep.services.api.problems import handle_exception
from audioprep.services.api.rate_limit import rate_limit_middleware
from audioprep.services.api.raw_routes import API_STATE
from audioprep.services.api.routes.cancel import cancel_job
from audioprep.services.api.routes.downloads import storage_download
from audioprep.services.api.routes.edit import preview, preview_audio, save
from audioprep.services.api.routes.health import healthz, readyz
from audioprep.services.api.routes.images import upload_image
from audioprep.services.api.routes.ingest import ingest
from audioprep.services.api.routes.job_events import job_events
from audioprep.services.api.routes.jobs import get_job
from audioprep.services.api.routes.metrics import metrics_endpoint
from audioprep.services.api.routes.presets import preset_handlers
from audioprep.services.api.routes.usage import get_usage
from audioprep.services.api.routes.web import web_handlers
from audioprep.services.api.routes.webhooks import webhook_handlers
from audioprep.services.api.tracing import trace_middleware
from audioprep.shared import render_cache
from audioprep.shared.event_store import EventStore
from audioprep.shared.job_views import JobViews
from audioprep.shared.nats_conn import connect
from audioprep.shared.settings import Settings
from audioprep.shared.storage import open_storage
from audioprep.shared.view_cache import ViewCache

log = logging.getLogger("audioprep.api")


DRAIN_TIMEOUT_S = 5.0


async def _close_nats(nc: Client) -> None:
    """Drain the connection at shutdown; if NATS is already gone (stopped first, an outage),
    close it quietly: a failed drain must not make shutdown fail."""
    try:
        await asyncio.wait_for(nc.drain(), timeout=DRAIN_TIMEOUT_S)
    except Exception as exc:
        log.info("nats connection closed without draining", extra={"error": repr(exc)})
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), timeout=DRAIN_TIMEOUT_S)


def create_app(settings: Settings) -> Litestar:
    """Build the API; it connects to NATS when it starts, not when it is built."""
    settings.check_signing_secret()  # refuses to start outside dev mode without one
    holder: dict[str, ApiContext] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        nc = await connect(settings, "api")
        js = nc.jetstream()
        events = EventStore(nc, js, settings.names)
        # Polls read views from a watch-fed copy of the bucket (no NATS round trip per poll);
        # decisions keep reading the events (`JobViews.fresh`). audioprep/shared/view_cache.py
        view_cache = ViewCache(nc, js, settings.names.jobs_bucket)
        await view_cache.start()
        holder["ctx"] = ApiContext(
            settings=settings,
            nc=nc,
            js=js,
            events=events,
            storage=open_storage(settings.storage),
            views=JobViews(
                await js.key_value(settings.names.jobs_bucket), events, cache=view_cache
            ),
            cache_kv=await render_cache.bucket(js, settings.names),
        )
        app.state[API_STATE] = holder["ctx"]  # for the routes served raw (raw_routes.py)
        if not settings.api_keys:
            # Loud in production; in dev mode (the default, `make run`) it is the expected
            # set-up and the README's flows must run without a warning in the log.
            open_note = "no API keys configured: running open, single tenant 'default'"
            if settings.dev_mode:
                log.info(open_note + " (dev mode; set AUDIOPREP_API_KEYS to require keys)")
            else:
                log.warning(open_note)
        try:
            yield
        finally:
            await view_cache.stop()
            await _close_nats(nc)

    def provide_api() -> ApiContext:
        return holder["ctx"]

    return Litestar(
        route_handlers=[
            ingest,
            preview,
            save,
            preview_audio,
            cancel_job,
            job_events,
            storage_download,
            get_job,
            healthz,
            readyz,
            metrics_endpoint,
            *web_handlers,
            *webhook_handlers,
            upload_image,
            *preset_handlers,
            get_usage,
        ],
        middleware=[trace_middleware, rate_limit_middleware(settings)],
        # Open mode (no keys) needs no guard; Litestar copies the handler per guard call.
        guards=[api_key_guard(settings)] if settings.api_keys else [],
        dependencies={"api": Provide(provide_api, sync_to_thread=False)},
        exception_handlers={Exception: handle_exception},
        lifespan=[lifespan],
        on_startup=[complete_schema],
        openapi_config=OpenAPIConfig(
            title="audioprep", version="0.1.0", path="/schema", render_plugins=render_plugins()
        ),
        request_max_body_size=1024 * 1024,
        debug=False,
        logging_config=None,
    )
