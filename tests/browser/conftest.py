"""A real HTTP stack (uvicorn on a free port + projector + worker) and Debian's Chromium."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nats.aio.client import Client

from shared.settings import Settings

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

try:
    from playwright.async_api import BrowserContext, Page, async_playwright
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
            if item.path.name == "test_web_page.py":
                item.add_marker(pytest.mark.skip(reason=reason))


@dataclass
class WebStack:
    settings: Settings
    base_url: str


@pytest.fixture(scope="session")
async def web_stack(base_settings: Settings, nc: Client) -> AsyncIterator[WebStack]:
    """uvicorn serving create_app() on a socket bound before start (no port race)."""
    import uvicorn

    from services.api.app import create_app
    from services.projector.main import run_projector
    from services.worker.main import run_worker

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    settings = base_settings.with_(api_host="127.0.0.1", api_port=port)
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(run_projector(settings, stop)),
        asyncio.create_task(run_worker(settings, stop)),
    ]
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
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=60)


@pytest.fixture(scope="session")
async def browser(web_stack: WebStack) -> AsyncIterator[BrowserContext]:
    """Debian's Chromium, headless, with a fresh profile for the session.

    Depends on web_stack so the browser closes first: open keep-alive and SSE connections
    would otherwise hold uvicorn's graceful shutdown.
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


@pytest.fixture
async def page(browser: BrowserContext, web_stack: WebStack) -> AsyncIterator[Page]:
    """A fresh tab on the page; uncaught script errors fail the test."""
    tab = await browser.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    await tab.goto(web_stack.base_url + "/")
    await tab.wait_for_selector("body[data-ready='1']")
    # Each test starts with an empty browser session (sessionStorage is per tab).
    yield tab
    await tab.close()
    assert not errors, f"uncaught errors in the page: {errors}"
