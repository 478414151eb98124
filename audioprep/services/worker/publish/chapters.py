"""Chapter marks on the output's timeline, from the recipe and what the render cut."""

from __future__ import annotations

from audioprep.domain.events import VoiceReport
from audioprep.domain.recipe import Recipe
from audioprep.shared.metadata import Chapter, OutputChapter, output_chapters

INTRO_TITLE = "Intro"


def place_chapters(
    chapters: list[Chapter],
    recipe: Recipe,
    voice_report: VoiceReport | None,
    duration_ms: int,
    *,
    episode_start_ms: int = 0,
    episode_ms: int | None = None,
) -> list[OutputChapter]:
    """Source-time chapters → output time: the kept window (trim, narrowed by trimSilence's
    sound bounds exactly as the render's `kept_window` does), voice-chain cuts, speed, and
    the intro before the episode (its length less the crossfade). With an intro the marks
    start with an `Intro` chapter from 0 (MP4 chapter tracks can't start later, and a player
    should not show the intro as part of the first chapter)."""
    start = recipe.trim.start_ms if recipe.trim else 0
    end = recipe.trim.end_ms if recipe.trim else None
    cuts: list[tuple[int, int]] = []
    steps = voice_report.steps if voice_report is not None else None
    if steps is not None and recipe.trim_silence and steps.trimmed_ms:
        sound_start, sound_end = steps.trimmed_ms[0], steps.trimmed_ms[1]
        if sound_end > max(start, sound_start) and (end is None or sound_start < end):
            start = max(start, sound_start)
            end = sound_end if end is None else min(end, sound_end)
    if steps is not None:
        cuts = [(int(a), int(b)) for a, b in steps.cuts_ms]
    placed = output_chapters(
        chapters,
        duration_ms=duration_ms,
        kept_start_ms=start,
        kept_end_ms=end,
        cuts_ms=cuts,
        speed=recipe.speed,
        offset_ms=episode_start_ms,
        episode_ms=episode_ms,
    )
    if placed and placed[0].start_ms > 0 and episode_start_ms > 0:
        placed.insert(0, OutputChapter(start_ms=0, end_ms=placed[0].start_ms, title=INTRO_TITLE))
    return placed
