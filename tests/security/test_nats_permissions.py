"""deploy/nats-prod.conf (generated from the name table: audioprep/shared/nats_permissions.py):
every service can do its job as its own user, and nothing more."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import nats
import nats.errors
import pytest
from litestar.testing import AsyncTestClient
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError, NotFoundError

from audioprep.domain import kinds
from audioprep.shared import kv_read, names
from audioprep.shared.ids import new_job_id
from audioprep.shared.names import Names
from audioprep.shared.nats_conn import connect, inbox_prefix_for
from audioprep.shared.nats_permissions import render_config, service_users
from audioprep.shared.nats_server import REPO_ROOT, NatsServer, free_port
from audioprep.shared.provision import provision
from audioprep.shared.settings import Settings
from audioprep.shared.webhook_store import new_endpoint_id
from tests.jobs_helpers import wait_for_job
from tests.media import write_tone
from tests.webhooks.conftest import Receiver

NAMES = Names()  # the default prefix: what `audioprep up` uses

T = TypeVar("T")
PROD_CONFIG = REPO_ROOT / "deploy" / "nats-prod.conf"
USERS = ("admin", "api", "worker", "projector", "notifier")
WEBHOOK_KEY = "least-privilege-webhook-key-0123456789"
DENY_TIMEOUT_S = 1.0
ASYNC_REFUSAL = object()


def password(user: str) -> str:
    return f"{user}-test-password"


@dataclass
class ProdNats:
    server: NatsServer
    log_file: Path

    def url(self, user: str, pw: str | None = None) -> str:
        return f"nats://{user}:{pw or password(user)}@127.0.0.1:{self.server.port}"

    def violations(self) -> list[str]:
        text = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
        return [line for line in text.splitlines() if "Violation" in line]


@pytest.fixture(scope="module")
def prod_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProdNats]:
    base = tmp_path_factory.mktemp("nats-prod")
    log_file = base / "nats.log"
    server = NatsServer(base / "store", config=PROD_CONFIG, log_file=log_file)
    with pytest.MonkeyPatch.context() as mp:
        for user in USERS:
            mp.setenv(f"AUDIOPREP_NATS_{user.upper()}_PASSWORD", password(user))
        server.start()
    yield ProdNats(server=server, log_file=log_file)
    server.stop()


@dataclass
class UserClient:
    """A connection as one user that records the permission errors the server sends back."""

    nc: Client
    errors: list[str] = field(default_factory=list)

    def denied(self, what: str) -> bool:
        # nats-py lower-cases the server's -ERR text
        return any("permissions violation" in e.lower() and what.lower() in e for e in self.errors)


async def as_user(prod: ProdNats, user: str) -> UserClient:
    return await _connect_as(prod.url(user))


async def _connect_as(url: str) -> UserClient:
    """A connection with the user's inbox prefix that records the server's -ERRs."""
    uc = UserClient(nc=None)  # type: ignore[arg-type]

    async def on_error(exc: Exception) -> None:
        uc.errors.append(str(exc))

    uc.nc = await nats.connect(
        url, inbox_prefix=inbox_prefix_for(url), error_cb=on_error, allow_reconnect=False
    )
    return uc


@pytest.fixture(scope="module")
async def provisioned(prod_nats: ProdNats) -> AsyncIterator[ProdNats]:
    admin = await as_user(prod_nats, "admin")
    await provision(admin.nc.jetstream(), Settings(nats_url=prod_nats.url("admin")))
    await admin.nc.close()
    yield prod_nats


@contextlib.asynccontextmanager
async def users(prod: ProdNats, *names: str) -> AsyncIterator[dict[str, UserClient]]:
    clients = {name: await as_user(prod, name) for name in names}
    try:
        yield clients
    finally:
        for c in clients.values():
            await c.nc.close()


async def refused(uc: UserClient, what: str, action: Callable[[], Awaitable[Any]]) -> str | None:
    """Run `action`; None when the server refused it (and said so), else what went wrong."""
    try:
        result = await asyncio.wait_for(action(), timeout=DENY_TIMEOUT_S + 1)
    except (TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError):
        pass
    except Exception as exc:  # a JetStream error reply means the request got through
        if "permissions violation" not in str(exc).lower():
            return f"{what}: unexpected {type(exc).__name__}: {exc}"
    else:
        if result is not ASYNC_REFUSAL:
            return f"{what}: was allowed"
    deadline = asyncio.get_running_loop().time() + 2
    while not uc.denied(what):
        if asyncio.get_running_loop().time() > deadline:
            return f"{what}: no permissions violation reported ({uc.errors[-3:]})"
        await asyncio.sleep(0.02)
    return None


def _js_request(uc: UserClient, subject: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body or {}).encode()
    return lambda: uc.nc.request(subject, data, timeout=DENY_TIMEOUT_S)


def _publish_event(uc: UserClient, kind: str, job_id: str, event: str) -> Any:
    subject = f"jobs.{kind}.{job_id}.{event}"
    return lambda: uc.nc.jetstream().publish(subject, b"{}", timeout=DENY_TIMEOUT_S)


def _publish(uc: UserClient, subject: str) -> Any:
    return lambda: uc.nc.jetstream().publish(subject, b"{}", timeout=DENY_TIMEOUT_S)


def _subscribe(uc: UserClient, subject: str) -> Any:
    async def go() -> object:
        await uc.nc.subscribe(subject)
        await uc.nc.flush()
        return ASYNC_REFUSAL  # a refused subscription is reported asynchronously

    return go


async def test_wrong_or_missing_credentials_are_refused(provisioned: ProdNats) -> None:
    for url in (provisioned.url("api", "wrong"), provisioned.server.url):
        with pytest.raises(Exception) as info:
            await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0)
        assert "authorization" in str(info.value).lower() or isinstance(
            info.value, nats.errors.NoServersError
        ), info.value


async def test_services_are_refused_outside_their_rights(provisioned: ProdNats) -> None:
    job = new_job_id()
    async with users(provisioned, "api", "worker", "projector", "admin") as u:
        api, worker, projector, admin = u["api"], u["worker"], u["projector"], u["admin"]
        cases: list[tuple[UserClient, str, Callable[[], Awaitable[Any]]]] = [
            # api: only requests and cancels, reads; no worker events, no management
            (api, f"jobs.ingest.{job}.completed", _publish_event(api, "ingest", job, "completed")),
            (api, f"jobs.save.{job}.started", _publish_event(api, "save", job, "started")),
            (api, "$JS.API.STREAM.DELETE.JOBS", _js_request(api, "$JS.API.STREAM.DELETE.JOBS")),
            (api, "$JS.API.STREAM.PURGE.KV_jobs", _js_request(api, "$JS.API.STREAM.PURGE.KV_jobs")),
            (
                api,
                "$JS.API.CONSUMER.DELETE.JOBS.workers-ingest",
                _js_request(api, "$JS.API.CONSUMER.DELETE.JOBS.workers-ingest"),
            ),
            (
                api,
                "$JS.API.CONSUMER.MSG.NEXT.JOBS.workers-ingest",
                _js_request(api, "$JS.API.CONSUMER.MSG.NEXT.JOBS.workers-ingest", {"batch": 1}),
            ),
            (api, f"$KV.jobs.{job}", lambda: api.nc.jetstream().publish(f"$KV.jobs.{job}", b"x")),
            (
                api,
                f"$KV.projector.{job}",
                lambda: api.nc.jetstream().publish(f"$KV.projector.{job}", b"1"),
            ),
            (api, "jobs.>", _subscribe(api, "jobs.>")),
            # api: no consumer of any kind (SSE reads by direct get)
            (
                api,
                "$JS.API.CONSUMER.CREATE.JOBS",
                _js_request(api, "$JS.API.CONSUMER.CREATE.JOBS", {"stream_name": "JOBS"}),
            ),
            (
                api,
                "$JS.API.CONSUMER.DURABLE.CREATE.JOBS.workers-ingest",
                _js_request(api, "$JS.API.CONSUMER.DURABLE.CREATE.JOBS.workers-ingest"),
            ),
            (api, "_INBOX.worker.>", _subscribe(api, "_INBOX.worker.>")),
            # worker: no requests or cancels, no view writes, no consumer management
            (
                worker,
                f"jobs.ingest.{job}.requested",
                _publish_event(worker, "ingest", job, "requested"),
            ),
            (
                worker,
                f"jobs.ingest.{job}.cancel_requested",
                _publish_event(worker, "ingest", job, "cancel_requested"),
            ),
            (
                worker,
                "$JS.API.STREAM.DELETE.JOBS",
                _js_request(worker, "$JS.API.STREAM.DELETE.JOBS"),
            ),
            (
                worker,
                "$JS.API.CONSUMER.CREATE.JOBS",
                _js_request(worker, "$JS.API.CONSUMER.CREATE.JOBS", {"stream_name": "JOBS"}),
            ),
            (
                worker,
                "$JS.API.CONSUMER.DURABLE.CREATE.JOBS.workers-ingest",
                _js_request(worker, "$JS.API.CONSUMER.DURABLE.CREATE.JOBS.workers-ingest"),
            ),
            (
                worker,
                "$JS.API.STREAM.PURGE.KV_jobs",
                _js_request(worker, "$JS.API.STREAM.PURGE.KV_jobs"),
            ),
            (
                worker,
                f"$KV.jobs.{job}",
                lambda: worker.nc.jetstream().publish(f"$KV.jobs.{job}", b"x"),
            ),
            (worker, "_INBOX.api.>", _subscribe(worker, "_INBOX.api.>")),
            # projector: writes views only; no job events, no render cache, no work
            (
                projector,
                f"jobs.ingest.{job}.failed",
                _publish_event(projector, "ingest", job, "failed"),
            ),
            (
                projector,
                f"jobs.ingest.{job}.requested",
                _publish_event(projector, "ingest", job, "requested"),
            ),
            (
                projector,
                "$KV.render_cache.k",
                lambda: projector.nc.jetstream().publish("$KV.render_cache.k", b"x"),
            ),
            (
                projector,
                "$JS.API.CONSUMER.MSG.NEXT.JOBS.workers-save",
                _js_request(projector, "$JS.API.CONSUMER.MSG.NEXT.JOBS.workers-save"),
            ),
            (
                projector,
                "$JS.API.STREAM.DELETE.JOBS",
                _js_request(projector, "$JS.API.STREAM.DELETE.JOBS"),
            ),
            (
                projector,
                "$JS.API.CONSUMER.DELETE.JOBS.workers-save",
                _js_request(projector, "$JS.API.CONSUMER.DELETE.JOBS.workers-save"),
            ),
        ]
        problems = await asyncio.gather(*(refused(uc, what, act) for uc, what, act in cases))
        assert [p for p in problems if p] == []
        print(f"\nNATS refusals checked: {len(cases)}")

        # Nothing of it reached the server: the stream, consumers and buckets are intact.
        ajs = admin.nc.jetstream()
        await ajs.stream_info(NAMES.stream)
        for kind in kinds.KINDS:
            await ajs.consumer_info(NAMES.stream, names.worker_consumer(kind))
        with pytest.raises(NotFoundError):
            await ajs.get_last_msg(NAMES.stream, NAMES.job_subjects(job))
        kv = await ajs.key_value(NAMES.jobs_bucket)
        with pytest.raises(KeyNotFoundError):
            await kv.get(job)
        await ajs.key_value(NAMES.render_cache_bucket)


async def test_webhook_and_preset_rights_are_refused_to_the_others(provisioned: ProdNats) -> None:
    """The notifier: no job event, no view, cache or preset, no work, no management. The
    API records no attempt and takes no delivery; workers and the projector touch no webhook
    or preset."""
    job, ep, dl = new_job_id(), new_endpoint_id(), f"msg_{new_job_id()}"
    wh = NAMES.webhooks_stream
    async with users(provisioned, "notifier", "api", "worker", "projector", "admin") as u:
        notifier, api, worker, projector = u["notifier"], u["api"], u["worker"], u["projector"]
        attempted = NAMES.webhook_subject(ep, dl, "attempted")
        created = NAMES.webhook_subject(ep, dl, "created")
        endpoint_key = names.kv_subject(NAMES.webhook_endpoints_bucket, f"default.{ep}")
        preset_key = names.kv_subject(NAMES.presets_bucket, "default.show")
        cases: list[tuple[UserClient, str, Callable[[], Awaitable[Any]]]] = [
            (
                notifier,
                f"jobs.save.{job}.completed",
                _publish_event(notifier, "save", job, "completed"),
            ),
            (
                notifier,
                f"jobs.ingest.{job}.requested",
                _publish_event(notifier, "ingest", job, "requested"),
            ),
            (notifier, f"$KV.jobs.{job}", _publish(notifier, f"$KV.jobs.{job}")),
            (notifier, "$KV.render_cache.k", _publish(notifier, "$KV.render_cache.k")),
            (notifier, preset_key, _publish(notifier, preset_key)),
            (
                notifier,
                "$JS.API.CONSUMER.MSG.NEXT.JOBS.workers-save",
                _js_request(notifier, "$JS.API.CONSUMER.MSG.NEXT.JOBS.workers-save"),
            ),
            (
                notifier,
                "$JS.API.CONSUMER.CREATE.JOBS",
                _js_request(notifier, "$JS.API.CONSUMER.CREATE.JOBS", {"stream_name": "JOBS"}),
            ),
            (
                notifier,
                "$JS.API.CONSUMER.DURABLE.CREATE.JOBS.notifier-jobs",
                _js_request(notifier, "$JS.API.CONSUMER.DURABLE.CREATE.JOBS.notifier-jobs"),
            ),
            (
                notifier,
                "$JS.API.CONSUMER.DELETE.WEBHOOKS.notifier-deliveries",
                _js_request(notifier, "$JS.API.CONSUMER.DELETE.WEBHOOKS.notifier-deliveries"),
            ),
            (
                notifier,
                "$JS.API.STREAM.DELETE.WEBHOOKS",
                _js_request(notifier, "$JS.API.STREAM.DELETE.WEBHOOKS"),
            ),
            (
                notifier,
                "$JS.API.STREAM.PURGE.KV_webhook_endpoints",
                _js_request(notifier, "$JS.API.STREAM.PURGE.KV_webhook_endpoints"),
            ),
            (notifier, "jobs.>", _subscribe(notifier, "jobs.>")),
            (notifier, "webhooks.>", _subscribe(notifier, "webhooks.>")),
            (notifier, "_INBOX.api.>", _subscribe(notifier, "_INBOX.api.>")),
            # api: replays create deliveries; only notifiers record attempts and take them
            (api, attempted, _publish(api, attempted)),
            (
                api,
                "$JS.API.CONSUMER.MSG.NEXT.WEBHOOKS.notifier-deliveries",
                _js_request(
                    api, "$JS.API.CONSUMER.MSG.NEXT.WEBHOOKS.notifier-deliveries", {"batch": 1}
                ),
            ),
            (
                api,
                "$JS.API.CONSUMER.CREATE.WEBHOOKS",
                _js_request(api, "$JS.API.CONSUMER.CREATE.WEBHOOKS", {"stream_name": wh}),
            ),
            (
                api,
                "$JS.API.STREAM.DELETE.KV_presets",
                _js_request(api, "$JS.API.STREAM.DELETE.KV_presets"),
            ),
            (
                api,
                "$JS.API.STREAM.PURGE.KV_webhook_endpoints",
                _js_request(api, "$JS.API.STREAM.PURGE.KV_webhook_endpoints"),
            ),
            (api, "webhooks.>", _subscribe(api, "webhooks.>")),
            (api, "_INBOX.notifier.>", _subscribe(api, "_INBOX.notifier.>")),
            # workers and the projector: nothing of webhooks or presets
            (worker, created, _publish(worker, created)),
            (worker, endpoint_key, _publish(worker, endpoint_key)),
            (worker, preset_key, _publish(worker, preset_key)),
            (
                worker,
                "$JS.API.DIRECT.GET.WEBHOOKS",
                _js_request(worker, "$JS.API.DIRECT.GET.WEBHOOKS", {"seq": 1}),
            ),
            (projector, created, _publish(projector, created)),
            (projector, endpoint_key, _publish(projector, endpoint_key)),
            (
                projector,
                "$JS.API.STREAM.INFO.KV_presets",
                _js_request(projector, "$JS.API.STREAM.INFO.KV_presets"),
            ),
        ]
        problems = await asyncio.gather(*(refused(uc, what, act) for uc, what, act in cases))
        assert [p for p in problems if p] == []
        print(f"\nNATS refusals checked (webhooks, presets, notifier): {len(cases)}")

        ajs = u["admin"].nc.jetstream()
        with pytest.raises(NotFoundError):
            await ajs.get_last_msg(wh, NAMES.delivery_subjects(ep, dl))
        for stream, consumer in (
            (NAMES.stream, names.NOTIFIER_JOBS_CONSUMER),
            (wh, names.NOTIFIER_DELIVERIES_CONSUMER),
        ):
            await ajs.consumer_info(stream, consumer)
        endpoints = await ajs.key_value(NAMES.webhook_endpoints_bucket)
        with pytest.raises(KeyNotFoundError):
            await endpoints.get(f"default.{ep}")


async def test_services_can_do_their_jobs(provisioned: ProdNats) -> None:
    job = new_job_id()
    before = len(provisioned.violations())
    async with users(provisioned, "api", "worker", "projector", "notifier") as u:
        api, worker, projector = u["api"].nc, u["worker"].nc, u["projector"].nc
        ajs, wjs, pjs = api.jetstream(), worker.jetstream(), projector.jetstream()
        # api: create a job, read it back, read the views
        await ajs.publish(NAMES.event_subject("ingest", job, "requested"), b"{}")
        await ajs.publish(NAMES.event_subject("ingest", job, "cancel_requested"), b"{}")
        got = await ajs.get_last_msg(NAMES.stream, NAMES.job_subjects(job), direct=True)
        assert got.subject == NAMES.event_subject("ingest", job, "cancel_requested")
        await ajs.key_value(NAMES.jobs_bucket)
        # what the SSE route does: a batched direct get of the history, and a core
        # subscription on the job's subjects as a wake-up (no consumer)
        batch = {"seq": 1, "next_by_subj": NAMES.job_subjects(job), "batch": 10}
        first = await api.request(
            f"$JS.API.DIRECT.GET.{NAMES.stream}", json.dumps(batch).encode(), timeout=5
        )
        assert first.headers and first.headers["Nats-Subject"].endswith(f"{job}.requested")
        woken = asyncio.Event()

        async def on_wake(_msg: Any) -> None:
            woken.set()

        wake_sub = await api.subscribe(NAMES.job_subjects(job), cb=on_wake)
        await api.flush()
        # worker: its dispatcher reads the job (direct get) and releases it (fair dispatch,
        # docs/fairness.md), keeping lease, checkpoint and usage in KV; a worker takes it,
        # reports on it, fills the render cache
        nudge = await worker.subscribe(NAMES.requested_filter())
        read = await worker.request(
            f"$JS.API.DIRECT.GET.{NAMES.stream}", json.dumps(batch).encode(), timeout=5
        )
        assert read.headers and read.headers["Nats-Subject"].endswith(f"{job}.requested")
        await nudge.unsubscribe()
        # an idle worker is woken by the work its consumers take (WorkerService._fetch_loop)
        announced = await worker.subscribe(NAMES.released_filter("ingest"))
        await worker.flush()
        await wjs.publish(NAMES.event_subject("ingest", job, "released"), b"{}")
        assert (await announced.next_msg(timeout=5)).subject.endswith(f"{job}.released")
        await announced.unsubscribe()
        for bucket in (NAMES.scheduler_lease_bucket, NAMES.scheduler_bucket, NAMES.usage_bucket):
            kv = await wjs.key_value(bucket)
            await kv.put(f"t{job}", b"1")
            assert (await kv.get(f"t{job}")).value == b"1"
        sub = await wjs.pull_subscribe_bind(durable="workers-ingest", stream=NAMES.stream)
        msgs = await sub.fetch(1, timeout=5)
        assert msgs[0].subject == NAMES.event_subject("ingest", job, "released")
        await wjs.publish(NAMES.event_subject("ingest", job, "started"), b"{}")
        await asyncio.wait_for(woken.wait(), timeout=5)  # the api's wake-up saw it
        await wake_sub.unsubscribe()
        await wjs.publish(NAMES.event_subject("ingest", job, "completed"), b"{}")
        await msgs[0].ack_sync()
        cache = await wjs.key_value(NAMES.render_cache_bucket)
        await cache.put(f"k{job}", b"previews/x.opus")
        assert (await cache.get(f"k{job}")).value == b"previews/x.opus"
        # projector: read the whole stream in order, write views and the checkpoint
        seen: list[str] = []
        done = asyncio.Event()

        async def on_msg(msg: Any) -> None:
            seen.append(msg.subject)
            if msg.subject.endswith(f"{job}.completed"):
                done.set()

        psub = await pjs.subscribe(
            NAMES.stream_subjects, stream=NAMES.stream, ordered_consumer=True, cb=on_msg
        )
        await asyncio.wait_for(done.wait(), timeout=10)
        await psub.unsubscribe()
        views = await pjs.key_value(NAMES.jobs_bucket)
        await views.put(job, b"{}")
        state = await pjs.key_value(NAMES.projector_state_bucket)
        await state.put("checkpoint-test", b"1")
        await _notifier_does_its_part(u["notifier"].nc, job)
    assert provisioned.violations()[before:] == []


async def test_listings_work_both_ways_under_least_privilege(provisioned: ProdNats) -> None:
    """shared/kv_read.py as the API and the notifier list keys: the leader's last revision
    (message get), then one multi_last direct get, or an ordered consumer when that can't
    answer (more than 1024 keys, a replica behind): both ways, nothing refused."""
    before = len(provisioned.violations())
    tenant = f"lp{new_job_id().lower()}"
    lists = {
        "api": (NAMES.presets_bucket, NAMES.usage_bucket, NAMES.webhook_endpoints_bucket),
        "notifier": (NAMES.webhook_endpoints_bucket,),
    }
    async with users(provisioned, "admin", "api", "notifier") as u:
        ajs = u["admin"].nc.jetstream()
        for bucket in lists["api"]:
            kv = await ajs.key_value(bucket)
            await kv.put(f"{tenant}.a", b"{}")
            await kv.put(f"{tenant}.b", b"{}")
            await kv.delete(f"{tenant}.b")
        for user, buckets in lists.items():
            for bucket in buckets:
                for direct in (True, False):
                    found = await kv_read.read_latest(
                        u[user].nc, bucket, names.tenant_keys(tenant), direct=direct
                    )
                    assert list(found) == [f"{tenant}.a"], (user, bucket, direct)
        assert [e for c in u.values() for e in c.errors] == []
    assert provisioned.violations()[before:] == []


async def _notifier_does_its_part(nc: Client, job: str) -> None:
    """Take terminal events from notifier-jobs, read endpoints and views, append a delivery and
    an attempt, take the delivery from notifier-deliveries, record endpoint health."""
    js = nc.jetstream()
    fanout = await js.pull_subscribe_bind(durable=names.NOTIFIER_JOBS_CONSUMER, stream=NAMES.stream)
    terminal = NAMES.event_subject("ingest", job, "completed")
    for _ in range(100):  # earlier tests' job ends come first
        msg = (await fanout.fetch(1, timeout=5))[0]
        await msg.ack_sync()
        if msg.subject == terminal:
            break
    else:
        raise AssertionError("the job's terminal event never reached notifier-jobs")
    got = await js.get_last_msg(NAMES.stream, NAMES.job_subjects(job), direct=True)
    assert got.subject == terminal
    await js.key_value(NAMES.jobs_bucket)
    endpoints = await js.key_value(NAMES.webhook_endpoints_bucket)
    ep, dl = new_endpoint_id(), f"msg_{new_job_id()}"
    await endpoints.put(f"default.{ep}", b"{}")  # health is recorded with CAS on the entry
    assert (await endpoints.get(f"default.{ep}")).value == b"{}"
    await endpoints.delete(f"default.{ep}")
    await js.publish(NAMES.webhook_subject(ep, dl, "created"), b"{}")
    await js.publish(NAMES.webhook_subject(ep, dl, "attempted"), b"{}")
    sub = await js.pull_subscribe_bind(
        durable=names.NOTIFIER_DELIVERIES_CONSUMER, stream=NAMES.webhooks_stream
    )
    for _ in range(100):
        msg = (await sub.fetch(1, timeout=5))[0]
        await msg.in_progress()
        await msg.ack_sync()
        if msg.subject == NAMES.webhook_subject(ep, dl, "created"):
            break
    else:
        raise AssertionError("the delivery never reached notifier-deliveries")
    history = await js.get_last_msg(
        NAMES.webhooks_stream, NAMES.delivery_subjects(ep, dl), direct=True
    )
    assert history.subject == NAMES.webhook_subject(ep, dl, "attempted")
    await js.consumer_info(NAMES.stream, names.NOTIFIER_JOBS_CONSUMER)  # /metrics


async def test_full_job_runs_under_least_privilege(provisioned: ProdNats, tmp_path: Path) -> None:
    """API, projector, worker and notifier each connect as their own user: an upload completes,
    every job route works, a webhook is delivered and a preset is saved and used."""
    before = len(provisioned.violations())
    base = Settings(
        data_dir=tmp_path,
        storage_url=(tmp_path / "storage").resolve().as_uri(),
        signing_secret="s",
        signing_secret_is_ephemeral=False,
        worker_concurrency=1,
        log_format="console",
        url_allow_hosts=frozenset({"127.0.0.1"}),  # the loopback receiver
        webhook_secret_key=WEBHOOK_KEY,
        webhook_retry_schedule_s=(0.2,),
        webhook_timeout_s=2.0,
    )
    receiver = Receiver(port=free_port(), script=[503]).start()  # one failed attempt first
    try:
        async with _services(base, provisioned.url) as client:
            wav = write_tone(tmp_path / "tone.wav", seconds=1.0)
            with wav.open("rb") as f:
                resp = await client.post(
                    "/api/audio/ingest", files={"file": ("tone.wav", f, "audio/wav")}
                )
            assert resp.status_code == 202, resp.text
            view = await wait_for_job(client, resp.json()["jobId"], timeout=60)
            assert view["status"] == "completed", view
            assert abs(view["result"]["durationMs"] - 1000) <= 20
            await _every_route_under_least_privilege(client, view["result"]["sourceKey"])
            scrape = await client.get("/metrics")  # queue depth + projector checkpoint reads
            assert scrape.status_code == 200
            assert 'audioprep_queue_pending{kind="ingest"}' in scrape.text
            assert "audioprep_projector_checkpoint_lag_events" in scrape.text
            await _webhooks_and_presets(client, view["result"]["sourceKey"], receiver)
    finally:
        receiver.stop()
    assert provisioned.violations()[before:] == []


@contextlib.asynccontextmanager
async def _services(base: Settings, url: Callable[[str], str]) -> AsyncIterator[AsyncTestClient]:  # type: ignore[type-arg]
    """Projector, worker and notifier in this loop and the API's test client, each with the
    URL of its own user."""
    from audioprep.services.api.app import create_app
    from audioprep.services.notifier.main import run_notifier
    from audioprep.services.projector.main import run_projector
    from audioprep.services.worker.main import run_worker

    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(run(base.with_(nats_url=url(user)), stop))
        for user, run in (
            ("projector", run_projector),
            ("worker", run_worker),
            ("notifier", run_notifier),
        )
    ]
    try:
        app = create_app(base.with_(nats_url=url("api")))
        async with AsyncTestClient(app=app, timeout=30) as client:
            yield client
    finally:
        stop.set()
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
    assert [r for r in results if r is not None] == []


async def _webhooks_and_presets(client: Any, source_key: str, receiver: Receiver) -> None:
    """Register a webhook for saves, keep a preset (create, list, replace), save with it: the
    delivery reaches the receiver after one retry, signed; then list deliveries, replay,
    rotate, enable, delete."""
    resp = await client.post(
        "/api/webhooks",
        json={"url": receiver.url, "events": ["job.completed"], "kinds": ["save"]},
    )
    assert resp.status_code == 201, resp.text
    endpoint = resp.json()
    receiver.secret = endpoint["secret"]
    listed = (await client.get("/api/webhooks")).json()["webhooks"]
    assert endpoint["id"] in [w["id"] for w in listed]

    preset = {"name": "lp-show", "recipe": {"gainDb": -6}, "format": "flac"}
    assert (await client.post("/api/presets", json=preset)).status_code == 201
    replaced = await client.put(
        "/api/presets/lp-show", json={"recipe": {"gainDb": -9}, "format": "flac"}
    )
    assert replaced.status_code == 200 and replaced.json()["version"] == 2, replaced.text
    names_listed = [p["name"] for p in (await client.get("/api/presets")).json()["presets"]]
    assert names_listed == ["lp-show"]
    save = await client.post(
        "/api/audio/edit/save", json={"sourceKey": source_key, "preset": "lp-show"}
    )
    assert save.status_code == 202, save.text
    job_id = save.json()["jobId"]
    view = await wait_for_job(client, job_id, timeout=60)
    assert view["status"] == "completed", view
    assert view["result"]["format"] == "flac"  # the preset's format, and its gain:
    report = view["result"]["loudnessReport"]
    gain = report["after"]["integratedLufs"] - report["before"]["integratedLufs"]
    assert abs(gain - -9) <= 0.5, report

    got = await receiver.wait_for(1, ok=True, timeout=30)
    assert [r.status for r in receiver.snapshot()][:2] == [503, 200]
    first = got[0]
    assert first.verified, first.error
    assert first.json()["type"] == "job.completed"
    assert first.json()["data"]["jobId"] == job_id
    assert first.json()["data"]["result"]["format"] == "flac"
    deliveries_url = f"/api/webhooks/{endpoint['id']}/deliveries"
    delivery = await _wait_delivered(client, deliveries_url, first.webhook_id)
    assert delivery["attempts"] == 2 and delivery["jobId"] == job_id
    detail = await client.get(f"{deliveries_url}/{first.webhook_id}")
    assert [h["outcome"] for h in detail.json()["history"]] == ["retrying", "delivered"]

    replay = await client.post(f"{deliveries_url}/{first.webhook_id}/replay")
    assert replay.status_code == 202, replay.text
    again = (await receiver.wait_for(2, ok=True, timeout=30))[1]
    assert again.verified and again.webhook_id == replay.json()["id"] != first.webhook_id
    await _wait_delivered(client, deliveries_url, again.webhook_id)

    base = f"/api/webhooks/{endpoint['id']}"
    assert (await client.post(f"{base}/rotate-secret")).status_code == 200
    assert (await client.post(f"{base}/enable")).status_code == 200
    assert (await client.delete("/api/presets/lp-show")).status_code == 204
    assert (await client.delete(base)).status_code == 204
    assert (await client.get(base)).status_code == 404


async def _wait_delivered(client: Any, url: str, delivery_id: str) -> dict[str, Any]:
    """The delivery as the API lists it, once it says delivered (recorded after the 2xx)."""
    deadline = asyncio.get_running_loop().time() + 15
    while True:
        resp = await client.get(url)
        assert resp.status_code == 200, resp.text
        found = [d for d in resp.json()["deliveries"] if d["id"] == delivery_id]
        if found and found[0]["status"] == "delivered":
            return dict(found[0])
        assert asyncio.get_running_loop().time() < deadline, resp.json()
        await asyncio.sleep(0.05)


async def _every_route_under_least_privilege(client: Any, source_key: str) -> None:
    """Preview (render, coalesced twin, cache hit), SSE, save + download, cancel."""
    body = {"sourceKey": source_key, "recipe": {"gainDb": -3}}
    first, twin = await asyncio.gather(
        client.post("/api/audio/edit/preview", json=body),
        client.post("/api/audio/edit/preview", json=body),
    )
    assert first.status_code == twin.status_code == 202, (first.text, twin.text)
    for resp in (first, twin):
        view = await wait_for_job(client, resp.json()["jobId"], timeout=60)
        assert view["status"] == "completed", view
    events = await client.get(f"/api/audio/jobs/{first.json()['jobId']}/events")
    assert events.status_code == 200 and "JobCompleted" in events.text, events.text[-300:]
    # Live SSE (direct gets + a core wake-up subscription) on the app's own loop, while this
    # loop runs the worker: a save followed from JobRequested to JobCompleted.
    live = await client.post("/api/audio/edit/save", json={**body, "format": "wav"})
    assert live.status_code == 202, live.text
    url = f"/api/audio/jobs/{live.json()['jobId']}/events"
    stream = await _in_app_loop(client, lambda c: c.get(url, timeout=60))
    text = stream.text.replace("\r\n", "\n")
    names = re.findall(r"^event: (\w+)$", text, flags=re.M)
    ids = [int(i) for i in re.findall(r"^id: (\d+)$", text, flags=re.M)]
    assert names[:1] == ["JobRequested"] and names[-1:] == ["JobCompleted"], text[-300:]
    assert ids == sorted(set(ids)) and len(ids) == len(names)
    hit = await client.post("/api/audio/edit/preview", json=body)
    assert hit.status_code == 202 and hit.json()["status"] == "completed", hit.text
    assert (
        await client.get(f"/api/audio/edit/preview/{hit.json()['jobId']}/audio")
    ).status_code == 200
    save = await client.post("/api/audio/edit/save", json={**body, "format": "flac"})
    view = await wait_for_job(client, save.json()["jobId"], timeout=60)
    assert view["status"] == "completed", view
    link = urlsplit(view["downloadUrl"])
    assert (await client.get(f"{link.path}?{link.query}")).status_code == 200
    doomed = await client.post("/api/audio/edit/save", json={**body, "format": "mp3"})
    cancel = await client.post(f"/api/audio/jobs/{doomed.json()['jobId']}/cancel")
    assert cancel.status_code in (200, 202), cancel.text
    view = await wait_for_job(client, doomed.json()["jobId"], timeout=60)
    assert view["status"] in ("cancelled", "completed"), view


async def _in_app_loop(client: Any, fn: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
    """Run `fn` on the test client's app loop (see tests/e2e/test_api_support.in_app_loop)."""

    async def call() -> T:
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            return await fn(c)

    return await asyncio.wrap_future(client.blocking_portal.start_task_soon(call))


