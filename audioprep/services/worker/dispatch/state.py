"""What the dispatcher knows, folded from the job events: who waits, who runs. Pure: the
caller passes the clock; I/O (the stream, releases, KV) lives in `dispatcher.py`.

A job is *waiting* from its request until it is released (fair) or started (fifo); *in
flight* from its release until its terminal event (released, started, between retries): that
is what a tenant's running cap counts. The state can be rebuilt by folding the stream again
from `floor()`, the request of the oldest job not yet ended.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from audioprep.domain.events import Event, JobRequested
from audioprep.domain.kinds import KINDS, TERMINAL_EVENT_NAMES, EventName, Kind
from audioprep.services.worker.dispatch.policy import FairQueue
from audioprep.shared.admission import AdmitReply, AdmitRequest, KindCounts, TenantCounts
from audioprep.shared.tenant_limits import TenantPolicies
from audioprep.shared.usage import TenantDayUsage

Phase = Literal[
    "held",  # a render-cache hit: the API completes it itself; released only if it doesn't
    "waiting",
    "releasing",  # our release is being written
    "released",
    "started",
    "backoff",  # between attempts (the worker consumer redelivers it, not us)
    "limbo",  # our release lost a race: the job's next events say what happened
    "cancelling",  # cancelled while waiting: we write its JobCancelled
]
IN_FLIGHT: frozenset[Phase] = frozenset({"releasing", "released", "started", "backoff"})
NOT_STARTED: frozenset[Phase] = frozenset({"held", "waiting", "releasing", "released"})
CACHE_HIT_HOLD_S = 2.0  # how long a render-cache hit's request waits for its JobCompleted
RESERVATION_S = 10.0  # an admitted request that never appears stops counting after this
DURATION_EWMA = 0.2


@dataclass(slots=True)
class Entry:
    job_id: str
    kind: Kind
    tenant: str
    request_seq: int
    phase: Phase
    hold_until: float = 0.0
    started_at: float | None = None
    traceparent: str | None = None  # the request's, carried onto its release
    attempt_base: int | None = None  # the request's, carried onto its release (not held ones)


@dataclass(frozen=True, slots=True)
class CancelWaiting:
    """A job cancelled before anyone started it: the dispatcher records its JobCancelled
    at once (webhooks and the queue limit don't wait for a worker to meet it)."""

    entry: Entry


@dataclass
class DispatchState:
    policies: TenantPolicies
    window: int = 2
    fair: bool = True
    jobs: dict[str, Entry] = field(default_factory=dict)
    applied_seq: int = 0
    # job → (tenant, until, upload bytes): admitted, its request not folded yet
    reservations: dict[str, tuple[str, float, int]] = field(default_factory=dict)
    in_flight: Counter[str] = field(default_factory=Counter)  # per tenant
    unstarted: Counter[str] = field(default_factory=Counter)  # released, not started, per kind
    released_total: Counter[str] = field(default_factory=Counter)  # per kind, since leading
    run_seconds: dict[str, float] = field(default_factory=dict)  # per kind, moving average

    def __post_init__(self) -> None:
        self.queues: dict[Kind, FairQueue] = {k: FairQueue(self.policies.weight) for k in KINDS}

    # ---- folding events ------------------------------------------------------------------------

    def apply(
        self,
        seq: int,
        kind: Kind,
        job_id: str,
        name: EventName,
        event: Event | None,
        now: float,
        traceparent: str | None = None,
    ) -> CancelWaiting | None:
        """Fold one event (stream order); `event` is decoded only for requests (and the
        events usage is counted from)."""
        if seq <= self.applied_seq:
            return None
        self.applied_seq = seq
        entry = self.jobs.get(job_id)
        if name == "requested":
            if entry is None and isinstance(event, JobRequested):
                self._add(seq, event, now, traceparent)
            return None
        if entry is None:
            return None  # a job that ended before our floor, or never seen
        match name:
            case "released":
                self._set_phase(entry, "released")
            case "started":
                self._set_phase(entry, "started")
                entry.started_at = now
            case "retrying":
                if entry.phase == "started":
                    self._set_phase(entry, "backoff")
            case "cancel_requested":
                # Not started by anyone: it ends now (a worker that meets its release later
                # finds it ended and acks; one already starting it sees the cancel too).
                if entry.phase in ("held", "waiting", "limbo", "released"):
                    self._set_phase(entry, "cancelling")
                    return CancelWaiting(entry)
            case _ if name in TERMINAL_EVENT_NAMES:
                if entry.started_at is not None:
                    took = max(0.0, now - entry.started_at)
                    old = self.run_seconds.get(entry.kind)
                    self.run_seconds[entry.kind] = (
                        took if old is None else old + DURATION_EWMA * (took - old)
                    )
                self._set_phase(entry, None)
                del self.jobs[job_id]
        return None

    def _add(self, seq: int, event: JobRequested, now: float, traceparent: str | None) -> None:
        entry = Entry(
            job_id=event.job_id,
            kind=event.kind,
            tenant=event.tenant,
            request_seq=seq,
            phase="held" if event.from_cache else "waiting",
            hold_until=now + CACHE_HIT_HOLD_S if event.from_cache else 0.0,
            traceparent=traceparent,
            attempt_base=None if event.from_cache else event.attempt_base,
        )
        self.jobs[event.job_id] = entry
        self.reservations.pop(event.job_id, None)
        if entry.phase == "waiting":
            self.queues[entry.kind].push(entry.tenant, entry.job_id)

    def _set_phase(self, entry: Entry, phase: Phase | None) -> None:
        """Move a job between phases, keeping the queue and the counters in step."""
        old = entry.phase
        if old == phase:
            return
        if old == "waiting":
            self.queues[entry.kind].remove(entry.tenant, entry.job_id)
        if old in IN_FLIGHT:
            self.in_flight[entry.tenant] -= 1
        if old in ("releasing", "released"):
            self.unstarted[entry.kind] -= 1
        if phase is None:
            return
        entry.phase = phase
        if phase in IN_FLIGHT:
            self.in_flight[entry.tenant] += 1
        if phase in ("releasing", "released"):
            self.unstarted[entry.kind] += 1

    # ---- time ----------------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Render-cache hits whose completion never came become normal jobs; stale
        reservations stop counting."""
        for entry in self.jobs.values():
            if entry.phase == "held" and now >= entry.hold_until:
                entry.phase = "waiting"
                self.queues[entry.kind].push(entry.tenant, entry.job_id)
        for job_id, (_, until, _) in list(self.reservations.items()):
            if now >= until:
                del self.reservations[job_id]

    # ---- releasing (fair mode) -----------------------------------------------------------------

    def next_release(self, kind: Kind) -> Entry | None:
        """The next job of `kind` to let go, marked `releasing`; None when the window is full
        or every tenant with waiting jobs is at its running cap."""
        if not self.fair or self.unstarted[kind] >= self.window:
            return None

        def under_cap(tenant: str) -> bool:
            cap = self.policies.max_running(tenant)
            return cap is None or self.in_flight[tenant] < cap

        picked = self.queues[kind].pick(under_cap)
        if picked is None:
            return None
        entry = self.jobs[picked[1]]
        entry.phase = "limbo"  # out of the queue already (pick popped it)
        self._set_phase(entry, "releasing")
        self.released_total[kind] += 1
        return entry

    def release_done(self, entry: Entry, ok: bool) -> None:
        """Our JobReleased was written (ok), or the job had moved on (it waits in limbo for
        its next event: its own release by another dispatcher, a cancel, a cache answer)."""
        if entry.phase == "releasing" and self.jobs.get(entry.job_id) is entry:
            self._set_phase(entry, "released" if ok else "limbo")

    def release_failed(self, entry: Entry) -> None:
        """Writing the release failed (NATS trouble): put the job back at its tenant's head."""
        if entry.phase != "releasing" or self.jobs.get(entry.job_id) is not entry:
            return
        self._set_phase(entry, "limbo")
        entry.phase = "waiting"
        queue = self.queues[entry.kind]
        queue.push(entry.tenant, entry.job_id)  # at the tail: order within the tenant may shift

    # ---- answers -------------------------------------------------------------------------------

    def floor(self) -> int:
        """Where a rebuild starts: the oldest open job's request (or the next event)."""
        oldest = min((e.request_seq for e in self.jobs.values()), default=None)
        return oldest if oldest is not None else self.applied_seq + 1

    def queued(self, tenant: str) -> int:
        """Jobs of the tenant not started yet, reservations included."""
        mine = sum(1 for e in self.jobs.values() if e.tenant == tenant and e.phase in NOT_STARTED)
        return mine + sum(1 for t, _, _ in self.reservations.values() if t == tenant)

    def position(self, job_id: str) -> int | None:
        """Jobs of its kind that start before it (an estimate); None once it is not waiting."""
        entry = self.jobs.get(job_id)
        if entry is None:
            return None
        if entry.phase == "released":
            return 0
        if entry.phase not in ("waiting", "held"):
            return None
        if not self.fair:  # arrival order across tenants
            return sum(
                1
                for e in self.jobs.values()
                if e.kind == entry.kind
                and e.phase == "waiting"
                and e.request_seq < entry.request_seq
            )
        ahead = self.queues[entry.kind].position(entry.tenant, entry.job_id)
        return self.unstarted[entry.kind] + (ahead or 0)

    def counts(self) -> dict[str, TenantCounts]:
        out: dict[str, TenantCounts] = {}
        for entry in self.jobs.values():
            counts = out.setdefault(entry.tenant, TenantCounts())
            if entry.phase in ("held", "waiting"):
                counts.waiting += 1
            elif entry.phase in ("releasing", "released"):
                counts.released += 1
            elif entry.phase in ("started", "backoff"):
                counts.running += 1
        return out

    def kind_counts(self) -> dict[str, KindCounts]:
        return {
            kind: KindCounts(
                waiting=len(self.queues[kind]),
                unstarted=self.unstarted[kind],
                released=self.released_total[kind],
            )
            for kind in KINDS
        }

    def admit(
        self, request: AdmitRequest, today: TenantDayUsage | None, now: float, midnight_s: float
    ) -> AdmitReply:
        """Queue limit and daily quotas for one submit; an admitted job is reserved until its
        request shows up (so concurrent submits can't all squeeze past the limit)."""
        retry_midnight = max(1, math.ceil(midnight_s))
        if request.max_processing_s_per_day is not None and today is not None:
            used = today.processing_ms / 1000
            if used >= request.max_processing_s_per_day:
                return AdmitReply(
                    ok=False,
                    code="quota_exceeded",
                    detail=(
                        f"processing quota used up for today ({used:.1f} of "
                        f"{request.max_processing_s_per_day:g} s); it resets at 00:00 UTC"
                    ),
                    retry_after_s=retry_midnight,
                    quota="processing_s_per_day",
                )
        if request.max_upload_bytes_per_day is not None:
            # admitted uploads whose request is not folded yet count too: a second upload
            # right after a first one's 202 must not squeeze past the quota
            uploaded = (today.upload_bytes if today is not None else 0) + sum(
                b for t, _, b in self.reservations.values() if t == request.tenant
            )
            if uploaded + request.upload_bytes > request.max_upload_bytes_per_day:
                return AdmitReply(
                    ok=False,
                    code="quota_exceeded",
                    detail=(
                        f"upload quota for today would be exceeded ({uploaded} + "
                        f"{request.upload_bytes} of {request.max_upload_bytes_per_day} bytes); "
                        "it resets at 00:00 UTC"
                    ),
                    retry_after_s=retry_midnight,
                    quota="upload_bytes_per_day",
                )
        queued = self.queued(request.tenant)
        if request.max_queued is not None and queued >= request.max_queued:
            return AdmitReply(
                ok=False,
                code="tenant_queue_full",
                detail=f"{queued} jobs are waiting for this tenant (limit {request.max_queued})",
                retry_after_s=self._retry_after(request.tenant, request.kind),
                queued=queued,
            )
        if request.reserve and request.job_id not in self.jobs:
            self.reservations[request.job_id] = (
                request.tenant,
                now + RESERVATION_S,
                request.upload_bytes,
            )
        return AdmitReply(ok=True, queued=queued + 1)

    def _retry_after(self, tenant: str, kind: str) -> int:
        """About when one of the tenant's jobs will have started: a run time over what runs."""
        took = self.run_seconds.get(kind, 1.0)
        running = max(1, self.in_flight[tenant])
        return max(1, min(60, math.ceil(took / running)))
