"""Source-time chapters onto the output timeline: trim, cuts, speed, drops (no I/O)."""

from __future__ import annotations

import json

from audioprep.domain.events import VoiceReport, VoiceSteps
from audioprep.domain.recipe import Recipe, Trim
from audioprep.services.worker.publish.chapters import place_chapters
from audioprep.shared.metadata import Chapter, Metadata, chapters_json, output_chapters


def _ch(*starts: int) -> list[Chapter]:
    return [Chapter(start_ms=s, title=f"c{s}") for s in starts]


def test_trim_and_speed() -> None:
    # keep [10 s, 50 s) at double speed: 20 s of output
    out = output_chapters(
        _ch(0, 5000, 12000, 30000, 50000, 60000),
        duration_ms=20000,
        kept_start_ms=10000,
        kept_end_ms=50000,
        speed=2.0,
    )
    # 0 and 5000 both land on 0: the later one (5000) plays from there
    assert [(c.start_ms, c.title) for c in out] == [
        (0, "c5000"),
        (1000, "c12000"),
        (10000, "c30000"),
    ]
    assert [c.end_ms for c in out] == [1000, 10000, 20000]


def test_chapter_at_the_kept_start_wins_over_earlier_ones() -> None:
    out = output_chapters(_ch(0, 1000), duration_ms=5000, kept_start_ms=1000)
    assert [(c.start_ms, c.title) for c in out] == [(0, "c1000")]


def test_cuts_move_later_chapters_and_swallow_inner_ones() -> None:
    # 2 s cut at [4 s, 6 s): a chapter at 5 s lands where the cut was, after the one at 4 s
    out = output_chapters(_ch(1000, 4000, 5000, 8000), duration_ms=8000, cuts_ms=[(4000, 6000)])
    assert [(c.start_ms, c.title) for c in out] == [
        (1000, "c1000"),
        (4000, "c5000"),
        (6000, "c8000"),
    ]


def test_past_the_output_end_is_dropped() -> None:
    assert output_chapters(_ch(0, 9000), duration_ms=9000) == output_chapters(
        _ch(0), duration_ms=9000
    )


def test_place_chapters_follows_trim_silence_bounds_and_voice_cuts() -> None:
    recipe = Recipe(trim=Trim(start_ms=1000), trim_silence=True, speed=1.0)
    report = VoiceReport(steps=VoiceSteps(trimmed_ms=[1500, 9000], cuts_ms=[[3000, 4000]]))
    out = place_chapters(_ch(0, 2000, 5000, 9500), recipe, report, duration_ms=6500)
    assert [(c.start_ms, c.title) for c in out] == [(0, "c0"), (500, "c2000"), (2500, "c5000")]


def test_json_chapters_document() -> None:
    out = output_chapters(
        [Chapter(start_ms=0, title="A"), Chapter(start_ms=1500, title="B", url="https://x.org/b")],
        duration_ms=3000,
    )
    doc = json.loads(chapters_json(out, Metadata(title="Ep", album="Show")))
    assert doc == {
        "version": "1.2.0",
        "title": "Ep",
        "podcastName": "Show",
        "chapters": [
            {"startTime": 0.0, "endTime": 1.5, "title": "A"},
            {"startTime": 1.5, "endTime": 3.0, "title": "B", "url": "https://x.org/b"},
        ],
    }
