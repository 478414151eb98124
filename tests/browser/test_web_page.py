"""Issue 11: the page at `/` driven in Debian's Chromium against a real stack."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from playwright.async_api import BrowserContext, Page, expect

from tests.browser.conftest import API_KEY, ARTIFACTS, WebStack
from tests.media import junk_bytes, measure_duration_s, stream_info, tone, write_samples, write_tone

JOB_TIMEOUT_MS = 30_000
WAVE_COLOUR = (79, 195, 247)  # the selected part of the waveform (#4fc3f7)

# Counts canvas pixels close to one colour: proves the waveform was drawn, not just sized.
_COUNT_PIXELS = """([r, g, b]) => {
  const c = document.querySelector('#wave');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (Math.abs(d[i] - r) < 8 && Math.abs(d[i + 1] - g) < 8 && Math.abs(d[i + 2] - b) < 8) n++;
  }
  return n;
}"""

# Resolves once the player can play (readyState >= HAVE_FUTURE_DATA), with its duration.
_AUDIO_READY = """() => new Promise((resolve, reject) => {
  const a = document.querySelector('#player');
  const done = () => resolve({duration: a.duration, src: a.currentSrc});
  if (a.readyState >= 3) return done();
  a.addEventListener('canplay', done, {once: true});
  a.addEventListener('error', () => reject(new Error('audio error ' + (a.error && a.error.code))),
                     {once: true});
})"""


def write_speechlike(path: Path, *, seconds: float) -> Path:
    """A tone under a slow, uneven envelope: a waveform with visible shape."""
    pcm = tone(seconds=seconds, freq=220.0, dbfs=-6.0)
    t = np.linspace(0.0, seconds, pcm.shape[1], dtype=np.float32)
    envelope = 0.15 + 0.85 * np.abs(np.sin(np.pi * t * 1.3) * np.sin(np.pi * t * 0.37))
    return write_samples(path, (pcm * envelope).astype(np.float32))


async def shot(page: Page, name: str) -> None:
    await page.screenshot(path=str(ARTIFACTS / f"web-{name}.png"), full_page=True)


async def upload(page: Page, path: Path) -> None:
    await page.set_input_files("#file-input", str(path))
    await expect(page.locator("#source")).to_be_visible(timeout=JOB_TIMEOUT_MS)


async def wave_pixels(page: Page) -> int:
    return int(await page.evaluate(_COUNT_PIXELS, list(WAVE_COLOUR)))


async def drag_on_wave(page: Page, start: float, end: float) -> None:
    """Drag across the waveform from fraction `start` to fraction `end` of its width."""
    # Mouse coordinates are the viewport's: the waveform must be on screen (Preview, further
    # down the page, scrolls it away).
    await page.locator("#wave").scroll_into_view_if_needed()
    box = await page.locator("#wave").bounding_box()
    assert box is not None
    y = box["y"] + box["height"] / 2
    await page.mouse.move(box["x"] + box["width"] * start, y)
    await page.mouse.down()
    await page.mouse.move(box["x"] + box["width"] * (start + end) / 2, y, steps=4)
    await page.mouse.move(box["x"] + box["width"] * end, y, steps=4)
    await page.mouse.up()


async def preview_and_wait(page: Page) -> dict[str, Any]:
    await page.click("#preview-btn")
    await expect(page.locator("#preview-note")).to_contain_text("Playing", timeout=JOB_TIMEOUT_MS)
    ready: dict[str, Any] = await page.evaluate(_AUDIO_READY)
    return ready


async def test_upload_trim_preview_save_download(
    page: Page, web_stack: WebStack, media_dir: Path, tmp_path: Path
) -> None:
    streams: list[tuple[int, str]] = []
    page.on(
        "response",
        lambda r: (
            streams.append((r.status, r.headers.get("content-type", "")))
            if r.url.endswith("/events")
            else None
        ),
    )
    src = write_speechlike(media_dir / "Interview take 3.wav", seconds=4.0)
    await upload(page, src)

    # Source facts and a drawn waveform.
    await expect(page.locator("#src-title")).to_have_text("Interview take 3.wav")
    await expect(page.locator("#src-duration")).to_have_text("0:04.000")
    await expect(page.locator("#src-format")).to_contain_text("WAV")
    await expect(page.locator("#src-lufs")).to_contain_text("LUFS")
    await page.wait_for_function(f"({_COUNT_PIXELS})({list(WAVE_COLOUR)}) > 2000")
    await shot(page, "1-source")

    # Trim by dragging over the middle half of the waveform.
    await drag_on_wave(page, 0.25, 0.75)
    start_s = float(await page.input_value("#trim-start"))
    end_s = float(await page.input_value("#trim-end"))
    assert 0.8 < start_s < 1.2 and 2.8 < end_s < 3.2, (start_s, end_s)
    kept = end_s - start_s
    await expect(page.locator("#sel-len")).to_contain_text("keeping")
    assert await wave_pixels(page) > 500  # the kept part stays highlighted

    # Preview: the player can play, and plays what was kept.
    ready = await preview_and_wait(page)
    assert abs(ready["duration"] - kept) <= 0.1, (ready, kept)
    assert "/api/audio/" in ready["src"]
    first_src = ready["src"]
    await shot(page, "2-preview")

    # Another edit renders a new preview; going back replays the first one from the cache.
    await page.fill("#gain", "-6")
    await preview_and_wait(page)
    await page.fill("#gain", "0")
    jobs_before = await page.locator("#job-table tbody tr").count()
    ready = await preview_and_wait(page)
    await expect(page.locator("#preview-note")).to_contain_text("cached")
    assert ready["src"] == first_src
    assert await page.locator("#job-table tbody tr").count() == jobs_before

    # Save as FLAC and download the file through the link.
    await page.select_option("#save-format", "flac")
    await page.fill("#save-name", "take 3 trimmed")
    await page.click("#save-btn")
    link = page.locator("#download-link")
    await expect(link).to_be_visible(timeout=JOB_TIMEOUT_MS)
    await shot(page, "3-saved")
    async with page.expect_download() as info:
        await link.click()
    download = await info.value
    saved = tmp_path / download.suggested_filename
    await download.save_as(saved)
    assert saved.suffix == ".flac"
    assert stream_info(saved)[0] == "flac"
    assert abs(measure_duration_s(saved) - kept) <= 0.05

    # Jobs were followed over Server-Sent Events (ingest, two previews, save).
    assert len(streams) >= 4, streams
    assert all(st == 200 and ct.startswith("text/event-stream") for st, ct in streams), streams

    # The session's job list: one ingest, two previews, one save, all completed.
    rows = page.locator("#job-table tbody tr")
    await expect(rows).to_have_count(4)
    await expect(page.locator("#job-table tbody tr.job-completed")).to_have_count(4)

    # A reload keeps the source and the job list; the same edit comes back from the server's
    # render cache as an already-completed job.
    await page.reload()
    await expect(page.locator("#src-title")).to_have_text("Interview take 3.wav")
    await expect(rows).to_have_count(4)
    await page.fill("#trim-start", f"{start_s:.3f}")
    await page.fill("#trim-end", f"{end_s:.3f}")
    ready = await preview_and_wait(page)
    await expect(page.locator("#preview-note")).to_contain_text("already rendered")
    assert abs(ready["duration"] - kept) <= 0.1, (ready, kept)
    await expect(page.locator("#job-table tbody tr", has_text="(cached)")).to_have_count(1)


async def test_invalid_recipe_value_is_explained_next_to_its_field(
    page: Page, media_dir: Path
) -> None:
    await upload(page, write_tone(media_dir / "short.wav", seconds=1.0))
    await page.fill("#gain", "99")
    await page.click("#preview-btn")
    field_error = page.locator(".field.invalid .field-error")
    await expect(field_error).to_have_text("must be at most 30")
    await expect(page.locator("#recipe-error")).to_contain_text("Gain (dB)")
    await shot(page, "4-invalid-recipe")
    # Fixing the value clears the message.
    await page.fill("#gain", "3")
    await expect(page.locator(".field.invalid")).to_have_count(0)
    await expect(page.locator("#recipe-error")).to_be_hidden()
    # Phone width: the same page, one column.
    await page.set_viewport_size({"width": 420, "height": 900})
    await shot(page, "4-narrow")


async def test_a_file_that_is_not_audio_shows_a_clear_error(page: Page) -> None:
    # Dropped (drag and drop), not picked: covers the drop zone too.
    data = list(junk_bytes(32 * 1024))
    transfer = await page.evaluate_handle(
        """(bytes) => {
          const dt = new DataTransfer();
          dt.items.add(new File([new Uint8Array(bytes)], 'notes.mp3', {type: 'audio/mpeg'}));
          return dt;
        }""",
        data,
    )
    await page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    error = page.locator("#ingest-error")
    await expect(error).to_be_visible(timeout=JOB_TIMEOUT_MS)
    await expect(error).to_contain_text("Could not use notes.mp3")
    await expect(error).to_contain_text("not audio we can read")
    await expect(page.locator("#job-table tbody tr.job-failed")).to_have_count(1)
    await expect(page.locator("#source")).to_be_hidden()
    await shot(page, "5-invalid-file")


async def test_a_running_save_can_be_cancelled(page: Page, media_dir: Path) -> None:
    # Long enough (an 8-minute source slowed to half speed, normalised, to MP3) that the
    # cancel sent right after the job starts arrives long before the render could finish.
    src = write_tone(media_dir / "long.flac", seconds=480.0, channels=1, rate=22050)
    await upload(page, src)
    await page.fill("#speed", "0.5")
    await page.select_option("#normalize", "apple-podcasts")
    await page.select_option("#save-format", "mp3")
    await page.click("#save-btn")
    cancel = page.locator("#cancel-btn")
    await expect(cancel).to_be_visible()
    await cancel.click()
    await expect(page.locator("#save-error")).to_have_text(
        "Save cancelled.", timeout=JOB_TIMEOUT_MS
    )
    await expect(cancel).to_be_hidden()
    await expect(page.locator("#save-done")).to_be_hidden()
    await expect(page.locator("#job-table tbody tr.job-cancelled")).to_have_count(1)
    await shot(page, "6-cancelled")


async def test_a_pasted_link_is_fetched_and_shown(
    page: Page, file_server: tuple[str, Path]
) -> None:
    base, root = file_server
    write_tone(root / "podcast.mp3", seconds=2.0, title="Episode 12: Tones")
    await page.fill("#url-input", f"{base}/podcast.mp3")
    await page.click("#url-form button")
    await expect(page.locator("#source")).to_be_visible(timeout=JOB_TIMEOUT_MS)
    await expect(page.locator("#src-title")).to_have_text("Episode 12: Tones")
    await expect(page.locator("#src-format")).to_contain_text("MP3")
    await page.wait_for_function(f"({_COUNT_PIXELS})({list(WAVE_COLOUR)}) > 2000")
    await expect(page.locator("#job-table tbody tr.job-completed")).to_have_count(1)


async def test_with_api_keys_the_page_asks_for_one_and_then_works(
    keyed_page: Page, media_dir: Path
) -> None:
    page = keyed_page
    src = write_tone(media_dir / "keyed.wav", seconds=2.0)
    await page.set_input_files("#file-input", str(src))
    await expect(page.locator("#ingest-error")).to_contain_text("API key")
    await expect(page.locator("#key-box")).to_have_attribute("open", "")
    await page.fill("#api-key", API_KEY)
    await page.dispatch_event("#api-key", "change")
    await upload(page, src)
    await page.wait_for_function(f"({_COUNT_PIXELS})({list(WAVE_COLOUR)}) > 2000")
    # No SSE and no plain preview route with a key: jobs are polled and the preview plays
    # from the signed download link.
    ready = await preview_and_wait(page)
    assert abs(ready["duration"] - 2.0) <= 0.1, ready
    assert "/api/storage/download?" in ready["src"]
    await shot(page, "7-api-key")


async def test_upload_progress_is_shown_while_the_file_is_sent(
    page: Page, browser: BrowserContext, media_dir: Path
) -> None:
    # Throttle the tab's uploads (Chromium's network emulation) so the bar has time to move.
    cdp = await browser.new_cdp_session(page)
    await cdp.send("Network.enable")
    await cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": 400_000},
    )
    src = write_tone(media_dir / "slow.wav", seconds=6.0, channels=1)  # ~530 KB
    await page.set_input_files("#file-input", str(src))
    await page.wait_for_function(
        """() => {
          const bar = document.querySelector('#ingest-progress');
          const label = document.querySelector('#ingest-label').textContent;
          return label.startsWith('Uploading') && bar.value > 5 && bar.value < 95;
        }"""
    )
    await shot(page, "0-uploading")
    await cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
    )
    await expect(page.locator("#source")).to_be_visible(timeout=JOB_TIMEOUT_MS)
