"""The browsable API docs at `/schema`, offline: Swagger UI served from an installed package.

Litestar's default docs pages load Redoc, Swagger UI and Google Fonts from CDNs, so `/schema` is
blank on a machine without internet. Here Swagger UI's files come from the PyPI package
`swagger-ui-bundle-v2` (module `swagger_ui_bundle`, the Swagger UI dist of the version in its
directory name) and are served by the API under `/schema/assets/`; the page references nothing
outside the host (favicon included). The schema itself is inlined into the page by Litestar.

Served:
- `/schema`, `/schema/swagger`: Swagger UI;
- `/schema/openapi.json`, `/schema/openapi.yaml` (and `.yml`): the document;
- `/schema/assets/*`: Swagger UI's JS, CSS and icons (`Cache-Control: public, max-age=86400`).
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from litestar import Router
from litestar.datastructures import CacheControlHeader
from litestar.openapi.plugins import (
    JsonRenderPlugin,
    OpenAPIRenderPlugin,
    SwaggerRenderPlugin,
    YamlRenderPlugin,
)
from litestar.static_files import create_static_files_router

ASSETS = "/assets"  # under the OpenAPI router's path
_PACKAGE = "swagger_ui_bundle"


def swagger_ui_dir() -> Path:
    """The installed Swagger UI dist directory (`…/swagger_ui_bundle/vendor/swagger-ui-X.Y.Z`)."""
    vendor = Path(str(importlib.resources.files(_PACKAGE) / "vendor"))
    found = sorted(p for p in vendor.glob("swagger-ui-*") if (p / "swagger-ui-bundle.js").is_file())
    if not found:
        raise RuntimeError(f"no Swagger UI files in {vendor}: reinstall swagger-ui-bundle-v2")
    return found[-1]


class OfflineSwaggerPlugin(SwaggerRenderPlugin):
    """Swagger UI whose assets the API serves itself, from `swagger_ui_dir()`."""

    def __init__(self, schema_path: str, assets_dir: Path) -> None:
        base = f"{schema_path.rstrip('/')}{ASSETS}"
        self.assets_dir = assets_dir
        super().__init__(
            js_url=f"{base}/swagger-ui-bundle.js",
            css_url=f"{base}/swagger-ui.css",
            standalone_preset_js_url=f"{base}/swagger-ui-standalone-preset.js",
            path=["/", "/swagger"],
            favicon=f"<link rel='icon' type='image/png' href='{base}/favicon-32x32.png'>",
        )

    def receive_router(self, router: Router) -> None:
        super().receive_router(router)
        router.register(
            create_static_files_router(
                path=ASSETS,
                directories=[self.assets_dir],
                name="docs_ui_assets",
                cache_control=CacheControlHeader(public=True, max_age=86400),
                include_in_schema=False,
            )
        )


def render_plugins(schema_path: str = "/schema") -> list[OpenAPIRenderPlugin]:
    """`OpenAPIConfig(render_plugins=...)`: offline Swagger UI plus the JSON and YAML files."""
    return [
        OfflineSwaggerPlugin(schema_path, swagger_ui_dir()),
        JsonRenderPlugin(),
        YamlRenderPlugin(path=["/openapi.yaml", "/openapi.yml"]),
    ]
