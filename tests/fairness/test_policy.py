"""The pure parts of fair dispatch: weighted round robin, caps, positions, the fold of events
into waiting/in-flight jobs, admission answers, limits parsing, old events decoding."""

from __future__ import annotations

from collections import Counter

import pytest

from audioprep.domain.events import (
    JobCompleted,
    JobRequested,
    JobResult,
    JobUsage,
    decode_event,
    encode_event,
)
from audioprep.domain.kinds import EventName, Kind
from audioprep.services.worker.dispatch.policy import FairQueue
from audioprep.services.worker.dispatch.state import CancelWaiting, DispatchState
from audioprep.shared.admission import AdmitRequest
from audioprep.shared.settings import Settings
from audioprep.shared.tenant_limits import TenantLimits, TenantPolicies, parse_api_key_file
from audioprep.shared.usage import TenantDayUsage, usage_of


def drain(queue: FairQueue, n: int | None = None) -> list[str]:
    out: list[str] = []
    while (n is None or len(out) < n) and (picked := queue.pick()) is not None:
        out.append(picked[0])
    return out


def test_equal_weights_alternate_and_a_newcomer_goes_next() -> None:
    queue = FairQueue(lambda _: 1)
    for i in range(6):
        queue.push("a", f"a{i}")
    assert drain(queue, 2) == ["a", "a"]  # alone: a takes what there is
    for i in range(3):
        queue.push("b", f"b{i}")
    # b arrives behind four of a's jobs and is served next, then they alternate
    assert drain(queue) == ["b", "a", "b", "a", "b", "a", "a"]


def test_weights_share_three_to_one_while_both_wait() -> None:
    weights = {"a": 3, "b": 1}
    queue = FairQueue(lambda t: weights[t])
    for i in range(40):
        queue.push("a", f"a{i}")
        queue.push("b", f"b{i}")
    first = drain(queue, 20)
    assert Counter(first) == {"a": 15, "b": 5}
    # every window of 4 picks has exactly one of b's
    assert all(first[i : i + 4].count("b") == 1 for i in range(0, 20, 4))


def test_an_idle_tenant_earns_no_credit() -> None:
    queue = FairQueue(lambda _: 1)
    queue.push("b", "b0")
    assert drain(queue) == ["b"]
    for i in range(10):
        queue.push("a", f"a{i}")
    assert drain(queue, 5) == ["a"] * 5  # b is away: a runs alone
    for i in range(4):
        queue.push("b", f"b{i + 1}")
    # b comes back at the current virtual time: alternation, not a burst of four
    assert drain(queue, 6) == ["b", "a", "b", "a", "b", "a"]


def test_a_tenant_at_its_cap_is_skipped_not_blocking() -> None:
    queue = FairQueue(lambda _: 1)
    for i in range(5):
        queue.push("a", f"a{i}")
    queue.push("b", "b0")
    assert queue.pick(lambda t: t != "a") == ("b", "b0")
    assert queue.pick(lambda t: t != "a") is None
    assert queue.pick() == ("a", "a0")


def test_position_matches_the_order_picks_take() -> None:
    weights = {"a": 2, "b": 1, "c": 1}

    def build() -> FairQueue:
        queue = FairQueue(lambda t: weights[t])
        for i in range(7):
            queue.push("a", f"a{i}")
        drain(queue, 1)
        for i in range(3):
            queue.push("b", f"b{i}")
            queue.push("c", f"c{i}")
        return queue

    queue, probe = build(), build()
    order = []
    while (picked := probe.pick()) is not None:
        order.append(picked[1])
    assert len(order) == 12
    for position, job_id in enumerate(order):
        assert queue.position(job_id[0], job_id) == position, job_id
    assert queue.position("a", "nope") is None


# ---- the fold ----------------------------------------------------------------------------------

POLICIES = TenantPolicies(tenants={"a": TenantLimits(max_running=1)})


class Feed:
    """Events into a DispatchState, with stream sequences."""

    def __init__(self, state: DispatchState) -> None:
        self.state = state
        self.seq = 0

    def request(self, job_id: str, tenant: str, kind: Kind = "save", **kw: object) -> None:
        self.seq += 1
        event = JobRequested(job_id=job_id, kind=kind, tenant=tenant, **kw)  # type: ignore[arg-type]
        self.state.apply(self.seq, kind, job_id, "requested", event, 0.0)

    def event(self, job_id: str, name: EventName, kind: Kind = "save") -> CancelWaiting | None:
        self.seq += 1
        return self.state.apply(self.seq, kind, job_id, name, None, 0.0)


