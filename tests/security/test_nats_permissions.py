"""deploy/nats-prod.conf: every service can do its job as its own user, and nothing more."""

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
from audioprep.shared import names
from audioprep.shared.ids import new_job_id
from audioprep.shared.names import Names
from audioprep.shared.nats_conn import connect, inbox_prefix_for
from audioprep.shared.nats_server import REPO_ROOT, NatsServer
from audioprep.shared.provision import provision
from audioprep.shared.settings import Settings
from tests.jobs_helpers import wait_for_job
from tests.media import write_tone

NAMES = Names()  # the default prefix: what `audioprep up` uses

T = TypeVar("T")
PROD_CONFIG = REPO_ROOT / "deploy" / "nats-prod.conf"
USERS = ("admin", "api", "worker", "projector", "notifier")
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
    uc = UserClient(nc=None)  # type: ignore[arg-type]

    async def on_error(exc: Exception) -> None:
        uc.errors.append(str(exc))

    url = prod.url(user)
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


async def test_services_can_do_their_jobs(provisioned: ProdNats) -> None:
    job = new_job_id()
    before = len(provisioned.violations())
    async with users(provisioned, "api", "worker", "projector") as u:
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
        await wjs.publish(NAMES.event_subject("ingest", job, "released"), b"{}")
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
    assert provisioned.violations()[before:] == []


async def test_full_job_runs_under_least_privilege(provisioned: ProdNats, tmp_path: Path) -> None:
    """API, projector and worker each connect as their own user; an upload completes."""
    from audioprep.services.api.app import create_app
    from audioprep.services.projector.main import run_projector
    from audioprep.services.worker.main import run_worker

    before = len(provisioned.violations())
    base = Settings(
        data_dir=tmp_path,
        storage_url=(tmp_path / "storage").resolve().as_uri(),
        signing_secret="s",
        signing_secret_is_ephemeral=False,
        worker_concurrency=1,
        log_format="console",
    )
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(run_projector(base.with_(nats_url=provisioned.url("projector")), stop)),
        asyncio.create_task(run_worker(base.with_(nats_url=provisioned.url("worker")), stop)),
    ]
    wav = write_tone(tmp_path / "tone.wav", seconds=1.0)
    try:
        app = create_app(base.with_(nats_url=provisioned.url("api")))
        async with AsyncTestClient(app=app, timeout=30) as client:
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
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=60)
    assert provisioned.violations()[before:] == []


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
