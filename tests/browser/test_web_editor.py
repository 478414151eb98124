"""Issue 15 bug 13 and issue 14 item 3: the editor page tells the truth about what it did."""

from __future__ import annotations

import re
from pathlib import Path

import av
import numpy as np
from playwright.async_api import Page, expect

from tests.browser.conftest import WebStack
from tests.browser.test_web_page import (
    _AUDIO_READY,
    JOB_TIMEOUT_MS,
    drag_on_wave,
    preview_and_wait,
    shot,
    upload,
    write_speechlike,
)
from tests.media import stream_info, write_samples, write_tone

PLAYER_SRC = "() => document.querySelector('#player').getAttribute('src')"


async def report_value(page: Page, box: str, row: str, side: str = "after") -> float:
    """A number out of the report table (`-16.0 LUFS` → -16.0)."""
    text = await page.locator(f"{box} tr[data-row='{row}'] td.{side}").inner_text()
    match = re.search(r"-?\d+(\.\d+)?", text)
    assert match, text
    return float(match.group(0))


async def test_the_download_link_names_the_file_as_saved(
    page: Page, media_dir: Path, tmp_path: Path
) -> None:
    await upload(page, write_tone(media_dir / "ep42.wav", seconds=1.0))
    # Also: a phone-band rate and an encoder bitrate picked on the page reach the file.
    await page.select_option("#sample-rate", "8000")
    await page.select_option("#save-format", "mp3")
    await page.select_option("#save-quality", "64")
    await page.fill("#save-name", "Episode 42 final")
    await page.click("#save-btn")
    link = page.locator("#download-link")
    await expect(link).to_be_visible(timeout=JOB_TIMEOUT_MS)
    await expect(link).to_have_text("download Episode_42_final.mp3")
    async with page.expect_download() as info:
        await link.click()
    download = await info.value
    assert download.suggested_filename == "Episode_42_final.mp3"
    saved = tmp_path / download.suggested_filename
    await download.save_as(saved)
    codec, rate, _ = stream_info(saved)
    assert codec.startswith("mp3") and rate == 8000, (codec, rate)
    with av.open(str(saved)) as inp:
        kbps = inp.streams.audio[0].codec_context.bit_rate / 1000
    assert abs(kbps - 64) < 1, kbps  # not the 192 kbps default (160, MPEG-2.5's top, at 8 kHz)
    await expect(
        page.locator("#job-table tbody tr", has_text="Episode_42_final.mp3")
    ).to_have_count(1)


async def test_a_refused_preview_does_not_say_it_plays(page: Page, media_dir: Path) -> None:
    await upload(page, write_tone(media_dir / "refused.wav", seconds=1.0))
    await preview_and_wait(page)
    await page.fill("#gain", "99")
    await page.click("#preview-btn")
    await expect(page.locator(".field.invalid .field-error")).to_have_text("must be at most 30")
    await expect(page.locator("#preview-note")).not_to_contain_text("Playing")
    await expect(page.locator("#preview-note")).to_contain_text("Not previewed")
    assert await page.evaluate(PLAYER_SRC) is None


async def test_resetting_the_trim_drops_the_old_preview(page: Page, media_dir: Path) -> None:
    await upload(page, write_speechlike(media_dir / "reset.wav", seconds=3.0))
    whole = await preview_and_wait(page)
    assert abs(whole["duration"] - 3.0) <= 0.1, whole
    await drag_on_wave(page, 0.2, 0.6)
    await expect(page.locator("#preview-note")).to_contain_text("edit changed")
    assert await page.evaluate(PLAYER_SRC) is None
    trimmed = await preview_and_wait(page)
    assert trimmed["duration"] < 2.0, trimmed
    # A single click on the waveform keeps everything again: the trimmed preview goes.
    await page.locator("#wave").scroll_into_view_if_needed()
    box = await page.locator("#wave").bounding_box()
    assert box is not None
    await page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] / 2)
    await expect(page.locator("#sel-len")).to_have_text("keeping everything")
    assert await page.evaluate(PLAYER_SRC) is None
    await expect(page.locator("#preview-note")).not_to_contain_text("cached")
    await expect(page.locator("#preview-note")).not_to_contain_text("Playing")
    # The Reset button too.
    await drag_on_wave(page, 0.2, 0.6)
    await preview_and_wait(page)
    await page.click("#reset-btn")
    assert await page.evaluate(PLAYER_SRC) is None
    await expect(page.locator("#preview-note")).to_have_text("")
    again = await preview_and_wait(page)
    assert abs(again["duration"] - 3.0) <= 0.1, again


async def test_the_key_box_shows_only_where_keys_are_required(
    page: Page, browser: object, keyed_web_stack: WebStack
) -> None:
    await expect(page.locator("#key-box")).to_be_hidden()
    keyed = await page.context.new_page()
    try:
        await keyed.goto(keyed_web_stack.base_url + "/")
        await keyed.wait_for_selector("body[data-ready='1']")
        await expect(keyed.locator("#key-box")).to_be_visible()
    finally:
        await keyed.close()


EDIT_VALUES = {
    "#trim-start": "0.250",
    "#trim-end": "1.500",
    "#fade-in": "0.2",
    "#fade-out": "0.3",
    "#speed": "1.25",
    "#target-lufs": "-18",
    "#true-peak": "-2",
    "#save-name": "kept name",
}