async def test_service_connect_uses_the_users_inbox(provisioned: ProdNats) -> None:
    nc = await connect(Settings(nats_url=provisioned.url("api")), "api")
    try:
        assert nc.new_inbox().startswith("_INBOX.api.")
        await nc.jetstream().stream_info(NAMES.stream)
    finally:
        await nc.close()


async def test_api_cannot_alter_worker_consumers(provisioned: ProdNats) -> None:
    """An unnamed CONSUMER.CREATE naming a durable in its body would update it: api is refused."""
    async with users(provisioned, "api", "admin") as u:
        ajs = u["admin"].nc.jetstream()
        try:
            request = {
                "stream_name": NAMES.stream,
                "config": {
                    "name": "workers-ingest",
                    "filter_subject": NAMES.requested_filter("ingest"),
                    "ack_policy": "explicit",
                    "deliver_policy": "all",
                    "max_deliver": 99,
                },
            }
            creates = [  # unnamed, named, and named with a filter in the subject
                "$JS.API.CONSUMER.CREATE.JOBS",
                "$JS.API.CONSUMER.CREATE.JOBS.workers-ingest",
                f"$JS.API.CONSUMER.CREATE.JOBS.workers-ingest.{NAMES.requested_filter('ingest')}",
            ]
            api = u["api"]
            problems = await asyncio.gather(
                *(refused(api, subject, _js_request(api, subject, request)) for subject in creates)
            )
            assert [p for p in problems if p] == []
            info = await ajs.consumer_info(NAMES.stream, "workers-ingest")
            assert info.config.max_deliver != 99
        finally:  # put the consumer back as provisioning defines it
            await ajs.delete_consumer(NAMES.stream, "workers-ingest")
            await provision(ajs, Settings(nats_url=provisioned.url("admin")))


