"""Issue 15 bug 9: `/schema` renders in Chromium with every request off the host blocked."""

from __future__ import annotations

from playwright.async_api import BrowserContext, expect

from tests.browser.conftest import ARTIFACTS, WebStack, block_outside_requests

UI_TIMEOUT_MS = 20_000


async def test_schema_docs_render_without_internet(
    browser: BrowserContext, web_stack: WebStack
) -> None:
    tab = await browser.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    requested: list[str] = []
    tab.on("request", lambda r: requested.append(r.url))
    try:
        blocked = await block_outside_requests(tab)
        await tab.goto(web_stack.base_url + "/schema")
        # Swagger UI drew the operations from the inlined schema.
        operations = tab.locator(".opblock")
        await expect(operations.first).to_be_visible(timeout=UI_TIMEOUT_MS)
        assert await operations.count() >= 8
        ingest = tab.locator(".opblock-post", has_text="/api/audio/ingest")
        await expect(ingest).to_have_count(1)
        get_job = tab.locator(".opblock-get [data-path='/api/audio/jobs/{job_id}']")
        await expect(get_job).to_have_count(1)
        # Opening an operation shows its documented responses.
        await ingest.locator(".opblock-summary").click()
        await expect(ingest.locator(".responses-table").first).to_be_visible()
        await tab.screenshot(path=str(ARTIFACTS / "docs-schema.png"), full_page=False)
        assert blocked == [], f"the docs page tried to leave the host: {blocked}"
        assert any("/schema/assets/swagger-ui-bundle.js" in url for url in requested), requested
        assert not errors, errors
    finally:
        await tab.close()
