"""kill -9 of the notifier: nothing lost, and no second success under one webhook-id.

Receivers answer 5xx while the notifier is killed (mid-retry, and mid-burst of fresh job ends,
with deliveries being created and attempted), so no 2xx can be in flight at the kill: the
at-least-once window between a receiver's 2xx and the attempt's record (docs/webhooks.md)
is outside what these tests assert. Afterwards each delivery must reach the receiver exactly
once with a 2xx, and every job end must have its delivery.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from nats.aio.client import Client

from audioprep.shared.settings import Settings
from tests.webhooks.conftest import (
    NotifierProcess,
    Receiver,
    api_client,
    end_job,
    register,
    tenant_of,
    wait_delivery,
)


def _successes(receiver: Receiver) -> Counter[str]:
    return Counter(r.webhook_id for r in receiver.ok())


async def test_sigkill_mid_retry_still_delivers_exactly_once(
    wh: Settings, nc: Client, receiver: Receiver, tmp_path: Path
) -> None:
    receiver.default = 500
    proc = NotifierProcess(wh, tmp_path / "notifier.log").start()
    async with api_client(wh) as client:
        created = await register(client, wh, receiver.url)
        receiver.secret = created["secret"]
        tenant = tenant_of(wh)
        jobs = [await end_job(nc, tenant) for _ in range(5)]
        await wait_delivery(client, wh, created["id"], status="retrying", count=5)
        proc.kill()  # mid-retry: every delivery is waiting for its next attempt
        kills = 1
        await receiver.quiesce()  # what the killed notifier sent is answered 500 first
        receiver.default = 200
        proc.start()
        delivered = await wait_delivery(client, wh, created["id"], status="delivered", count=5)
        assert sorted(d["jobId"] for d in delivered) == sorted(jobs)
        assert all(d["attempts"] >= 2 for d in delivered)
    successes = _successes(receiver)
    assert len(successes) == 5 and set(successes.values()) == {1}, successes
    assert all(r.verified for r in receiver.snapshot())
    print(f"\nmid-retry: jobs=5 kills={kills} requests={len(receiver.snapshot())} successes=5")
    assert proc.stop() == 0


async def test_sigkill_during_a_burst_loses_nothing(
    wh: Settings, nc: Client, receiver: Receiver, tmp_path: Path
) -> None:
    receiver.default = 503
    proc = NotifierProcess(wh, tmp_path / "notifier.log").start()
    async with api_client(wh) as client:
        created = await register(client, wh, receiver.url)
        receiver.secret = created["secret"]
        tenant = tenant_of(wh)
        jobs = []
        kills = 0
        for i in range(30):
            jobs.append(await end_job(nc, tenant, outcome=("completed", "failed")[i % 2]))
            if i in (9, 19):  # fan-out and first attempts are under way
                await receiver.wait_for(1)
                proc.kill()
                kills += 1
                proc.start()
        await receiver.wait_for(30)  # every job end has been tried at least once (a 503)
        proc.kill()
        kills += 1
        await receiver.quiesce()  # what the killed notifier sent is answered 503 first
        receiver.default = 200
        proc.start()
        delivered = await wait_delivery(
            client, wh, created["id"], status="delivered", count=30, timeout=30
        )
        assert sorted(d["jobId"] for d in delivered) == sorted(jobs)
    successes = _successes(receiver)
    assert len(successes) == 30 and set(successes.values()) == {1}, successes
    assert all(r.verified for r in receiver.snapshot())
    print(
        f"\nburst: jobs=30 kills={kills} requests={len(receiver.snapshot())} "
        f"successes={sum(successes.values())} duplicates_after_success=0"
    )
    assert proc.stop() == 0


async def test_metrics_count_outcomes_latency_and_queue_depth(
    wh: Settings, nc: Client, receiver: Receiver, tmp_path: Path
) -> None:
    import httpx

    from audioprep.shared.nats_server import free_port

    port = free_port()
    proc = NotifierProcess(
        wh, tmp_path / "notifier.log", extra_env={"AUDIOPREP_METRICS_PORT": str(port)}
    ).start()
    receiver.script = [500]
    try:
        async with api_client(wh) as client:
            created = await register(client, wh, receiver.url)
            await end_job(nc, tenant_of(wh))
            await wait_delivery(client, wh, created["id"], status="delivered")
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    finally:
        assert proc.stop() == 0
    lines = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("audioprep_webhook")
    }
    assert lines['audioprep_webhook_attempts_total{code="http_500",outcome="retrying"}'] == 1
    assert lines['audioprep_webhook_attempts_total{code="ok",outcome="delivered"}'] == 1
    assert lines['audioprep_webhook_deliveries_ended_total{outcome="delivered"}'] == 1
    assert lines["audioprep_webhook_deliveries_scheduled_total"] == 1
    assert lines["audioprep_webhook_latency_seconds_count"] == 1
    assert lines['audioprep_webhook_queue_pending{consumer="deliveries"}'] >= 0
    assert 'audioprep_webhook_queue_ack_pending{consumer="jobs"}' in lines
