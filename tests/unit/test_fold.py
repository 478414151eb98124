"""The fold is pure: each event, replay idempotence, out-of-order sequences ignored."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from audioprep.domain.events import (
    ErrorInfo,
    Event,
    JobCancelled,
    JobCancelRequested,
    JobCompleted,
    JobFailed,
    JobProgressed,
    JobRequested,
    JobResult,
    JobRetrying,
    JobStarted,
)
from audioprep.domain.fold import fold, fold_history
from audioprep.domain.views import JobView

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
JOB = "01JOBAAAAAAAAAAAAAAAAAAAAA"


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def replay(events: list[Event], start_seq: int = 1) -> JobView | None:
    view: JobView | None = None
    for i, event in enumerate(events):
        view = fold(view, event, start_seq + i)
    return view


def happy_path() -> list[Event]:
    return [
        JobRequested(job_id=JOB, kind="ingest", at=at(0), source="upload", upload_key="u/x"),
        JobStarted(job_id=JOB, kind="ingest", at=at(1), attempt=1),
        JobProgressed(job_id=JOB, kind="ingest", at=at(2), progress=40, stage="analysing"),
        JobCompleted(
            job_id=JOB, kind="ingest", at=at(3), result=JobResult(duration_ms=3000), attempt=1
        ),
    ]


def test_requested_creates_pending_view() -> None:
    view = fold(None, happy_path()[0], 7)
    assert view is not None
    assert (view.status, view.progress, view.seq, view.attempt) == ("pending", 0, 7, 0)
    assert view.created_at == view.updated_at == at(0)


def test_each_event_moves_the_view() -> None:
    events = happy_path()
    view = replay(events[:2])
    assert view is not None and view.status == "running" and view.attempt == 1
    view = replay(events[:3])
    assert view is not None and view.progress == 40 and view.stage == "analysing"
    view = replay(events)
    assert view is not None
    assert view.status == "completed" and view.progress == 100
    assert view.result == JobResult(duration_ms=3000)
    assert view.updated_at == at(3) and view.seq == 4


def test_retrying_then_failed() -> None:
    err = ErrorInfo(code="transient_error", message="x", retryable=True)
    events: list[Event] = [
        happy_path()[0],
        JobStarted(job_id=JOB, kind="ingest", at=at(1), attempt=1),
        JobRetrying(job_id=JOB, kind="ingest", at=at(2), attempt=1, error=err, delay_ms=1000),
    ]
    view = replay(events)
    assert view is not None and view.status == "pending" and view.error == err
    failed = JobFailed(
        job_id=JOB, kind="ingest", at=at(3), error=ErrorInfo(code="bad", message="m"), attempt=2
    )
    view = fold(view, failed, 10)
    assert view is not None and view.status == "failed" and view.error is not None
    assert view.error.code == "bad"


def test_cancel_of_pending_job_is_immediate() -> None:
    events: list[Event] = [
        happy_path()[0],
        JobCancelRequested(job_id=JOB, kind="ingest", at=at(1)),
    ]
    view = replay(events)
    assert view is not None and view.status == "cancelled" and view.cancel_requested


def test_cancel_of_running_job_waits_for_worker() -> None:
    events: list[Event] = [
        *happy_path()[:2],
        JobCancelRequested(job_id=JOB, kind="ingest", at=at(2)),
    ]
    view = replay(events)
    assert view is not None and view.status == "running" and view.cancel_requested
    view = fold(view, JobCancelled(job_id=JOB, kind="ingest", at=at(3)), 9)
    assert view is not None and view.status == "cancelled"


def test_terminal_view_does_not_change() -> None:
    view = replay(happy_path())
    late = JobProgressed(job_id=JOB, kind="ingest", at=at(9), progress=50, stage="late")
    after = fold(view, late, 99)
    assert after is not None and view is not None
    assert after.status == "completed" and after.progress == 100 and after.seq == 99


def test_replay_is_idempotent_and_old_sequences_are_skipped() -> None:
    events = happy_path()
    once = replay(events)
    twice = once
    for i, event in enumerate(events):
        twice = fold(twice, event, 1 + i)  # the same sequences again
    assert twice == once
    stale = JobProgressed(job_id=JOB, kind="ingest", at=at(5), progress=10, stage="stale")
    assert fold(once, stale, 2) is once


def test_progress_never_goes_backwards() -> None:
    events = happy_path()[:3]
    view = replay(events)
    lower = JobProgressed(job_id=JOB, kind="ingest", at=at(4), progress=10, stage="analysing")
    view = fold(view, lower, 10)
    assert view is not None and view.progress == 40


def test_stray_event_without_request_is_ignored() -> None:
    assert fold(None, JobStarted(job_id=JOB, kind="ingest", at=at(0)), 1) is None


def test_fold_history_replays_stored_events_in_order() -> None:
    from audioprep.shared.event_store import StoredEvent

    events = happy_path()
    stored = [StoredEvent(seq=10 + i, subject="s", event=e) for i, e in enumerate(events)]
    assert fold_history(stored) == replay(events, start_seq=10)
    assert fold_history([]) is None