def release_all(state: DispatchState, kind: Kind = "save") -> list[str]:
    out = []
    while (entry := state.next_release(kind)) is not None:
        state.release_done(entry, True)
        out.append(entry.job_id)
    return out


def test_running_cap_and_window_decide_what_is_released() -> None:
    state = DispatchState(policies=POLICIES, window=2)
    feed = Feed(state)
    for i in range(3):
        feed.request(f"a{i}", "a")
    feed.request("b0", "b")
    feed.request("b1", "b")
    # a is capped at 1 in flight; the window lets two go before anything starts
    assert release_all(state) == ["a0", "b0"]
    feed.event("a0", "started")
    assert release_all(state) == ["b1"]  # a still at its cap
    feed.event("b0", "started")
    assert release_all(state) == []  # the window holds b1; a is capped
    feed.event("a0", "completed")
    assert release_all(state) == ["a1"]
    assert state.counts()["a"].waiting == 1 and state.in_flight["a"] == 1


def test_floor_is_the_oldest_open_request_and_a_cancel_ends_a_waiting_job() -> None:
    state = DispatchState(policies=TenantPolicies(), window=1)
    feed = Feed(state)
    feed.request("x", "a")
    feed.request("y", "a")
    assert state.floor() == 1
    assert release_all(state) == ["x"]
    effect = feed.event("y", "cancel_requested")
    assert isinstance(effect, CancelWaiting) and effect.entry.job_id == "y"
    assert release_all(state) == []  # y is not released any more
    feed.event("x", "started")
    assert feed.event("x", "cancel_requested") is None  # running: its worker stops it
    feed.event("x", "completed")
    assert state.floor() == 2  # y is open until its JobCancelled
    feed.event("y", "cancelled")
    assert state.floor() == feed.seq + 1 and not state.jobs


def test_a_lost_release_race_waits_for_the_jobs_next_event() -> None:
    state = DispatchState(policies=TenantPolicies(), window=2)
    feed = Feed(state)
    feed.request("x", "a")
    entry = state.next_release("save")
    assert entry is not None
    state.release_done(entry, False)  # another dispatcher (or a cancel) got there first
    assert state.unstarted["save"] == 0 and state.in_flight["a"] == 0
    feed.event("x", "released")  # it was released elsewhere: in flight now
    assert state.in_flight["a"] == 1


def test_fifo_mode_releases_nothing_and_counts_arrival_order() -> None:
    state = DispatchState(policies=TenantPolicies(), window=2, fair=False)
    feed = Feed(state)
    feed.request("a0", "a")
    feed.request("b0", "b")
    feed.request("a1", "a")
    assert state.next_release("save") is None
    assert [state.position(j) for j in ("a0", "b0", "a1")] == [0, 1, 2]
    feed.event("a0", "started")  # a worker took it straight from the request
    assert state.position("b0") == 0 and state.in_flight["a"] == 1


def test_render_cache_hits_are_held_back() -> None:
    state = DispatchState(policies=TenantPolicies(), window=2)
    feed = Feed(state)
    feed.request("p", "a", kind="preview", from_cache=True)
    assert state.next_release("preview") is None
    feed.event("p", "completed", kind="preview")
    assert not state.jobs
    feed.request("q", "a", kind="preview", from_cache=True)  # the API died before completing
    state.tick(10.0)
    assert release_all(state, "preview") == ["q"]


def test_admission_queue_limit_reserves_and_quotas_refuse() -> None:
    state = DispatchState(policies=TenantPolicies(), window=1)
    feed = Feed(state)
    feed.request("x", "a")
    ask = AdmitRequest(job_id="y", tenant="a", kind="save", max_queued=2)
    assert state.admit(ask, None, 0.0, 100.0).ok  # 1 waiting, y reserved
    second = AdmitRequest(job_id="z", tenant="a", kind="save", max_queued=2)
    refused = state.admit(second, None, 0.0, 100.0)
    assert not refused.ok and refused.code == "tenant_queue_full" and refused.retry_after_s >= 1
    state.tick(60.0)  # y never showed up: its reservation lapses
    assert state.admit(second, None, 60.0, 100.0).ok
    used = TenantDayUsage(date="2026-12-01", tenant="a", processing_ms=5000, upload_bytes=900)
    quota = AdmitRequest(job_id="q", tenant="a", kind="save", max_processing_s_per_day=5.0)
    answer = state.admit(quota, used, 0.0, 3600.4)
    assert (answer.ok, answer.code, answer.retry_after_s) == (False, "quota_exceeded", 3601)
    up = AdmitRequest(
        job_id="u", tenant="a", kind="ingest", max_upload_bytes_per_day=1000, upload_bytes=100
    )
    assert state.admit(up, used, 0.0, 10.0).ok
    up_more = AdmitRequest(
        job_id="v", tenant="a", kind="ingest", max_upload_bytes_per_day=1000, upload_bytes=101
    )
    assert state.admit(up_more, used, 0.0, 10.0).code == "quota_exceeded"


