"""Issue 19: the webhooks settings panel, against an API with keys, the in-process notifier and a
real receiver on loopback that verifies every request with the PyPI `standardwebhooks` library."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.async_api import BrowserContext, Page, expect

from audioprep.shared.nats_server import free_port
from audioprep.shared.provision import provision_webhooks
from tests.browser.conftest import WebStack, open_page, serve_api
from tests.browser.test_web_page import JOB_TIMEOUT_MS, shot, upload
from tests.conftest import Stack
from tests.media import write_tone
from tests.webhooks.conftest import Receiver, auth, notifier_task, webhook_settings

PRIVATE_URL = "http://10.20.30.40/hook"


@pytest.fixture(scope="module")
async def hook_stack(stack: Stack) -> AsyncIterator[WebStack]:
    """An API with API keys (a fresh tenant) and a webhook key, plus a notifier; same NATS,
    storage, projector and worker as the session's stack. 127.0.0.1 is in
    AUDIOPREP_URL_ALLOW_HOSTS (base settings), so the loopback receiver may be registered."""
    # the session's names, not the webhooks suite's: this stack's jobs go to the session worker
    settings = webhook_settings(stack.settings).with_(names=stack.settings.names)
    assert "127.0.0.1" in settings.url_allow_hosts
    await provision_webhooks(stack.nc.jetstream(), settings)
    async with serve_api(settings) as web, notifier_task(web.settings):
        yield web


@pytest.fixture
def hook_receiver() -> Iterator[Receiver]:
    r = Receiver(port=free_port()).start()
    yield r
    r.stop()


@pytest.fixture
async def hook_page(browser: BrowserContext, hook_stack: WebStack) -> AsyncIterator[Page]:
    async with open_page(browser, hook_stack.base_url + "/") as tab:
        # The server wants a key: the box is shown; the page sends it from then on.
        await expect(tab.locator("#key-box")).to_be_visible()
        key = auth(hook_stack.settings)["Authorization"].removeprefix("Bearer ")
        await tab.click("#key-box summary")
        await tab.fill("#api-key", key)
        await tab.dispatch_event("#api-key", "change")
        await tab.click("#webhooks > summary")
        await expect(tab.locator("#wh-form")).to_be_visible()
        yield tab


async def api_webhooks(web: WebStack) -> list[dict[str, object]]:
    """The tenant's endpoints as the API lists them (async: the server runs in this loop)."""
    async with httpx.AsyncClient(base_url=web.base_url, headers=auth(web.settings)) as client:
        resp = await client.get("/api/webhooks", timeout=10)
    assert resp.status_code == 200, resp.text
    return list(resp.json()["webhooks"])


