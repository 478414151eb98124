"""Typed requests: what a handler gets from a JobRequested, or the code the job fails with."""

from __future__ import annotations

from pathlib import Path

import pytest

from audioprep.domain.errors import Permanent
from audioprep.domain.events import JobRequested, decode_event
from audioprep.shared.job_requests import (
    IngestRequest,
    PreviewRequest,
    SaveRequest,
    ingest_request,
    render_request,
)

SOURCE = "sources/01KAXZ3V7RJ6W3TQ2M8D1C5B9E/a.wav"


def _code(event: JobRequested) -> str:
    with pytest.raises(Permanent) as caught:
        if event.kind == "ingest":
            ingest_request(event)
        else:
            render_request(event)
    return caught.value.code


def test_a_single_format_save_is_one_output_and_a_preview_defaults_to_opus() -> None:
    save = render_request(
        JobRequested(job_id="J", kind="save", source_key=SOURCE, format="mp3", recipe={"gainDb": 2})
    )
    assert isinstance(save, SaveRequest) and not save.several
    assert [o.format for o in save.outputs] == ["mp3"] and save.recipe.gain_db == 2
    many = render_request(
        JobRequested(
            job_id="J",
            kind="save",
            source_key=SOURCE,
            format="mp3",
            outputs=[{"format": "mp3"}, {"format": "opus", "filename": "web"}],
            metadata={"title": "Ep 1"},
            chapters=[{"startMs": 5000, "title": "B"}, {"startMs": 0, "title": "A"}],
        )
    )
    assert isinstance(many, SaveRequest) and many.several
    assert [o.format for o in many.outputs] == ["mp3", "opus"]
    assert many.metadata is not None and many.metadata.title == "Ep 1"
    assert [c.title for c in many.chapters] == ["A", "B"]  # sorted once, here
    preview = render_request(JobRequested(job_id="P", kind="preview", source_key=SOURCE))
    assert isinstance(preview, PreviewRequest) and preview.format == "opus"


def test_requests_that_do_not_pass_fail_with_their_code() -> None:
    save = {"job_id": "J", "kind": "save", "source_key": SOURCE, "format": "mp3"}
    assert _code(JobRequested(**save, recipe={"gainDb": 99})) == "invalid_recipe"
    assert _code(JobRequested(**save, recipe={"trim": {"startMs": 5, "endMs": 1}})) == (
        "invalid_recipe"
    )
    assert _code(JobRequested(**{**save, "format": "exe"})) == "invalid_recipe"
    assert _code(JobRequested(**save, outputs=[{"format": "exe"}])) == "invalid_request"
    assert _code(JobRequested(**save, metadata={"track": 0})) == "invalid_metadata"
    assert _code(JobRequested(job_id="J", kind="save", format="mp3")) == "invalid_request"
    assert _code(JobRequested(job_id="I", kind="ingest", source="upload")) == "invalid_request"
    assert _code(JobRequested(job_id="I", kind="ingest", source="url")) == "invalid_request"


def test_requests_written_by_earlier_versions_are_typed_the_same() -> None:
    lines = (Path(__file__).parent / "data" / "old_events.jsonl").read_text().splitlines()
    requests = [
        e
        for line in lines
        if line and not line.startswith("#")
        for e in [decode_event(line.encode())]
        if isinstance(e, JobRequested)
    ]
    assert len(requests) == 6
    for event in requests:
        typed = ingest_request(event) if event.kind == "ingest" else render_request(event)
        if isinstance(typed, IngestRequest):
            assert typed.source == "upload" and typed.upload_key
        else:
            assert isinstance(typed, SaveRequest) and typed.outputs[0].format == "mp3"
            assert typed.recipe.trim is not None and typed.recipe.trim.start_ms == 500
