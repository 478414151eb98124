"""The pure fold: (view | None, event, seq) -> view. No I/O; replaying gives the same view."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import msgspec

from audioprep.domain.events import (
    Event,
    JobCancelled,
    JobCancelRequested,
    JobCompleted,
    JobFailed,
    JobProgressed,
    JobRequested,
    JobRetrying,
    JobStarted,
)
from audioprep.domain.views import JobView


class Sequenced(Protocol):
    """An event with its stream sequence (audioprep.shared.event_store.StoredEvent)."""

    @property
    def seq(self) -> int: ...

    @property
    def event(self) -> Event: ...


def fold_history(history: Iterable[Sequenced]) -> JobView | None:
    """A job's view from its events in stream order: the projector's fold, replayed."""
    view: JobView | None = None
    for stored in history:
        view = fold(view, stored.event, stored.seq)
    return view


def fold(view: JobView | None, event: Event, seq: int) -> JobView | None:
    """Apply one event at stream sequence `seq`; events not newer than the view are skipped."""
    if view is not None and seq <= view.seq:
        return view
    if view is None:
        if not isinstance(event, JobRequested):
            return None  # a job's history starts with JobRequested; ignore strays
        return JobView(
            job_id=event.job_id,
            kind=event.kind,
            status="pending",
            progress=0,
            stage="queued",
            attempt=0,
            created_at=event.at,
            updated_at=event.at,
            seq=seq,
            tenant=event.tenant,
        )
    if view.is_terminal:
        return msgspec.structs.replace(view, seq=seq)  # nothing changes a finished job
    changes: dict[str, object] = {"seq": seq, "updated_at": event.at}
    match event:
        case JobRequested():
            pass  # a duplicate request can't change the job (create-once makes it rare)
        case JobStarted(attempt=attempt):
            changes.update(status="running", stage="started", attempt=attempt, error=None)
        case JobProgressed(progress=progress, stage=stage):
            changes.update(
                status="running", progress=max(view.progress, min(100, progress)), stage=stage
            )
        case JobRetrying(attempt=attempt, error=error):
            changes.update(status="pending", stage="retrying", attempt=attempt, error=error)
        case JobCompleted(result=result, attempt=attempt):
            changes.update(
                status="completed",
                progress=100,
                stage="done",
                result=result,
                error=None,
                attempt=max(view.attempt, attempt),
            )
        case JobFailed(error=error):
            changes.update(status="failed", stage="failed", error=error)
        case JobCancelRequested():
            changes.update(cancel_requested=True)
            if view.status == "pending" and view.attempt == 0:
                # Nobody has started it: the job is cancelled as soon as it is asked.
                changes.update(status="cancelled", stage="cancelled")
        case JobCancelled():
            changes.update(status="cancelled", stage="cancelled")
    return msgspec.structs.replace(view, **changes)