def test_config_refuses_to_load_without_passwords() -> None:
    import os
    import subprocess

    from audioprep.shared.nats_server import nats_server_binary

    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIOPREP_NATS_")}
    bad = subprocess.run(
        [nats_server_binary(), "-c", str(PROD_CONFIG), "-t"], env=env, capture_output=True
    )
    assert bad.returncode != 0
    assert b"AUDIOPREP_NATS_" in bad.stdout + bad.stderr
    env.update({f"AUDIOPREP_NATS_{u.upper()}_PASSWORD": password(u) for u in USERS})
    good = subprocess.run(
        [nats_server_binary(), "-c", str(PROD_CONFIG), "-t"], env=env, capture_output=True
    )
    assert good.returncode == 0, good.stderr


async def test_passwords_stay_out_of_errors() -> None:
    from audioprep.shared.nats_conn import NatsUnavailable, redact_url
    from audioprep.shared.nats_server import free_port

    url = f"nats://api:s3cr3t-pw@127.0.0.1:{free_port()}"
    with pytest.raises(NatsUnavailable) as info:
        await connect(Settings(nats_url=url), "api", connect_timeout=1)
    assert "s3cr3t-pw" not in str(info.value) and "api:***@" in str(info.value)
    assert redact_url("nats://a:b@h:1,nats://tok@h2:2") == "nats://a:***@h:1,nats://***:***@h2:2"
    assert redact_url("nats://h:4222") == "nats://h:4222"