async def test_the_edit_survives_a_reload(page: Page, media_dir: Path) -> None:
    await upload(page, write_tone(media_dir / "persist.wav", seconds=2.0))
    await page.fill("#gain", "-2")  # kept, though a loudness target then switches it off
    await page.select_option("#normalize", "custom")
    for sel, value in EDIT_VALUES.items():
        await page.fill(sel, value)
    await page.select_option("#channels", "mono")
    await page.select_option("#sample-rate", "16000")
    await page.check("#trim-silence")
    await page.select_option("#save-format", "mp3")
    await page.select_option("#save-quality", "128")
    await page.select_option("#mp3-quality", "2")
    await page.reload()
    await expect(page.locator("#source")).to_be_visible(timeout=JOB_TIMEOUT_MS)
    for sel, value in EDIT_VALUES.items():
        await expect(page.locator(sel)).to_have_value(value)
    await expect(page.locator("#normalize")).to_have_value("custom")
    await expect(page.locator("#target-lufs")).to_be_enabled()
    await expect(page.locator("#gain")).to_have_value("-2")
    await expect(page.locator("#gain")).to_be_disabled()
    await expect(page.locator("#channels")).to_have_value("mono")
    await expect(page.locator("#sample-rate")).to_have_value("16000")
    await expect(page.locator("#trim-silence")).to_be_checked()
    await expect(page.locator("#save-format")).to_have_value("mp3")
    await expect(page.locator("#save-quality")).to_have_value("128")
    await expect(page.locator("#mp3-quality")).to_have_value("2")
    await expect(page.locator("#sel-len")).to_contain_text("keeping 0:01.250")


async def test_loudness_report_of_a_preset_preview_and_save(page: Page, media_dir: Path) -> None:
    # A loud source (about -12 LUFS): Apple Podcasts' -16 LUFS must bring it down.
    src = write_speechlike(media_dir / "loud talk.wav", seconds=4.0)
    await upload(page, src)
    await page.select_option("#normalize", "apple-podcasts")
    await expect(page.locator("#gain")).to_be_disabled()  # the target sets the gain
    await preview_and_wait(page)
    report = page.locator("#preview-report")
    await expect(report).to_be_visible()
    await expect(report).to_contain_text("Apple Podcasts")
    await expect(report).to_contain_text("Target")
    after = await report_value(page, "#preview-report", "lufs")
    before = await report_value(page, "#preview-report", "lufs", "before")
    assert before > -14.0 and abs(after - -16.0) <= 0.5, (before, after)
    assert await report_value(page, "#preview-report", "peak") <= -1.0
    await shot(page, "8-preview-report")

    # Saving with the ACX preset reports ACX's three checks.
    await page.select_option("#normalize", "audiobook-acx")
    await page.select_option("#save-format", "flac")
    await page.click("#save-btn")
    await expect(page.locator("#download-link")).to_be_visible(timeout=JOB_TIMEOUT_MS)
    saved = page.locator("#save-report")
    await expect(saved).to_be_visible()
    await expect(saved).to_contain_text("ACX audiobook")
    await expect(saved.locator(".report-acx")).to_contain_text("RMS")
    await expect(saved.locator(".report-acx")).to_contain_text("noise floor")
    rms = await report_value(page, "#save-report", "rms")
    assert -23.0 <= rms <= -18.0, rms
    await shot(page, "9-save-report")


async def test_loudness_report_shows_warnings(page: Page, media_dir: Path) -> None:
    # Digital silence cannot be normalised: the report says so.
    silent = np.zeros((2, 44100 * 2), dtype=np.float32)
    await upload(page, write_samples(media_dir / "silence.wav", silent))
    await page.select_option("#normalize", "spotify")
    await preview_and_wait(page)
    warnings = page.locator("#preview-report .report-warnings li")
    await expect(warnings.first).to_be_visible()
    await expect(page.locator("#preview-report li[data-code='silent_source']")).to_have_count(1)


async def test_keyboard_shortcuts_play_pause_and_mark_in_out(page: Page, media_dir: Path) -> None:
    await upload(page, write_speechlike(media_dir / "keys.wav", seconds=3.0))
    await page.evaluate("() => document.activeElement && document.activeElement.blur()")
    await page.keyboard.press("p")  # preview
    await expect(page.locator("#preview-note")).to_contain_text("Playing", timeout=JOB_TIMEOUT_MS)
    await page.wait_for_function("() => !document.querySelector('#player').paused")
    await page.keyboard.press(" ")
    await page.wait_for_function("() => document.querySelector('#player').paused")
    await page.keyboard.press(" ")
    await page.wait_for_function("() => !document.querySelector('#player').paused")
    # Mark in at 1.0 s and out at 2.5 s of the (untrimmed) preview.
    for at, key in ((1.0, "i"), (2.5, "o")):
        await page.evaluate(
            """(t) => new Promise((resolve) => {
              const a = document.querySelector('#player');
              a.pause();
              a.addEventListener('seeked', resolve, {once: true});
              a.currentTime = t;
            })""",
            at,
        )
        await page.keyboard.press(key)
    assert abs(float(await page.input_value("#trim-start")) - 1.0) <= 0.05
    assert abs(float(await page.input_value("#trim-end")) - 2.5) <= 0.05
    await expect(page.locator("#sel-len")).to_contain_text("keeping 0:01.5")
    await expect(page.locator("#preview-note")).to_contain_text("earlier edit")
    # Typing in a field is not a shortcut.
    await page.fill("#gain", "")
    await page.type("#gain", "1")
    assert abs(float(await page.input_value("#trim-start")) - 1.0) <= 0.05
    await page.fill("#gain", "0")
    await page.evaluate("() => document.activeElement && document.activeElement.blur()")
    await page.keyboard.press("p")
    await expect(page.locator("#preview-note")).to_contain_text("Playing", timeout=JOB_TIMEOUT_MS)
    ready = await page.evaluate(_AUDIO_READY)
    assert abs(ready["duration"] - 1.5) <= 0.1, ready
