"""Issue 17: the page's "Clean up voice" section, the ingest's analysis and the voice report."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from playwright.async_api import Page, Request, expect

from tests.browser.conftest import WebStack
from tests.browser.test_web_page import (
    _AUDIO_READY,
    JOB_TIMEOUT_MS,
    preview_and_wait,
    shot,
    upload,
)
from tests.media import db_to_amp, write_samples
from tests.speech import hum, pink_noise

RATE = 48000
TOGGLES = (
    "#highpass-on",
    "#dehum-on",
    "#denoise-on",
    "#leveler-on",
    "#deess-on",
    "#trim-silence",
    "#pauses-on",
)
SETTINGS = (
    "#highpass-hz",
    "#dehum-hz",
    "#denoise-mode",
    "#denoise-amount",
    "#leveler-strength",
    "#deess-amount",
    "#max-pause",
)
ALL_ON = {
    "highpassHz": 80,
    "dehum": "auto",
    "denoise": "auto",
    "leveler": {"strength": 0.7},
    "deess": {"amount": 0.5},
    "trimSilence": True,
    "shortenPauses": {"maxPauseMs": 1000},
}

# Canvas pixels tinted by the red "cut" shading (rgba(255,138,128,.28) over the dark canvas
# or the blue waveform): clearly redder than green and blue, unlike anything else drawn.
_RED_PIXELS = """() => {
  const c = document.querySelector('#wave');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) if (d[i] > d[i + 1] + 20 && d[i] > d[i + 2] + 20) n++;
  return n;
}"""


def write_noisy_talk(path: Path) -> Path:
    """15 s, mono 48 kHz: 2 s room tone, 4 s of a voiced "speaker", a 3 s pause, the same
    6 dB quieter, 2 s room tone; pink noise at about -42 dBFS and 50 Hz hum with harmonics
    (-38 dBFS peak) under all of it. The "speech" is a gliding 130 Hz harmonic stack under a
    syllable-rate envelope: loud frames, pauses and a hum-free fundamental, like a voice."""

    def talk(seconds: float) -> np.ndarray:
        t = np.arange(int(seconds * RATE)) / RATE
        phase = 2 * np.pi * np.cumsum(130 + 15 * np.sin(2 * np.pi * 0.7 * t)) / RATE
        voiced = sum((0.7**k) * np.sin((k + 1) * phase) for k in range(8))
        envelope = np.abs(np.sin(np.pi * t * 3.1)) ** 0.6 * (
            0.6 + 0.4 * np.sin(2 * np.pi * 0.4 * t) ** 2
        )
        return np.asarray(voiced * envelope)

    def still(seconds: float) -> np.ndarray:
        return np.zeros(int(seconds * RATE))

    clean = np.concatenate([still(2), talk(4), still(3), talk(4) * 0.5, still(2)])[None, :]
    clean = clean / np.max(np.abs(clean)) * db_to_amp(-3.0)
    n = clean.shape[1]
    noisy = clean + pink_noise(n, rate=RATE, rms_dbfs=-42.0) + hum(n, rate=RATE, dbfs=-38.0)
    return write_samples(path, noisy.astype(np.float32), rate=RATE)


def number(text: str) -> float:
    """The first number in a text, with a typographic minus (`noise −18.2 dB` → -18.2)."""
    match = re.search(r"[-−]?\d+(\.\d+)?", text)
    assert match, text
    return float(match.group(0).replace("−", "-"))


async def cell(page: Page, box: str, row: str, side: str) -> str:
    return await page.locator(f"{box} tr[data-row='{row}'] td.{side}").inner_text()


def is_preview_post(request: Request) -> bool:
    return request.method == "POST" and request.url.endswith("/api/audio/edit/preview")


async def newest_job(page: Page, web_stack: WebStack, kind: str) -> dict[str, Any]:
    """The job view of the newest job of a kind in the page's job list, from the API."""
    row = page.locator("#job-table tbody tr", has=page.locator("td", has_text=kind)).first
    job_id = await row.get_attribute("data-job-id")
    resp = await page.request.get(f"{web_stack.base_url}/api/audio/jobs/{job_id}")
    assert resp.ok, await resp.text()
    view: dict[str, Any] = await resp.json()
    return view


