"""Issue 15: a preview of a 20-minute source starts playing at once (its first seconds render
as their own small preview) and carries on in the whole preview from the same position."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from playwright.async_api import Page, expect

from tests.browser.test_web_page import JOB_TIMEOUT_MS, upload
from tests.media import write_samples

SOURCE_S = 20 * 60
RATE = 16000

# Records when Preview was pressed and when the player first played.
_WATCH = """() => {
  window.__quick = {clicked: performance.now(), played: null, srcs: []};
  const a = document.querySelector('#player');
  a.addEventListener('playing', () => {
    if (window.__quick.played === null) window.__quick.played = performance.now();
  });
  new MutationObserver(() => window.__quick.srcs.push(a.getAttribute('src')))
    .observe(a, {attributes: true, attributeFilter: ['src']});
}"""


def _long_source(path: Path) -> Path:
    """20 minutes of a speech-like envelope over a tone, mono 16 kHz (38 MB)."""
    t = np.arange(10 * RATE, dtype=np.float32) / RATE
    envelope = 0.15 + 0.85 * np.abs(np.sin(np.pi * t * 1.3) * np.sin(np.pi * t * 0.37))
    ten_s = (0.4 * np.sin(2 * np.pi * 220 * t) * envelope).astype(np.float32)
    pcm = np.tile(ten_s, SOURCE_S // 10)[None, :]
    return write_samples(path, pcm, rate=RATE)


async def test_a_long_preview_starts_at_once_and_carries_on_in_the_whole_preview(
    page: Page, media_dir: Path
) -> None:
    await upload(page, _long_source(media_dir / "long.wav"))
    await page.select_option("#normalize", "apple-podcasts")
    await page.evaluate(_WATCH)
    started = time.monotonic()
    await page.click("#preview-btn")
    await expect(page.locator("#preview-note")).to_contain_text(
        "Playing the start", timeout=JOB_TIMEOUT_MS
    )
    await page.wait_for_function("() => window.__quick.played !== null", timeout=JOB_TIMEOUT_MS)
    quick = await page.evaluate("() => window.__quick")
    first_sound_s = (quick["played"] - quick["clicked"]) / 1000
    # the whole preview then takes over, at the position the start had reached
    await expect(page.locator("#preview-note")).to_have_text(
        "Playing the preview.", timeout=JOB_TIMEOUT_MS * 2
    )
    whole_s = time.monotonic() - started
    await page.wait_for_function(
        "() => { const a = document.querySelector('#player');"
        " return a.readyState >= 1 && !a.paused && a.currentTime > 0; }",
        timeout=JOB_TIMEOUT_MS,
    )
    state = await page.evaluate(
        "() => { const a = document.querySelector('#player');"
        " return {duration: a.duration, t: a.currentTime, srcs: window.__quick.srcs}; }"
    )
    srcs = [s for s in state["srcs"] if s]
    assert len(set(srcs)) >= 2, srcs  # the start (and following parts), then the whole one
    assert abs(state["duration"] - SOURCE_S) <= 1.0, state
    # it carried on: what the parts had played is not heard again from 0
    assert state["t"] >= 7.0, state
    print(
        f"\n[quick-preview] source_s={SOURCE_S} first_sound_s={first_sound_s:.2f} "
        f"whole_preview_s={whole_s:.1f} switched_at_s={state['t']:.2f}"
    )
    assert first_sound_s < whole_s  # the start really played before the whole was ready
