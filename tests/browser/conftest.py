"""A real HTTP stack (uvicorn on a free port + projector + worker) and Debian's Chromium."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from audioprep.shared.settings import Settings
from tests.conftest import Stack

CHROMIUM = Path(os.environ.get("AUDIOPREP_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]
API_KEY = "browser-test-key"
BROWSER_TEST_FILES = frozenset(
    {
        "test_web_page.py",
        "test_web_editor.py",
        "test_web_voice.py",
        "test_docs_ui.py",
        "test_web_webhooks.py",
        "test_web_quick_preview.py",
        "test_web_presets.py",
    }
)
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})

try:
    from playwright.async_api import BrowserContext, Page, Route, async_playwright
except ImportError:  # pragma: no cover - the dev extra installs it
    async_playwright = None  # type: ignore[assignment]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Say how to fix a missing browser instead of failing with a launch error."""
    reason = None
    if async_playwright is None:
        reason = "python package playwright missing: pip install -e '.[dev]'"
    elif not CHROMIUM.exists():
        reason = f"{CHROMIUM} missing: run `make browser-deps` (apt-get install chromium)"
    if reason:
        for item in items:
            if item.path.name in BROWSER_TEST_FILES:
                item.add_marker(pytest.mark.skip(reason=reason))


@dataclass
class WebStack:
    settings: Settings
    base_url: str


@contextlib.asynccontextmanager
async def serve_api(settings: Settings) -> AsyncIterator[WebStack]:
    """uvicorn serving create_app() on a socket bound before start (no port race)."""
    import uvicorn

    from audioprep.services.api.app import create_app

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # The port goes into the settings: signed download links are absolute URLs.
    settings = settings.with_(api_host="127.0.0.1", api_port=port)
    config = uvicorn.Config(
        create_app(settings),
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    serve = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(30):
            while not server.started:
                if serve.done():
                    serve.result()
                    raise RuntimeError("uvicorn stopped before it started")
                await asyncio.sleep(0.02)
        yield WebStack(settings=settings, base_url=f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(serve, timeout=15)
        sock.close()


@pytest.fixture(scope="session")
async def web_stack(stack: Stack) -> AsyncIterator[WebStack]:
    """The API over real HTTP for the browser.

    The projector and worker tasks are the session's `stack` ones (tests/conftest.py): same
    NATS, same storage; only the API differs (a real HTTP server instead of a test client).
    """
    async with serve_api(stack.settings) as web:
        yield web


@pytest.fixture(scope="session")
async def keyed_web_stack(stack: Stack) -> AsyncIterator[WebStack]:
    """A second API on the same NATS and storage that requires an API key."""
    async with serve_api(stack.settings.with_(api_keys={API_KEY: "browser"})) as web:
        yield web


@pytest.fixture(scope="session")
def file_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A plain loopback HTTP server over a directory, for URL ingest (base URL, directory)."""
    root = tmp_path_factory.mktemp("served")

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="session")
async def browser(web_stack: WebStack, keyed_web_stack: WebStack) -> AsyncIterator[BrowserContext]:
    """Debian's Chromium, headless, with a fresh profile for the session.

    Depends on the web stacks so the browser closes first: open keep-alive and SSE
    connections would otherwise hold uvicorn's graceful shutdown.
    """
    assert async_playwright is not None
    ARTIFACTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="audioprep-chromium-") as profile:
        async with async_playwright() as pw:
            context = await pw.chromium.launch_persistent_context(
                profile,
                executable_path=str(CHROMIUM),
                headless=True,
                args=CHROMIUM_FLAGS,
                accept_downloads=True,
                viewport={"width": 1100, "height": 900},
            )
            try:
                yield context
            finally:
                await context.close()


@contextlib.asynccontextmanager
async def open_page(browser: BrowserContext, url: str) -> AsyncIterator[Page]:
    """A fresh tab on the page; uncaught script errors fail the test."""
    tab = await browser.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    await tab.goto(url)
    await tab.wait_for_selector("body[data-ready='1']")
    # sessionStorage is per tab: every test starts with an empty job list.
    yield tab
    await tab.close()
    assert not errors, f"uncaught errors in the page: {errors}"


@pytest.fixture
async def page(browser: BrowserContext, web_stack: WebStack) -> AsyncIterator[Page]:
    async with open_page(browser, web_stack.base_url + "/") as tab:
        yield tab


@pytest.fixture
async def keyed_page(browser: BrowserContext, keyed_web_stack: WebStack) -> AsyncIterator[Page]:
    async with open_page(browser, keyed_web_stack.base_url + "/") as tab:
        yield tab


async def block_outside_requests(page: Page) -> list[str]:
    """Abort every request of the tab that would leave the host; returns the list of them.

    Only loopback (and the page's own data:/blob: URLs, which Playwright does not route) get
    through: the test sees what a machine without internet would.
    """
    blocked: list[str] = []

    async def handle(route: Route) -> None:
        url = route.request.url
        if urlsplit(url).hostname in LOOPBACK_HOSTS:
            await route.continue_()
        else:
            blocked.append(url)
            await route.abort("internetdisconnected")

    await page.route("**/*", handle)
    return blocked