async def test_voice_cleanup_is_sent_and_its_report_shown(
    page: Page, web_stack: WebStack, media_dir: Path
) -> None:
    await upload(page, write_noisy_talk(media_dir / "laptop talk.wav"))

    # The ingest's analysis is shown with the source facts: the floor, the hum, a hint.
    analysis = page.locator("#src-analysis")
    await expect(analysis).to_be_visible()
    await expect(page.locator("#an-hum")).to_contain_text("50 Hz")
    floor = number(await page.locator("#an-floor").inner_text())
    assert -46.0 <= floor <= -38.0, floor
    snr = number(await page.locator("#an-snr").inner_text())
    assert 15.0 <= snr <= 40.0, snr
    await expect(page.locator("#an-ratio")).to_contain_text("% of the time")
    await expect(page.locator("#an-hint")).to_contain_text("Remove mains hum")

    # Off by default, settings unusable until their step is switched on.
    for sel in TOGGLES:
        await expect(page.locator(sel)).not_to_be_checked()
    for sel in SETTINGS:
        await expect(page.locator(sel)).to_be_disabled()
    for sel in TOGGLES:
        await page.check(sel)
    for sel in SETTINGS:
        if sel != "#denoise-amount":  # only with "set the amount"
            await expect(page.locator(sel)).to_be_enabled()
    await expect(page.locator("#denoise-amount")).to_be_disabled()
    await expect(page.locator("#leveler-strength-out")).to_have_text("70 %")

    async with page.expect_request(is_preview_post) as sent:
        ready = await preview_and_wait(page)
    request = await sent.value
    assert request.post_data_json["recipe"] == ALL_ON, request.post_data_json

    # The voice report: before → after, from the render's result.voiceReport.
    box = "#preview-voice"
    await expect(page.locator(box)).to_be_visible()
    report = (await newest_job(page, web_stack, "preview"))["result"]["voiceReport"]
    before_floor = number(await cell(page, box, "floor", "before"))
    after_floor = number(await cell(page, box, "floor", "after"))
    assert abs(before_floor - report["before"]["noiseFloorDb"]) <= 0.06, report
    assert abs(after_floor - report["after"]["noiseFloorDb"]) <= 0.06, report
    assert after_floor <= before_floor - 10.0, (before_floor, after_floor)
    assert number(await cell(page, box, "snr", "after")) > number(
        await cell(page, box, "snr", "before")
    )
    assert "50 Hz" in await cell(page, box, "hum", "before")
    assert await cell(page, box, "hum", "after") == "none"

    # What each step did, in words.
    await expect(page.locator(f"{box} li[data-step='highpass']")).to_have_text(
        "rumble below 80 Hz filtered out"
    )
    notched = len(report["steps"]["notchedHz"])
    await expect(page.locator(f"{box} li[data-step='dehum']")).to_have_text(
        f"hum 50 Hz notched ({notched} harmonics)"
    )
    denoised = await page.locator(f"{box} li[data-step='denoise']").inner_text()
    assert re.fullmatch(r"noise −\d+\.\d dB", denoised), denoised
    assert abs(-number(denoised) - report["steps"]["denoiseDb"]) <= 0.05
    await expect(page.locator(f"{box} li[data-step='leveler']")).to_contain_text("evened out")
    await expect(page.locator(f"{box} li[data-step='deess']")).to_have_text("de-esser at 50 %")
    await expect(page.locator(f"{box} li[data-step='trim']")).to_contain_text("silence cut")
    cuts = report["steps"]["cutsMs"]
    assert len(cuts) >= 1 and report["steps"]["cutTotalMs"] >= 1500, report["steps"]
    n = len(cuts)
    await expect(page.locator(f"{box} li[data-step='pauses']")).to_have_text(
        f"{n} pause{'s' if n > 1 else ''} shortened, "
        f"{report['steps']['cutTotalMs'] / 1000:.1f} s cut"
    )
    await expect(page.locator(f"{box} .voice-cuts li")).to_have_count(n)

    # The preview is what the report says: the kept range less the cut pauses ...
    start, end = report["steps"]["trimmedMs"]
    assert 1700 <= start <= 2000, start  # speech starts at 2.0 s: about 150 ms kept before
    expected_s = (end - start - report["steps"]["cutTotalMs"]) / 1000
    assert abs(ready["duration"] - expected_s) <= 0.1, (ready, expected_s)
    # ... and what it left out is shaded on the waveform while it is in the player.
    assert await page.evaluate(_RED_PIXELS) > 1000
    await shot(page, "10-voice-preview")

    # Saving carries the same fields and reports the same way.
    async with page.expect_request(
        lambda r: r.method == "POST" and r.url.endswith("/api/audio/edit/save")
    ) as saved:
        await page.click("#save-btn")
    assert (await saved.value).post_data_json["recipe"] == ALL_ON
    await expect(page.locator("#download-link")).to_be_visible(timeout=JOB_TIMEOUT_MS)
    await expect(page.locator("#save-voice")).to_be_visible()
    await expect(page.locator("#save-voice h3")).to_contain_text("laptop_talk.flac")
    await expect(page.locator("#save-voice li[data-step='dehum']")).to_contain_text(
        "hum 50 Hz notched"
    )
    assert await cell(page, "#save-voice", "hum", "after") == "none"
    await shot(page, "11-voice-save")

    # I on the cleaned preview marks the source time: through the cut silence and pauses.
    played = 6.0
    source_s = start / 1000 + played
    for a, b in cuts:
        if a / 1000 < source_s:
            source_s += (b - a) / 1000
    assert source_s > cuts[0][1] / 1000  # the point is after a cut
    await page.evaluate(
        """(t) => new Promise((resolve) => {
          const a = document.querySelector('#player');
          a.pause();
          a.addEventListener('seeked', resolve, {once: true});
          a.currentTime = t;
        })""",
        played,
    )
    await page.evaluate("() => document.activeElement && document.activeElement.blur()")
    await page.keyboard.press("i")
    assert abs(float(await page.input_value("#trim-start")) - source_s) <= 0.05, source_s

    # Reset edit switches every voice step off again.
    await page.click("#reset-btn")
    for sel in TOGGLES:
        await expect(page.locator(sel)).not_to_be_checked()
    for sel in SETTINGS:
        await expect(page.locator(sel)).to_be_disabled()


