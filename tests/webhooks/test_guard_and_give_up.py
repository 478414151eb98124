"""The SSRF guard at delivery time, redirects, giving up after the retry window, and disabling
an endpoint that keeps failing. The notifier runs in this process here, because these tests
replace its DNS resolver (`audioprep.shared.webhook_url.resolver`) to make a name's answer
change."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from nats.aio.client import Client

from audioprep.shared import webhook_url
from audioprep.shared.nats_server import free_port
from audioprep.shared.provision import provision_webhooks
from audioprep.shared.settings import Settings
from tests.webhooks.conftest import (
    Receiver,
    api_client,
    auth,
    end_job,
    notifier_task,
    register,
    tenant_of,
    wait_delivery,
    webhook_settings,
)

PUBLIC = "93.184.216.34"  # only ever resolved to, never connected to


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, list[str]]]:
    """Names this test controls; every other name resolves as usual."""
    answers: dict[str, list[str]] = {}
    real = webhook_url.system_resolve

    async def resolve(host: str, port: int) -> list[str]:
        if host in answers:
            return answers[host]
        return await real(host, port)

    monkeypatch.setattr(webhook_url, "resolver", resolve)
    yield answers


async def test_a_name_that_resolves_private_is_refused_at_registration(
    wh: Settings, dns: dict[str, list[str]]
) -> None:
    dns["intranet.example"] = ["10.0.0.5"]
    dns["mixed.example"] = [PUBLIC, "127.0.0.1"]  # one bad answer is enough
    async with api_client(wh) as client:
        for host in ("intranet.example", "mixed.example"):
            resp = await client.post(
                "/api/webhooks", json={"url": f"https://{host}/hook"}, headers=auth(wh)
            )
            assert resp.status_code == 422, resp.text
            assert resp.json()["code"] == "forbidden_url" and resp.json()["field"] == "url"


async def test_a_dns_answer_that_turns_private_is_refused_and_recorded(
    wh: Settings, nc: Client, receiver: Receiver, dns: dict[str, list[str]]
) -> None:
    """Registered while public, then the name points at the receiver on loopback: the
    notifier refuses to connect (the receiver sees nothing) and records why."""
    dns["rebind.example"] = [PUBLIC]
    async with api_client(wh) as client, notifier_task(wh):
        created = await register(client, wh, f"http://rebind.example:{receiver.port}/hook")
        dns["rebind.example"] = ["127.0.0.1"]
        await end_job(nc, tenant_of(wh))
        [delivery] = await wait_delivery(client, wh, created["id"], status="retrying")
        assert delivery["lastError"] == "forbidden_address"
        assert "127.0.0.1" in delivery["lastMessage"]
        assert delivery.get("lastStatusCode") is None
        assert receiver.snapshot() == []
        await client.delete(f"/api/webhooks/{created['id']}", headers=auth(wh))


async def test_redirects_are_not_followed(wh: Settings, nc: Client, receiver: Receiver) -> None:
    target = Receiver(port=free_port()).start()  # where the redirect points: never asked
    receiver.default = 307
    receiver.location = target.url
    try:
        async with api_client(wh) as client, notifier_task(wh):
            created = await register(client, wh, receiver.url)
            await end_job(nc, tenant_of(wh))
            [delivery] = await wait_delivery(client, wh, created["id"], status="retrying")
            assert delivery["lastStatusCode"] == 307 and delivery["lastError"] == "http_307"
            assert len(receiver.snapshot()) == 1 and target.snapshot() == []
            await client.delete(f"/api/webhooks/{created['id']}", headers=auth(wh))
    finally:
        target.stop()


async def test_gives_up_after_the_retry_window_and_disables_a_failing_endpoint(
    base_settings: Settings, nc: Client, receiver: Receiver
) -> None:
    settings = webhook_settings(
        base_settings,
        webhook_retry_schedule_s=(0.2,),
        webhook_retry_for_s=1.0,
        webhook_disable_after_s=1.5,
    )
    await provision_webhooks(nc.jetstream(), settings)
    receiver.default = 500
    async with api_client(settings) as client, notifier_task(settings):
        created = await register(client, settings, receiver.url)
        await end_job(nc, tenant_of(settings))
        [failed] = await wait_delivery(client, settings, created["id"], status="failed")
        assert failed["lastError"] == "retries_exhausted" and failed["lastStatusCode"] == 500
        assert "gave up after" in failed["lastMessage"]
        assert failed["attempts"] >= 3
        shown = (await client.get(f"/api/webhooks/{created['id']}", headers=auth(settings))).json()
        assert shown["failingSince"] is not None and shown["disabled"] is False
        # another failure once the endpoint has failed for longer than disable_after
        await end_job(nc, tenant_of(settings))
        await wait_delivery(client, settings, created["id"], status="failed", count=2)
        shown = (await client.get(f"/api/webhooks/{created['id']}", headers=auth(settings))).json()
        assert shown["disabled"] is True
        assert shown["disabledReason"].startswith("failing since"), shown
        assert "http_500" in shown["disabledReason"]
        requests = len(receiver.snapshot())
        # a disabled endpoint gets no new deliveries; enabled and healthy again, it does
        receiver.default = 200
        resp = await client.post(f"/api/webhooks/{created['id']}/enable", headers=auth(settings))
        assert resp.json()["disabled"] is False and resp.json()["failingSince"] is None
        await end_job(nc, tenant_of(settings))
        await wait_delivery(client, settings, created["id"], status="delivered")
        assert len(receiver.snapshot()) == requests + 1
