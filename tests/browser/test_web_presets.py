"""Issue 18, presets on the web page: save the current settings as a preset, pick one to fill
the form; what the form then sends is exactly the preset's recipe, format and options."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import msgspec
from playwright.async_api import Page, expect

from audioprep.domain.recipe import Recipe, normalized_recipe_bytes
from tests.browser.conftest import WebStack
from tests.browser.test_web_page import JOB_TIMEOUT_MS, drag_on_wave, upload
from tests.media import write_tone

NAME = "page-show"
API_PRESET = {
    "name": "api-made",
    "recipe": {
        "normalize": {"targetLufs": -18, "truePeakDb": -2},
        "denoise": {"amountDb": 12},
        "leveler": {"strength": 0.4},
        "shortenPauses": {"maxPauseMs": 700},
        "sampleRate": 11025,
    },
    "outputs": [{"format": "opus", "options": {"bitrate": 64}}, {"format": "mp3"}],
    "metadata": {"album": "The Show", "artist": "Host"},
}


def _canonical(recipe: dict[str, Any]) -> dict[str, Any]:
    """A recipe with its defaults left out (the API answers with every field)."""
    return dict(json.loads(normalized_recipe_bytes(msgspec.convert(recipe, Recipe))))


def _api(web: WebStack) -> httpx.AsyncClient:
    """The API from the test (async: uvicorn serves on this test's event loop)."""
    return httpx.AsyncClient(base_url=web.base_url, timeout=15)


async def _sent_save_body(page: Page) -> dict[str, Any]:
    async with page.expect_request("**/api/audio/edit/save") as info:
        await page.click("#save-btn")
    body = json.loads((await info.value).post_data or "{}")
    await expect(page.locator("#download-link")).to_be_visible(timeout=JOB_TIMEOUT_MS)
    return dict(body)


async def test_save_settings_as_a_preset_and_pick_it(
    page: Page, web_stack: WebStack, media_dir: Path
) -> None:
    async with _api(web_stack) as c:
        for name in (NAME, API_PRESET["name"]):
            await c.delete(f"/api/presets/{name}")
        assert (await c.post("/api/presets", json=API_PRESET)).status_code == 201
    await upload(page, write_tone(media_dir / "preset.wav", seconds=2.0))
    await drag_on_wave(page, 0.1, 0.8)  # a trim: this source's, not the preset's
    await page.fill("#fade-in", "0.5")
    await page.select_option("#normalize", "apple-podcasts")
    await page.check("#highpass-on")
    await page.fill("#highpass-hz", "100")
    await page.check("#deess-on")
    await page.select_option("#save-format", "mp3")
    await page.select_option("#save-quality", "128")
    await page.select_option("#mp3-quality", "2")

    # a name the API refuses is explained next to the name field
    await page.fill("#preset-name", "bad name")
    await page.click("#preset-save")
    await expect(page.locator("#presets .field.invalid .field-error")).to_contain_text(
        "letters, digits"
    )
    await page.fill("#preset-name", NAME)
    await page.click("#preset-save")
    await expect(page.locator("#preset-note")).to_have_text(f"Saved preset “{NAME}” (version 1).")
    async with _api(web_stack) as c:
        stored = (await c.get(f"/api/presets/{NAME}")).json()
    assert _canonical(stored["recipe"]) == {
        "fadeInMs": 500,
        "normalize": {"preset": "apple-podcasts"},
        "highpassHz": 100,
        "deess": {},  # its default amount, 0.5
    }
    assert stored["format"] == "mp3"
    assert stored["options"] == {"bitrate": 128, "quality": 2, "bitDepth": 16}  # with defaults
    await expect(page.locator("#preset-pick option", has_text=NAME)).to_have_count(1)

    # start over with other settings, then pick the preset: the form is the preset again
    await page.click("#reset-btn")
    await page.select_option("#save-format", "wav")
    await page.fill("#fade-in", "3")
    await page.select_option("#preset-pick", NAME)
    await expect(page.locator("#preset-note")).to_contain_text(f"Filled in from “{NAME}”")
    await expect(page.locator("#fade-in")).to_have_value("0.5")
    await expect(page.locator("#normalize")).to_have_value("apple-podcasts")
    await expect(page.locator("#highpass-on")).to_be_checked()
    await expect(page.locator("#highpass-hz")).to_have_value("100")
    await expect(page.locator("#highpass-hz")).to_be_enabled()
    await expect(page.locator("#gain")).to_be_disabled()  # a loudness target sets the gain
    await expect(page.locator("#save-format")).to_have_value("mp3")
    await expect(page.locator("#save-quality")).to_have_value("128")
    body = await _sent_save_body(page)
    assert _canonical(body["recipe"]) == _canonical(stored["recipe"])
    assert body["format"] == "mp3" and body["options"] == {"bitrate": 128, "quality": 2}

    # saved again under the same name: a new version
    await page.fill("#fade-in", "1")
    await page.click("#preset-save")
    await expect(page.locator("#preset-note")).to_have_text(f"Saved preset “{NAME}” (version 2).")

    # a preset made with the API: custom target, amounts, an unlisted rate, two outputs
    await drag_on_wave(page, 0.2, 0.7)
    await page.focus("#preset-pick")  # the list is read again
    await expect(page.locator("#preset-pick option", has_text="api-made")).to_have_count(1)
    await page.select_option("#preset-pick", "api-made")
    await expect(page.locator("#preset-note")).to_contain_text("2 outputs")
    await expect(page.locator("#normalize")).to_have_value("custom")
    await expect(page.locator("#target-lufs")).to_have_value("-18")
    await expect(page.locator("#true-peak")).to_have_value("-2")
    await expect(page.locator("#denoise-mode")).to_have_value("amount")
    await expect(page.locator("#denoise-amount")).to_have_value("12")
    await expect(page.locator("#leveler-strength")).to_have_value("0.4")
    await expect(page.locator("#max-pause")).to_have_value("0.7")
    await expect(page.locator("#sample-rate")).to_have_value("11025")
    await expect(page.locator("#save-format")).to_have_value("opus")
    await expect(page.locator("#save-quality")).to_have_value("64")
    body = await _sent_save_body(page)
    assert "trim" in body["recipe"]  # picking a preset leaves this source's trim
    del body["recipe"]["trim"]
    assert _canonical(body["recipe"]) == _canonical(API_PRESET["recipe"])
    # saving it from the page keeps the tags the page doesn't show
    await page.click("#preset-save")
    await expect(page.locator("#preset-note")).to_contain_text("(version 2)")
    async with _api(web_stack) as c:
        again = (await c.get("/api/presets/api-made")).json()
        assert again["metadata"] == API_PRESET["metadata"]
        assert again["format"] == "opus" and "outputs" not in again
        for name in (NAME, API_PRESET["name"]):
            await c.delete(f"/api/presets/{name}")
