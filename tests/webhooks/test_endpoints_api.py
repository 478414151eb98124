"""The endpoints API: create (secret once), list, get, delete, rotate, enable; tenants; refusals."""

from __future__ import annotations

import base64

import pytest
from nats.aio.client import Client

from audioprep.shared import names
from audioprep.shared.settings import Settings
from audioprep.shared.webhook_store import EndpointStore
from tests.webhooks.conftest import NAMES, Receiver, api_client, auth, register, tenant_of


async def test_create_shows_the_secret_once_and_stores_it_encrypted(
    wh: Settings, nc: Client, receiver: Receiver
) -> None:
    async with api_client(wh) as client:
        created = await register(
            client,
            wh,
            receiver.url,
            events=["job.completed", "job.failed", "job.completed"],
            kinds=["save"],
            description="CMS",
        )
        assert created["id"].startswith("ep_")
        assert created["events"] == ["job.completed", "job.failed"]  # de-duplicated
        assert created["kinds"] == ["save"]
        assert created["description"] == "CMS"
        secret = created["secret"]
        assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
        assert created["createdAt"]

        shown = await client.get(f"/api/webhooks/{created['id']}", headers=auth(wh))
        assert shown.status_code == 200
        assert "secret" not in shown.json()
        assert shown.json()["disabled"] is False
        listed = await client.get("/api/webhooks", headers=auth(wh))
        assert [e["id"] for e in listed.json()["webhooks"]] == [created["id"]]
        assert "secret" not in listed.json()["webhooks"][0]

    # At rest: AES-GCM ciphertext, not the secret (nor its base64 body).
    kv = await nc.jetstream().key_value(NAMES.webhook_endpoints_bucket)
    raw = (await kv.get(names.webhook_endpoint_key(tenant_of(wh), created["id"]))).value or b""
    assert secret.encode() not in raw and secret[6:].encode() not in raw
    assert b'"sealed":"v1.' in raw


async def test_events_default_to_all_and_kinds_to_every_kind(
    wh: Settings, receiver: Receiver
) -> None:
    async with api_client(wh) as client:
        created = await register(client, wh, receiver.url)
    assert created["events"] == ["job.completed", "job.failed", "job.cancelled"]
    assert created["kinds"] is None


async def test_another_tenants_endpoint_is_a_404(wh: Settings, receiver: Receiver) -> None:
    other = auth(wh, other=True)
    async with api_client(wh) as client:
        created = await register(client, wh, receiver.url)
        wid = created["id"]
        for method, path in (
            ("GET", f"/api/webhooks/{wid}"),
            ("DELETE", f"/api/webhooks/{wid}"),
            ("POST", f"/api/webhooks/{wid}/rotate-secret"),
            ("POST", f"/api/webhooks/{wid}/enable"),
            ("GET", f"/api/webhooks/{wid}/deliveries"),
            ("POST", f"/api/webhooks/{wid}/deliveries/msg_01M8RG7K8DFBD9EW1AZ8ESBPV6/replay"),
        ):
            resp = await client.request(method, path, headers=other)
            assert resp.status_code == 404, (method, path, resp.text)
            assert resp.json()["code"] == "webhook_not_found"
        assert (await client.get("/api/webhooks", headers=other)).json() == {"webhooks": []}
        # still there for its owner
        assert (await client.get(f"/api/webhooks/{wid}", headers=auth(wh))).status_code == 200
        # and no key at all is a 401, as for every /api/ route
        assert (await client.get("/api/webhooks")).status_code == 401


async def test_delete_then_404(wh: Settings, receiver: Receiver) -> None:
    async with api_client(wh) as client:
        created = await register(client, wh, receiver.url)
        path = f"/api/webhooks/{created['id']}"
        assert (await client.delete(path, headers=auth(wh))).status_code == 204
        assert (await client.get(path, headers=auth(wh))).status_code == 404
        assert (await client.delete(path, headers=auth(wh))).status_code == 404
        assert (await client.get("/api/webhooks", headers=auth(wh))).json() == {"webhooks": []}
        bogus = await client.get("/api/webhooks/not-an-id", headers=auth(wh))
        assert bogus.status_code == 404


