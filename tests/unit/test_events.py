"""Events round-trip through JSON and old payloads still decode."""

from __future__ import annotations

import json

import msgspec
import pytest

from audioprep.domain.events import (
    ErrorInfo,
    JobCompleted,
    JobFailed,
    JobRequested,
    JobResult,
    LoudnessInfo,
    decode_event,
    encode_event,
)
from audioprep.shared.ids import idempotent_job_id, is_job_id, new_job_id
from audioprep.shared.names import Names

NAMES = Names()  # the default prefix: what `audioprep up` uses


def test_round_trip_every_shape() -> None:
    events = [
        JobRequested(job_id="A1", kind="ingest", source="url", url="https://x.test/a.mp3"),
        JobRequested(job_id="A2", kind="save", source_key="sources/A1/a.wav", recipe={"gainDb": 3}),
        JobCompleted(
            job_id="A1",
            kind="ingest",
            result=JobResult(duration_ms=1, loudness=LoudnessInfo(integrated_lufs=-23.0)),
        ),
        JobFailed(job_id="A1", kind="ingest", error=ErrorInfo(code="c", message="m")),
    ]
    for event in events:
        assert decode_event(encode_event(event)) == event


def test_payload_is_compact_camel_case_json_with_iso_time() -> None:
    event = JobRequested(job_id="A1", kind="ingest", source="upload", upload_key="uploads/A1/x")
    doc = json.loads(encode_event(event))
    assert doc["type"] == "JobRequested"
    assert doc["jobId"] == "A1" and doc["uploadKey"] == "uploads/A1/x"
    assert doc["at"].endswith("Z") or "+00:00" in doc["at"]
    assert "url" not in doc  # unset optionals are left out


def test_old_event_without_new_fields_decodes() -> None:
    old = b'{"type":"JobStarted","jobId":"A1","kind":"save","at":"2026-01-01T00:00:00Z"}'
    event = decode_event(old)
    assert event.tenant == "default" and event.v == 1


def test_garbage_is_rejected() -> None:
    with pytest.raises(msgspec.DecodeError):
        decode_event(b'{"type":"Nope","jobId":"x","kind":"ingest"}')


def test_subjects_are_built_and_parsed_in_one_place() -> None:
    job_id = new_job_id()
    subject = NAMES.event_subject("save", job_id, "completed")
    assert subject == f"jobs.save.{job_id}.completed"
    assert NAMES.parse_subject(subject) == ("save", job_id, "completed")
    with pytest.raises(ValueError):
        NAMES.event_subject("save", "a.b", "completed")
    with pytest.raises(ValueError):
        NAMES.event_subject("save", "a*", "completed")


def test_job_ids_sort_by_time_and_idempotent_ids_are_stable() -> None:
    assert new_job_id(1000) < new_job_id(2000)
    assert is_job_id(new_job_id())
    assert idempotent_job_id("t", "k") == idempotent_job_id("t", "k")
    assert idempotent_job_id("t", "k") != idempotent_job_id("u", "k")
    assert is_job_id(idempotent_job_id("t", "k"))


def test_events_written_by_earlier_versions_still_decode_and_fold() -> None:
    """tests/unit/data/old_events.jsonl: events encoded by the events module of three earlier
    commits (the first, the media pipeline, idempotency fingerprints)."""
    from pathlib import Path

    from audioprep.domain.fold import fold_history
    from audioprep.shared.event_store import StoredEvent

    lines = (Path(__file__).parent / "data" / "old_events.jsonl").read_text().splitlines()
    batches: list[list[bytes]] = []
    for line in lines:
        if line.startswith("#"):
            batches.append([])
        elif line:
            batches[-1].append(line.encode())
    assert len(batches) == 3
    for batch in batches:
        decoded = [decode_event(raw) for raw in batch]
        assert all(e.v == 1 and e.tenant == "default" for e in decoded)
        history = [StoredEvent(seq=i + 1, subject="", event=e) for i, e in enumerate(decoded)]
        ingest = fold_history(s for s in history if s.event.kind == "ingest")
        assert ingest is not None and ingest.status == "completed"
        assert ingest.result is not None and ingest.result.duration_ms == 3000
        save = fold_history(s for s in history if s.event.kind == "save")
        assert save is not None and save.status == "failed"  # the failure ended it first
        requested = decoded[4]
        assert isinstance(requested, JobRequested) and requested.recipe == {
            "trim": {"startMs": 500},
            "normalize": {"targetLufs": -16},
        }


def test_a_prefix_moves_every_name_and_parsing_follows() -> None:
    job_id = new_job_id()
    plain, mine = Names(), Names("t1")
    assert (plain.stream, mine.stream) == ("JOBS", "t1_JOBS")
    assert mine.jobs_bucket == "t1_jobs" and mine.webhooks_stream == "t1_WEBHOOKS"
    subject = mine.event_subject("preview", job_id, "requested")
    assert subject == f"t1.jobs.preview.{job_id}.requested"
    assert mine.parse_subject(subject) == ("preview", job_id, "requested")
    assert mine.max_deliveries_advisory.endswith(".t1_JOBS.>")
    with pytest.raises(ValueError):
        plain.parse_subject(subject)  # another deployment's subject is not ours
    with pytest.raises(ValueError):
        Names("a.b")
