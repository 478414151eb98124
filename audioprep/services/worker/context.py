"""What a job handler gets: the request, storage, progress reporting and a scratch dir."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from audioprep.domain.errors import Superseded
from audioprep.domain.events import JobProgressed, JobRequested
from audioprep.shared import logs
from audioprep.shared.event_store import EventStore
from audioprep.shared.settings import Settings
from audioprep.shared.storage import Storage

log = logging.getLogger("audioprep.worker")

PROGRESS_MIN_INTERVAL_S = 0.25


class ProgressRelay:
    """Maps a media call's 0..1 fraction onto [low, high] percent and relays its stages."""

    def __init__(self, ctx: JobContext, low: float, high: float, stage: str) -> None:
        self._ctx, self._low, self._high, self._stage = ctx, low, high, stage
        self._pct = low

    def fraction(self, fraction: float) -> None:
        self._pct = self._low + (self._high - self._low) * max(0.0, min(1.0, fraction))
        self._ctx._report(self._pct, self._stage)

    def stage(self, name: str) -> None:
        """A new pass began: say so at once (progress alone would look stuck)."""
        self._stage = name
        self._ctx._report(self._pct, name, force=True)


@dataclass(kw_only=True)
class JobContext:
    """Per-job services and state; progress is throttled to about 4 events a second."""

    request: JobRequested
    attempt: int
    settings: Settings
    storage: Storage
    events: EventStore
    js: JetStreamContext
    scratch: Path
    traceparent: str | None = None
    # The sequence of this attempt's latest event while every event of the job since the
    # delivered message is this attempt's own (each appended expecting the previous one);
    # None once something else may have come between. While it holds, the terminal event
    # needs no reads to be the job's only one (job_runner.py).
    own_seq: int | None = None
    # Metering (docs/fairness.md): set by the handlers, reported on the completed event.
    input_audio_ms: int = 0
    stored_bytes: int = 0
    _last_progress_at: float = 0.0
    _last_progress: int = -1
    _progress_task: asyncio.Task[None] | None = None

    @property
    def job_id(self) -> str:
        return self.request.job_id

    def log_extra(self, **more: object) -> dict[str, object]:
        extra: dict[str, object] = {
            "job_id": self.job_id,
            "kind": self.request.kind,
            "attempt": self.attempt,
        }
        if trace_id := logs.trace_id_of(self.traceparent):
            extra["trace_id"] = trace_id
        extra.update(more)
        return extra

    async def store_unless_ended(self) -> None:
        """Call before writing outputs to their (deterministic) keys: raises Superseded when
        the job already has a terminal event, i.e. another attempt finished it while this one
        ran, so a late attempt can't replace the files that event describes. When NATS can't
        answer, the write goes ahead (as before this check): the end-once append still
        decides which attempt is recorded."""
        try:
            if self.own_seq is not None:
                # Every event since the delivery is ours (none an end): if our last one is
                # still the job's latest, nothing ended it since. One read instead of three.
                latest = await self.events.last_event(self.job_id)
                if latest is not None and latest.seq == self.own_seq:
                    return
            ended = await self.events.terminal_event(self.job_id)
        except (NatsError, TimeoutError) as exc:
            log.warning("job end not checked", extra=self.log_extra(error=repr(exc)))
            return
        if ended is not None:
            raise Superseded(f"the job already ended ({ended.event.name}, seq {ended.seq})")

    async def progress(self, percent: float, stage: str, *, force: bool = False) -> None:
        """Emit JobProgressed when the value moved and enough time passed (or forced)."""
        pct = max(0, min(99, int(percent)))
        now = time.monotonic()
        if not force and (
            pct == self._last_progress or now - self._last_progress_at < PROGRESS_MIN_INTERVAL_S
        ):
            return
        self._last_progress_at = now
        self._last_progress = pct
        event = JobProgressed(
            job_id=self.job_id,
            kind=self.request.kind,
            tenant=self.request.tenant,
            progress=pct,
            stage=stage,
            attempt=self.attempt,
        )
        try:
            await self.append_own(event)
        except (NatsError, TimeoutError) as exc:  # best effort; the job itself goes on
            log.warning("progress not published", extra=self.log_extra(error=str(exc)))

    async def append_own(self, event: JobProgressed) -> int:
        """Append one of this attempt's events right after its previous one (keeping
        `own_seq`), or, once another event came between, as any append."""
        expected = self.own_seq
        if expected is not None:
            seq = await self.events.append_expecting(event, expected, traceparent=self.traceparent)
            if seq is not None and self.own_seq == expected:
                self.own_seq = seq
                return seq
            self.own_seq = None
            if seq is not None:
                return seq
        return await self.events.append(event, traceparent=self.traceparent)

    def announce(self, percent: float, stage: str) -> None:
        """A new stage, published in the background: in order after any publish in flight,
        and before the terminal event (which waits for it), without holding up the work."""
        self._report(max(0, min(99, int(percent))), stage, force=True)

    def progress_callback(self, low: float, high: float, stage: str) -> Callable[[float], None]:
        """A sync callback mapping a 0..1 fraction onto [low, high] percent (media processes)."""
        return self.progress_relay(low, high, stage).fraction

    def progress_relay(self, low: float, high: float, stage: str) -> ProgressRelay:
        """Fraction and stage callbacks for a media call with several passes."""
        return ProgressRelay(self, low, high, stage)

    def _report(self, pct: float, stage: str, *, force: bool = False) -> None:
        if not force and self._progress_task is not None and not self._progress_task.done():
            return  # one publish in flight at a time; the next report catches up
        previous = self._progress_task

        async def publish() -> None:
            if previous is not None and force:
                await asyncio.gather(previous, return_exceptions=True)
            await self.progress(pct, stage, force=force)

        self._progress_task = asyncio.get_running_loop().create_task(publish())

    async def flush_progress(self) -> None:
        """Wait for a progress publish still in flight (before the terminal event)."""
        if self._progress_task is not None:
            await asyncio.gather(self._progress_task, return_exceptions=True)