def test_an_admitted_upload_counts_against_the_quota_before_its_request_is_folded() -> None:
    """Two uploads one after the other: the first's bytes count from its admission on (its
    JobRequested may not be folded yet when the second asks), once, not twice after."""
    state = DispatchState(policies=TenantPolicies(), window=1)
    feed = Feed(state)

    def upload(job_id: str) -> AdmitRequest:
        return AdmitRequest(
            job_id=job_id, tenant="b", kind="ingest", max_upload_bytes_per_day=150, upload_bytes=100
        )

    assert state.admit(upload("u1"), None, 0.0, 10.0).ok
    refused = state.admit(upload("u2"), None, 0.0, 10.0)
    assert (refused.ok, refused.code, refused.quota) == (
        False,
        "quota_exceeded",
        "upload_bytes_per_day",
    )
    # folded: the usage says 100 bytes now and the reservation is gone (not counted twice)
    feed.request("u1", "b", kind="ingest", upload_bytes=100)
    counted = TenantDayUsage(date="2026-12-01", tenant="b", upload_bytes=100)
    small = AdmitRequest(
        job_id="u3", tenant="b", kind="ingest", max_upload_bytes_per_day=150, upload_bytes=50
    )
    assert state.admit(small, counted, 0.0, 10.0).ok
    state.tick(60.0)  # u3 never showed up: its bytes stop counting with its reservation
    assert state.admit(small, counted, 60.0, 10.0).ok


# ---- settings, events --------------------------------------------------------------------------


def test_keys_file_options_and_environment_defaults() -> None:
    settings = Settings.from_env(
        {
            "AUDIOPREP_API_KEYS": "k1=acme weight=3 max_queued=5 max_upload_bytes_per_day=2G,"
            "k2=ops admin,k3=acme max_processing_s_per_day=2h,k4=solo max_running=none",
            "AUDIOPREP_TENANT_MAX_RUNNING": "4",
            "AUDIOPREP_TENANT_WEIGHTS": "beta=2",
        }
    )
    p = settings.tenant_policies
    assert settings.api_keys == {"k1": "acme", "k2": "ops", "k3": "acme", "k4": "solo"}
    assert settings.admin_keys == {"k2"}
    assert p.of("acme") == TenantLimits(
        weight=3,
        max_running=4,
        max_queued=5,
        max_upload_bytes_per_day=2 * 1024**3,
        max_processing_s_per_day=7200.0,
    )
    assert p.of("beta").weight == 2 and p.of("nobody") == TenantLimits(max_running=4)
    assert p.of("solo").max_running is None and p.any_admission
    assert settings.dispatch == "fair"
    for bad in ("k=a weight=0", "k=a max_queued=-1", "k=a colour=red", "k=a weight=2,j=a weight=3"):
        with pytest.raises(ValueError):
            parse_api_key_file(bad)
            Settings.from_env({"AUDIOPREP_API_KEYS": bad})
    with pytest.raises(ValueError, match="AUDIOPREP_DISPATCH"):
        Settings.from_env({"AUDIOPREP_DISPATCH": "lifo"})


def test_old_events_decode_and_usage_defaults_to_nothing() -> None:
    old_done = (
        b'{"type":"JobCompleted","jobId":"A1","kind":"save","at":"2026-01-01T00:00:00Z",'
        b'"tenant":"t","result":{"durationMs":5}}'
    )
    event = decode_event(old_done)
    assert isinstance(event, JobCompleted) and event.usage is None
    counted = usage_of(event)
    assert counted is not None and counted[0] == "2026-01-01.t"
    assert counted[1].completed == 1 and counted[1].processing_ms == 0
    old_request = b'{"type":"JobRequested","jobId":"A1","kind":"ingest","source":"upload"}'
    request = decode_event(old_request)
    assert isinstance(request, JobRequested) and request.upload_bytes is None
    new = JobCompleted(
        job_id="A1",
        kind="save",
        result=JobResult(duration_ms=5),
        usage=JobUsage(processing_ms=12, output_audio_ms=5, bytes_stored=7),
    )
    assert decode_event(encode_event(new)) == new
    assert b'"usage":{"processingMs":12,"outputAudioMs":5,"bytesStored":7}' in encode_event(new)