async def test_a_prefixed_deployment_runs_under_its_generated_config(tmp_path: Path) -> None:
    """`audioprep nats-config --prefix pp --prefix qq` on one server: pp's services, each as
    its own user (`pp-api`, …), run a job; pp's users can't reach qq's or the default names."""
    pp, qq = Names("pp"), Names("qq")
    (tmp_path / "nats.conf").write_text((REPO_ROOT / "deploy" / "nats.conf").read_text())
    config = tmp_path / "nats-prod.conf"
    config.write_text(render_config([pp, qq]))
    log_file = tmp_path / "nats.log"
    server = NatsServer(tmp_path / "store", config=config, log_file=log_file)
    with pytest.MonkeyPatch.context() as mp:
        for n in (pp, qq):
            for u in service_users(n):
                mp.setenv(u.password_env, password(u.user))
        server.start()
    prod = ProdNats(server=server, log_file=log_file)
    url = {u.role: prod.url(u.user, password(u.user)) for u in service_users(pp)}
    try:
        base = Settings(
            names=pp,
            data_dir=tmp_path,
            storage_url=(tmp_path / "storage").resolve().as_uri(),
            signing_secret="s",
            signing_secret_is_ephemeral=False,
            worker_concurrency=1,
            log_format="console",
        )
        admin = await nats.connect(url["admin"], allow_reconnect=False)
        await provision(admin.jetstream(), base)
        await admin.close()
        async with _services(base, url.__getitem__) as client:
            wav = write_tone(tmp_path / "tone.wav", seconds=0.5)
            with wav.open("rb") as f:
                resp = await client.post("/api/audio/ingest", files={"file": ("t.wav", f)})
            assert resp.status_code == 202, resp.text
            view = await wait_for_job(client, resp.json()["jobId"], timeout=60)
            assert view["status"] == "completed", view
            assert abs(view["result"]["durationMs"] - 500) <= 20
        assert prod.violations() == []

        job = new_job_id()
        clients = {role: await _connect_as(url[role]) for role in ("api", "worker", "notifier")}
        api, worker, notifier = clients["api"], clients["worker"], clients["notifier"]
        try:
            default_request = Names().event_subject("ingest", job, "requested")
            qq_request = qq.event_subject("ingest", job, "requested")
            qq_next = names.consumer_next_subject(qq.stream, names.worker_consumer("ingest"))
            qq_views = names.stream_info_subject(names.kv_stream(qq.jobs_bucket))
            cases: list[tuple[UserClient, str, Callable[[], Awaitable[Any]]]] = [
                (api, default_request, _publish(api, default_request)),
                (api, qq_request, _publish(api, qq_request)),
                (api, qq_views, _js_request(api, qq_views)),
                (worker, qq_next, _js_request(worker, qq_next, {"batch": 1})),
                (
                    worker,
                    qq.event_subject("ingest", job, "cancel_requested"),
                    _subscribe(worker, qq.event_subject("ingest", job, "cancel_requested")),
                ),
                (notifier, "_INBOX.qq-notifier.>", _subscribe(notifier, "_INBOX.qq-notifier.>")),
            ]
            problems = await asyncio.gather(*(refused(uc, w, act) for uc, w, act in cases))
            assert [p for p in problems if p] == []
        finally:
            for c in clients.values():
                await c.nc.close()
    finally:
        server.stop()