async def test_a_refused_voice_value_is_explained_next_to_its_field(
    page: Page, media_dir: Path
) -> None:
    await upload(page, write_noisy_talk(media_dir / "refused voice.wav"))
    hz = page.locator("#highpass-hz")
    assert (await hz.get_attribute("min"), await hz.get_attribute("max")) == ("20", "300")
    await page.check("#highpass-on")
    await page.fill("#highpass-hz", "10")  # the number box takes it; the API does not
    async with page.expect_request(is_preview_post) as sent:
        await page.click("#preview-btn")
    assert (await sent.value).post_data_json["recipe"] == {"highpassHz": 10}
    step = page.locator(".voice-step", has=hz)
    await expect(step).to_have_class(re.compile(r"\binvalid\b"))
    await expect(step.locator(".field-error")).to_have_text("must be at least 20")
    await expect(page.locator("#recipe-error")).to_contain_text("Remove rumble (high-pass)")
    await expect(page.locator("#preview-note")).to_contain_text("Not previewed")
    await expect(hz).to_be_focused()
    await page.fill("#highpass-hz", "80")
    await expect(step.locator(".field-error")).to_have_text("")
    await expect(page.locator("#recipe-error")).to_be_hidden()

    # A field in seconds on the page, milliseconds in the API: the message is in seconds.
    await page.check("#pauses-on")
    await page.fill("#max-pause", "0.1")
    await page.click("#preview-btn")
    pauses = page.locator(".voice-step", has=page.locator("#max-pause"))
    await expect(pauses.locator(".field-error")).to_have_text("must be at least 0.3")
    await expect(step.locator(".field-error")).to_have_text("")
    await shot(page, "12-voice-refused")


async def test_the_voice_settings_survive_a_reload(page: Page, media_dir: Path) -> None:
    await upload(page, write_noisy_talk(media_dir / "kept voice.wav"))
    await page.check("#highpass-on")
    await page.fill("#highpass-hz", "120")
    await page.check("#dehum-on")
    await page.select_option("#dehum-hz", "60")
    await page.check("#denoise-on")
    await page.select_option("#denoise-mode", "amount")
    await page.focus("#denoise-amount")
    for _ in range(8):  # the sliders work from the keyboard: 20 → 12 dB
        await page.keyboard.press("ArrowLeft")
    await expect(page.locator("#denoise-amount-out")).to_have_text("12 dB")
    await expect(page.locator("#denoise-amount")).to_have_attribute("aria-valuetext", "12 dB")
    await page.check("#leveler-on")
    await page.focus("#leveler-strength")
    for _ in range(6):  # 0.7 → 0.4
        await page.keyboard.press("ArrowLeft")
    await page.check("#pauses-on")
    await page.fill("#max-pause", "2.5")
    expected = {
        "highpassHz": 120,
        "dehum": 60,
        "denoise": {"amountDb": 12},
        "leveler": {"strength": 0.4},
        "shortenPauses": {"maxPauseMs": 2500},
    }
    await page.reload()
    await expect(page.locator("#source")).to_be_visible(timeout=JOB_TIMEOUT_MS)
    for sel, value in (
        ("#highpass-hz", "120"),
        ("#dehum-hz", "60"),
        ("#denoise-mode", "amount"),
        ("#denoise-amount", "12"),
        ("#leveler-strength", "0.4"),
        ("#max-pause", "2.5"),
    ):
        await expect(page.locator(sel)).to_have_value(value)
        await expect(page.locator(sel)).to_be_enabled()
    await expect(page.locator("#deess-on")).not_to_be_checked()
    await expect(page.locator("#deess-amount")).to_be_disabled()
    await expect(page.locator("#leveler-strength-out")).to_have_text("40 %")
    async with page.expect_request(is_preview_post) as sent:
        await preview_and_wait(page)
    assert (await sent.value).post_data_json["recipe"] == expected
    await expect(page.locator("#preview-voice li[data-step='dehum']")).to_contain_text(
        "hum 60 Hz notched"
    )
    await expect(page.locator("#preview-voice li[data-step='denoise']")).to_have_text(
        "noise −12.0 dB"
    )
    # Switched off again, nothing of the voice section is sent and no voice report shows.
    for sel in TOGGLES:
        await page.uncheck(sel)
    await expect(page.locator("#highpass-hz")).to_be_disabled()
    async with page.expect_request(is_preview_post) as plain:
        await preview_and_wait(page)
    assert (await plain.value).post_data_json["recipe"] == {}
    await expect(page.locator("#preview-voice")).to_be_hidden()
    ready = await page.evaluate(_AUDIO_READY)
    assert abs(ready["duration"] - 15.0) <= 0.1, ready