async def test_add_see_secret_once_deliver_replay_and_delete(
    hook_page: Page,
    hook_stack: WebStack,
    hook_receiver: Receiver,
    browser: BrowserContext,
    media_dir: Path,
) -> None:
    page = hook_page
    await browser.grant_permissions(
        ["clipboard-read", "clipboard-write"], origin=hook_stack.base_url
    )
    headers = auth(hook_stack.settings)
    async with httpx.AsyncClient(base_url=hook_stack.base_url, headers=headers) as client:
        for existing in await api_webhooks(hook_stack):  # a rerun in this session starts clean
            await client.delete(f"/api/webhooks/{existing['id']}", timeout=10)
    await page.click("#webhooks > summary")  # closed and opened again: the list reloads
    await page.click("#webhooks > summary")
    await expect(page.locator("#wh-empty")).to_be_visible()

    # Add: only save jobs (the upload's ingest must not be delivered).
    await page.fill("#wh-url", hook_receiver.url)
    await page.fill("#wh-desc", "browser test receiver")
    await page.check("input[name='wh-kind'][value='save']")
    await page.click("#wh-add")
    secret_box = page.locator("#wh-secret")
    await expect(secret_box).to_be_visible()
    await expect(secret_box).to_contain_text("shown once")
    secret = await page.locator("#wh-secret-value").inner_text()
    assert secret.startswith("whsec_") and len(secret) > 20, secret
    hook_receiver.secret = secret
    await page.click("#wh-secret-copy")
    await expect(page.locator("#wh-secret-note")).to_have_text("Copied.")
    assert await page.evaluate("navigator.clipboard.readText()") == secret
    row = page.locator("#wh-table tbody tr", has_text=hook_receiver.url)
    await expect(row).to_have_count(1)
    await expect(row.locator(".wh-state")).to_have_text("active")
    await expect(row).to_contain_text("save")
    await expect(row).to_contain_text("browser test receiver")
    await shot(page, "webhooks-1-added")
    # Shown once: gone from the page when dismissed, and never in the list.
    await page.click("#wh-secret-done")
    await expect(secret_box).to_be_hidden()
    assert secret not in await page.content()
    (endpoint,) = await api_webhooks(hook_stack)
    assert "secret" not in endpoint and endpoint["kinds"] == ["save"], endpoint

    # A save through the page ends a job: one delivery, verified by the receiver's library.
    await upload(page, write_tone(media_dir / "hooked.wav", seconds=1.0))
    await page.select_option("#save-format", "wav")
    await page.click("#save-btn")
    await expect(page.locator("#download-link")).to_be_visible(timeout=JOB_TIMEOUT_MS)
    (got,) = await hook_receiver.wait_for(1, timeout=20, ok=True)
    assert got.verified, got.error
    payload = json.loads(got.body)
    assert payload["type"] == "job.completed" and payload["data"]["kind"] == "save", payload
    job_id = payload["data"]["jobId"]
    save_rows = page.locator("#job-table tbody tr", has_text="wav")
    assert job_id in [await r.get_attribute("data-job-id") for r in await save_rows.all()]

    await row.locator("button[data-action='deliveries']").click()
    deliveries = page.locator("#wh-delivery-table tbody tr")
    await expect(deliveries).to_have_count(1)
    first = deliveries.first
    await expect(first.locator(".wh-status")).to_have_text("delivered", timeout=10_000)
    await expect(first.locator(".wh-code")).to_have_text("HTTP 200")
    await expect(first.locator(".wh-attempts")).to_have_text("1")
    await expect(first.locator(".wh-job")).to_contain_text(job_id)
    await expect(first).to_contain_text("job.completed")
    assert await first.get_attribute("data-id") == got.webhook_id
    await shot(page, "webhooks-2-delivered")

    # Replay: a new delivery (a new webhook-id) of the same job end, delivered and listed.
    await first.locator("button[data-action='replay']").click()
    await expect(deliveries).to_have_count(2)
    replayed = page.locator("#wh-delivery-table tbody tr", has_text="(replay)")
    await expect(replayed.locator(".wh-status")).to_have_text("delivered (replay)", timeout=10_000)
    await expect(replayed.locator(".wh-code")).to_have_text("HTTP 200")
    ok = await hook_receiver.wait_for(2, timeout=10, ok=True)
    assert all(r.verified for r in ok), [r.error for r in ok]
    assert ok[1].webhook_id != ok[0].webhook_id
    assert json.loads(ok[1].body)["data"]["jobId"] == job_id
    assert await replayed.get_attribute("data-id") == ok[1].webhook_id

    # A 410 answer disables the endpoint (shown with its reason); Enable turns it back on.
    hook_receiver.script = [410]
    await deliveries.first.locator("button[data-action='replay']").click()
    await expect(row.locator(".wh-state")).to_contain_text("disabled: ", timeout=10_000)
    await expect(row.locator(".wh-state")).to_contain_text("410")
    await expect(deliveries.first.locator("button[data-action='replay']")).to_be_disabled()
    await row.locator("button[data-action='enable']").click()
    await expect(row.locator(".wh-state")).to_have_text("active", timeout=10_000)
    await expect(row.locator("button[data-action='enable']")).to_have_count(0)

    # Rotate: the new secret is shown once too, and signs what follows.
    page.once("dialog", lambda dialog: dialog.accept())
    await row.locator("button[data-action='rotate']").click()
    await expect(secret_box).to_be_visible()
    await expect(secret_box).to_contain_text("shown once")
    rotated = await page.locator("#wh-secret-value").inner_text()
    assert rotated.startswith("whsec_") and rotated != secret
    hook_receiver.secret = rotated
    before = len(hook_receiver.snapshot())
    await deliveries.first.locator("button[data-action='replay']").click()
    await hook_receiver.wait_for(before + 1, timeout=10)
    assert hook_receiver.snapshot()[-1].verified, hook_receiver.snapshot()[-1].error
    await shot(page, "webhooks-3-rotated")

    # Delete (after a confirm): gone from the panel and from the API.
    page.once("dialog", lambda dialog: dialog.accept())
    await row.locator("button[data-action='delete']").click()
    await expect(row).to_have_count(0)
    await expect(page.locator("#wh-empty")).to_be_visible()
    await expect(page.locator("#wh-deliveries")).to_be_hidden()
    assert await api_webhooks(hook_stack) == []


async def test_a_refused_url_is_explained_next_to_the_url_field(
    hook_page: Page, hook_stack: WebStack
) -> None:
    page = hook_page
    before = await api_webhooks(hook_stack)
    url_field = page.locator("#wh-form .field", has=page.locator("#wh-url"))
    await page.fill("#wh-url", PRIVATE_URL)
    await page.click("#wh-add")
    await expect(url_field).to_have_class("field wh-url invalid")
    await expect(url_field.locator(".field-error")).to_contain_text(
        "That address is not allowed (private or local network addresses are blocked)."
    )
    await expect(page.locator("#wh-error")).to_contain_text("please fix “URL”")
    await expect(page.locator("#wh-secret")).to_be_hidden()
    await expect(page.locator("#wh-url")).to_be_focused()
    await shot(page, "webhooks-4-refused")
    # Typing in the field clears its message.
    await page.fill("#wh-url", "https://")
    await expect(url_field.locator(".field-error")).to_have_text("")
    await expect(page.locator("#wh-error")).to_be_hidden()
    # No event ticked: the API's validation error shows under Events.
    for event in ("job.completed", "job.failed", "job.cancelled"):
        await page.uncheck(f"input[name='wh-event'][value='{event}']")
    await page.fill("#wh-url", "http://127.0.0.1:9/hook")
    await page.click("#wh-add")
    events_field = page.locator("#wh-form [data-field='events']")
    await expect(events_field).to_have_class("field wh-choices invalid")
    await expect(events_field.locator(".field-error")).not_to_have_text("")
    assert await api_webhooks(hook_stack) == before  # nothing was registered
