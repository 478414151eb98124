"""Deliveries end to end: a real `audioprep notifier` process, a real receiver on loopback that
verifies every request with the PyPI `standardwebhooks` library, jobs ending on the real
nats-server (a real save through API + worker, or terminal events appended as the API does)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import standardwebhooks
from nats.aio.client import Client

from audioprep.shared.nats_server import free_port
from audioprep.shared.provision import provision
from audioprep.shared.settings import Settings
from audioprep.shared.webhook_store import DeliveryStore
from tests.conftest import running_stack
from tests.jobs_helpers import wait_for_job
from tests.media import write_tone
from tests.webhooks.conftest import (
    NAMES,
    NotifierProcess,
    Receiver,
    api_client,
    auth,
    end_job,
    register,
    tenant_of,
    wait_delivery,
    webhook_settings,
)


@pytest.fixture(scope="module")
async def notifier(
    base_settings: Settings, nc: Client, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[NotifierProcess]:
    """One notifier process for the module (it serves every tenant)."""
    settings = webhook_settings(base_settings)
    # the suite's names exist before the notifier starts (no other test may have run yet)
    await provision(nc.jetstream(), settings)
    proc = NotifierProcess(settings, tmp_path_factory.mktemp("notifier") / "notifier.log")
    proc.start()
    yield proc
    assert proc.stop() == 0
    lines = proc.log_lines()
    assert lines and all("job_id" in line for line in lines if "delivery_id" in line)
    assert not [line for line in lines if line.get("level") == "error"], lines


def _parse(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


async def test_completed_save_reaches_the_receiver_verified_within_a_second(
    wh: Settings, nc: Client, receiver: Receiver, notifier: NotifierProcess, tmp_path: Path
) -> None:
    headers = auth(wh)
    async with running_stack(wh, nc) as stack:
        created = await register(
            stack.client, wh, receiver.url, events=["job.completed"], kinds=["save"]
        )
        receiver.secret = created["secret"]
        wav = write_tone(tmp_path / "tone.wav", seconds=1.5)
        with wav.open("rb") as f:
            resp = await stack.client.post(
                "/api/audio/ingest", files={"file": ("tone.wav", f, "audio/wav")}, headers=headers
            )
        assert resp.status_code == 202, resp.text
        ingest = await wait_for_job(stack.client, resp.json()["jobId"], headers=headers)
        assert ingest["status"] == "completed", ingest
        resp = await stack.client.post(
            "/api/audio/edit/save",
            json={"sourceKey": ingest["result"]["sourceKey"], "format": "wav"},
            headers=headers,
        )
        assert resp.status_code == 202, resp.text
        save_id = resp.json()["jobId"]
        view = await wait_for_job(stack.client, save_id, headers=headers)
        assert view["status"] == "completed", view

        got = await receiver.wait_for(1, timeout=10)
        delivery = got[0]
        assert delivery.verified, delivery.error
        body = delivery.json()
        assert body["type"] == "job.completed"
        assert body["data"]["jobId"] == save_id
        assert body["timestamp"] == view["updatedAt"]
        # data is the poll view, with its own fresh download link
        assert {k: v for k, v in body["data"].items() if k != "downloadUrl"} == {
            k: v for k, v in view.items() if k != "downloadUrl"
        }
        link = body["data"]["downloadUrl"]
        download = await stack.client.get(link.split("127.0.0.1:8000", 1)[1])
        assert download.status_code == 200 and download.content[:4] == b"RIFF"
        latency = delivery.at - _parse(view["updatedAt"])
        print(f"\nterminal event → receiver: {latency * 1000:.0f} ms")
        assert latency < 1.0

        delivered = await wait_delivery(stack.client, wh, created["id"], status="delivered")
        assert len(delivered) == 1  # the ingest was not for this endpoint (kinds: save)
        assert delivered[0]["id"] == delivery.webhook_id
        assert delivered[0]["jobId"] == save_id and delivered[0]["attempts"] == 1
        assert delivered[0]["lastStatusCode"] == 200
    assert len(receiver.snapshot()) == 1


async def test_500_twice_then_200_is_delivered_on_the_third_attempt(
    wh: Settings, nc: Client, receiver: Receiver, notifier: NotifierProcess
) -> None:
    receiver.script = [500, 500]
    async with api_client(wh) as client:
        created = await register(client, wh, receiver.url)
        receiver.secret = created["secret"]
        job_id = await end_job(nc, tenant_of(wh), outcome="failed")
        got = await receiver.wait_for(3)
        assert [r.status for r in got] == [500, 500, 200]
        assert all(r.verified for r in got), [r.error for r in got]
        assert len({r.webhook_id for r in got}) == 1  # one delivery, one webhook-id
        assert got[0].json()["type"] == "job.failed"
        assert got[0].json()["data"]["error"]["code"] == "corrupt_media"
        assert got[1].at - got[0].at >= 0.3 * 0.8  # the schedule's first step, minus jitter
        [delivery] = await wait_delivery(client, wh, created["id"], status="delivered")
        assert delivery["attempts"] == 3 and delivery["jobId"] == job_id
        path = f"/api/webhooks/{created['id']}/deliveries/{delivery['id']}"
        detail = (await client.get(path, headers=auth(wh))).json()
        assert [(a["attempt"], a["outcome"], a["statusCode"]) for a in detail["history"]] == [
            (1, "retrying", 500),
            (2, "retrying", 500),
            (3, "delivered", 200),
        ]
        assert detail["history"][0]["error"] == "http_500"


async def test_receiver_down_for_a_while_then_up(
    wh: Settings, nc: Client, notifier: NotifierProcess
) -> None:
    port = free_port()
    receiver = Receiver(port=port)  # not listening yet: connection refused
    async with api_client(wh) as client:
        created = await register(client, wh, receiver.url)
        receiver.secret = created["secret"]
        await end_job(nc, tenant_of(wh))
        [retrying] = await wait_delivery(client, wh, created["id"], status="retrying")
        deadline = time.monotonic() + 15
        while retrying["attempts"] < 2 and time.monotonic() < deadline:
            [retrying] = await wait_delivery(client, wh, created["id"], status="retrying")
        assert retrying["lastError"] == "connect_error" and retrying["nextAttemptAt"]
        receiver.start()
        try:
            [ok] = await receiver.wait_for(1, ok=True)
            assert ok.verified
            [delivered] = await wait_delivery(client, wh, created["id"], status="delivered")
            assert delivered["attempts"] >= 3
        finally:
            receiver.stop()


async def test_410_gone_disables_the_endpoint_at_once(
    wh: Settings, nc: Client, receiver: Receiver, notifier: NotifierProcess
) -> None:
    receiver.script = [410]
    other = Receiver(port=free_port()).start()
    try:
        async with api_client(wh) as client:
            gone = await register(client, wh, receiver.url)
            witness = await register(client, wh, other.url)
            await end_job(nc, tenant_of(wh))
            [failed] = await wait_delivery(client, wh, gone["id"], status="failed")
            assert failed["lastStatusCode"] == 410 and failed["lastError"] == "gone"
            shown = (await client.get(f"/api/webhooks/{gone['id']}", headers=auth(wh))).json()
            assert shown["disabled"] is True and "410 Gone" in shown["disabledReason"]
            # the next job end goes to the witness only
            await end_job(nc, tenant_of(wh))
            await other.wait_for(2, ok=True)
            await wait_delivery(client, wh, witness["id"], status="delivered", count=2)
            deliveries = (
                await client.get(f"/api/webhooks/{gone['id']}/deliveries", headers=auth(wh))
            ).json()["deliveries"]
            assert len(deliveries) == 1 and len(receiver.snapshot()) == 1
            # a replay to a disabled endpoint is refused; enabled again, it is delivered
            replay = f"/api/webhooks/{gone['id']}/deliveries/{failed['id']}/replay"
            resp = await client.post(replay, headers=auth(wh))
            assert resp.status_code == 409 and resp.json()["code"] == "webhook_disabled"
            resp = await client.post(f"/api/webhooks/{gone['id']}/enable", headers=auth(wh))
            assert resp.status_code == 200 and resp.json()["disabled"] is False
            assert (await client.post(replay, headers=auth(wh))).status_code == 202
            await receiver.wait_for(1, ok=True)
    finally:
        other.stop()


async def test_signature_covers_id_timestamp_and_body(
    wh: Settings, nc: Client, receiver: Receiver, notifier: NotifierProcess
) -> None:
    async with api_client(wh) as client:
        created = await register(client, wh, receiver.url)
        receiver.secret = created["secret"]
        await end_job(nc, tenant_of(wh), outcome="cancelled")
        [got] = await receiver.wait_for(1)
    assert got.verified, got.error
    webhook = standardwebhooks.Webhook(created["secret"])
    assert webhook.verify(got.body, got.headers)["type"] == "job.cancelled"

    def refused(secret: str, body: bytes, **headers: str) -> str:
        try:
            standardwebhooks.Webhook(secret).verify(body, {**got.headers, **headers})
        except standardwebhooks.WebhookVerificationError as exc:
            return str(exc)
        raise AssertionError("verified, but should not have")

    other_secret = standardwebhooks.Webhook  # a secret made the same way, not ours
    wrong = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVowMTIzNDU="
    assert other_secret(wrong) is not None
    assert refused(wrong, got.body) == "No matching signature found"
    tampered = got.body.replace(b'"job.cancelled"', b'"job.completed"')
    assert refused(created["secret"], tampered) == "No matching signature found"
    stamp = int(got.headers["webhook-timestamp"])
    assert refused(created["secret"], got.body, **{"webhook-timestamp": str(stamp - 3600)}) == (
        "Message timestamp too old"
    )
    # a timestamp within the tolerance but not the signed one: the signature covers it
    shifted = {"webhook-timestamp": str(stamp + 1)}
    assert refused(created["secret"], got.body, **shifted) == "No matching signature found"
    renamed = {"webhook-id": got.webhook_id + "x"}
    assert refused(created["secret"], got.body, **renamed) == "No matching signature found"


async def test_rotated_secret_signs_with_both_during_the_grace(
    wh: Settings, nc: Client, receiver: Receiver, notifier: NotifierProcess
) -> None:
    async with api_client(wh) as client:
        created = await register(client, wh, receiver.url)
        resp = await client.post(f"/api/webhooks/{created['id']}/rotate-secret", headers=auth(wh))
        rotated = resp.json()["secret"]
        await end_job(nc, tenant_of(wh))
        [got] = await receiver.wait_for(1)
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    for secret in (created["secret"], rotated):  # a receiver on either secret accepts it
        standardwebhooks.Webhook(secret).verify(got.body, got.headers)


async def test_event_and_kind_filters(
    wh: Settings, nc: Client, receiver: Receiver, notifier: NotifierProcess
) -> None:
    everything = Receiver(port=free_port()).start()
    try:
        async with api_client(wh) as client:
            picky = await register(
                client, wh, receiver.url, events=["job.failed"], kinds=["ingest"]
            )
            await register(client, wh, everything.url)
            tenant = tenant_of(wh)
            wanted = await end_job(nc, tenant, kind="ingest", outcome="failed")
            await end_job(nc, tenant, kind="ingest", outcome="completed")
            await end_job(nc, tenant, kind="save", outcome="failed")
            await end_job(nc, tenant, kind="preview", outcome="cancelled")
            # every job end fanned out (the catch-all got 4), so the picky list is complete
            await everything.wait_for(4, ok=True)
            listed = await client.get(f"/api/webhooks/{picky['id']}/deliveries", headers=auth(wh))
            assert [d["jobId"] for d in listed.json()["deliveries"]] == [wanted]
            [got] = await receiver.wait_for(1)
            assert got.json()["data"]["jobId"] == wanted
    finally:
        everything.stop()


async def test_only_jobs_ending_after_registration_are_sent(
    wh: Settings, nc: Client, receiver: Receiver, notifier: NotifierProcess
) -> None:
    tenant = tenant_of(wh)
    before = await end_job(nc, tenant)
    async with api_client(wh) as client:
        created = await register(client, wh, receiver.url)
        after = await end_job(nc, tenant)
        [got] = await receiver.wait_for(1)
        assert got.json()["data"]["jobId"] == after != before
        listed = await client.get(f"/api/webhooks/{created['id']}/deliveries", headers=auth(wh))
        assert [d["jobId"] for d in listed.json()["deliveries"]] == [after]


async def test_replay_is_a_new_delivery_with_a_new_webhook_id(
    wh: Settings, nc: Client, receiver: Receiver, notifier: NotifierProcess
) -> None:
    async with api_client(wh) as client:
        created = await register(client, wh, receiver.url)
        receiver.secret = created["secret"]
        job_id = await end_job(nc, tenant_of(wh))
        [first] = await receiver.wait_for(1, ok=True)
        [original] = await wait_delivery(client, wh, created["id"], status="delivered")
        path = f"/api/webhooks/{created['id']}/deliveries/{original['id']}/replay"
        resp = await client.post(path, headers=auth(wh))
        assert resp.status_code == 202, resp.text
        replay: dict[str, Any] = resp.json()
        assert replay["replayOf"] == original["id"] and replay["id"] != original["id"]
        assert replay["status"] == "pending" and replay["jobId"] == job_id
        _, second = await receiver.wait_for(2, ok=True)
        assert second.verified and second.webhook_id == replay["id"] != first.webhook_id
        assert second.json()["data"]["jobId"] == job_id
        delivered = await wait_delivery(client, wh, created["id"], status="delivered", count=2)
        assert [d["id"] for d in delivered] == [replay["id"], original["id"]]  # newest first
        assert next(d for d in delivered if d["id"] == original["id"])["attempts"] == 1


async def test_deleting_an_endpoint_drops_its_pending_deliveries(
    wh: Settings, nc: Client, receiver: Receiver, notifier: NotifierProcess
) -> None:
    receiver.default = 503
    async with api_client(wh) as client:
        created = await register(client, wh, receiver.url)
        await end_job(nc, tenant_of(wh))
        [retrying] = await wait_delivery(client, wh, created["id"], status="retrying")
        assert (
            await client.delete(f"/api/webhooks/{created['id']}", headers=auth(wh))
        ).status_code == 204
    store = DeliveryStore(nc, nc.jetstream(), NAMES)
    deadline = time.monotonic() + 15
    view = None
    while time.monotonic() < deadline:
        view = await store.delivery(created["id"], retrying["id"])
        if view is not None and view.is_final:
            break
        await asyncio.sleep(0.05)
    assert view is not None and view.status == "failed" and view.last_error == "endpoint_deleted"
    sent = len(receiver.snapshot())
    assert sent == view.attempts  # nothing was sent after the delete was seen