async def test_rotate_secret_keeps_the_old_one_for_the_grace_period(
    wh: Settings, nc: Client, receiver: Receiver
) -> None:
    async with api_client(wh) as client:
        created = await register(client, wh, receiver.url)
        resp = await client.post(f"/api/webhooks/{created['id']}/rotate-secret", headers=auth(wh))
        assert resp.status_code == 200, resp.text
        rotated = resp.json()
        assert rotated["secret"].startswith("whsec_") and rotated["secret"] != created["secret"]
        assert rotated["previousSecretExpiresAt"]
    found = await EndpointStore(nc, nc.jetstream(), NAMES).get(tenant_of(wh), created["id"])
    assert found is not None
    stored = found[0].secrets
    assert len(stored) == 2 and stored[0].expires_at is None and stored[1].expires_at is not None


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        ({"url": "http://10.1.2.3/hook"}, 422, "forbidden_url", "url"),
        ({"url": "http://169.254.169.254/latest/meta-data"}, 422, "forbidden_url", "url"),
        ({"url": "http://[::ffff:127.0.0.2]/hook"}, 422, "forbidden_url", "url"),
        ({"url": "http://2130706434/hook"}, 422, "forbidden_url", "url"),  # 127.0.0.2
        ({"url": "http://0x7f.2/hook"}, 422, "forbidden_url", "url"),
        ({"url": "http://app.localhost/hook"}, 422, "forbidden_url", "url"),
        ({"url": "ftp://example.com/x"}, 422, "invalid_url", "url"),
        ({"url": "http://user:pw@127.0.0.1/hook"}, 422, "invalid_url", "url"),
        ({"url": "http://no-such-host.invalid/hook"}, 422, "unresolvable_host", "url"),
        ({"url": "https://x", "events": []}, 422, "validation_error", "events"),
        ({"url": "https://x", "events": ["job.done"]}, 422, "validation_error", "events[0]"),
        ({"url": "https://x", "kinds": ["render"]}, 422, "validation_error", "kinds[0]"),
        ({"url": "https://x", "secret": "mine"}, 422, "validation_error", None),
        ({}, 422, "validation_error", "url"),
    ],
)
async def test_refused_at_registration(
    wh: Settings, body: dict[str, object], status: int, code: str, field: str | None
) -> None:
    async with api_client(wh) as client:
        resp = await client.post("/api/webhooks", json=body, headers=auth(wh))
        assert resp.status_code == status, resp.text
        problem = resp.json()
        assert problem["code"] == code, problem
        if field is not None:
            assert problem.get("field") == field, problem
        assert (await client.get("/api/webhooks", headers=auth(wh))).json() == {"webhooks": []}


async def test_https_is_required_outside_dev_mode(wh: Settings, receiver: Receiver) -> None:
    prod = wh.with_(
        dev_mode=False, url_allow_hosts=frozenset({"localhost"}), signing_secret="s" * 40
    )
    async with api_client(prod) as client:
        resp = await client.post(
            "/api/webhooks", json={"url": "http://example.com/hook"}, headers=auth(prod)
        )
        assert resp.status_code == 422 and resp.json()["code"] == "invalid_url", resp.text
        # an allowed host (tests, an internal relay an operator trusts) may use http
        resp = await client.post(
            "/api/webhooks", json={"url": f"http://localhost:{receiver.port}/"}, headers=auth(prod)
        )
        assert resp.status_code == 201, resp.text


async def test_without_a_key_outside_dev_mode_webhooks_are_unconfigured(wh: Settings) -> None:
    prod = wh.with_(dev_mode=False, webhook_secret_key="", signing_secret="s" * 40)
    async with api_client(prod) as client:
        resp = await client.post(
            "/api/webhooks", json={"url": "http://127.0.0.1:9/"}, headers=auth(prod)
        )
        assert resp.status_code == 503, resp.text
        assert resp.json()["code"] == "webhooks_unconfigured"


async def test_deliveries_of_a_new_endpoint_and_unknown_delivery(
    wh: Settings, receiver: Receiver
) -> None:
    async with api_client(wh) as client:
        created = await register(client, wh, receiver.url)
        base = f"/api/webhooks/{created['id']}/deliveries"
        assert (await client.get(base, headers=auth(wh))).json() == {"deliveries": []}
        for path in (f"{base}/msg_01M8RG7K8DFBD9EW1AZ8ESBPV6", f"{base}/nope"):
            resp = await client.get(path, headers=auth(wh))
            assert resp.status_code == 404 and resp.json()["code"] == "delivery_not_found"
        resp = await client.post(f"{base}/msg_01M8RG7K8DFBD9EW1AZ8ESBPV6/replay", headers=auth(wh))
        assert resp.status_code == 404 and resp.json()["code"] == "delivery_not_found"
        resp = await client.get(f"{base}?limit=0", headers=auth(wh))
        assert resp.status_code == 422, resp.text
