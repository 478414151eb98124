"""The API as an ASGI factory for servers other than `audioprep api`'s uvicorn, e.g.
`granian --interface asgi --factory audioprep.services.api.asgi:create` (bench/api.py measures
both servers side by side); settings come from the environment as for `audioprep api`."""

from __future__ import annotations

from litestar import Litestar

from audioprep.shared.logs import setup_logging
from audioprep.shared.settings import Settings


def create() -> Litestar:
    from audioprep.services.api.app import create_app

    settings = Settings.from_env()
    setup_logging(settings.log_format, settings.log_level)
    return create_app(settings)
