"""Shared fixtures: the one real nats-server of the test run, real storage, the services
in-process. Suites that must not share consumers with this stack get their own names on the
same server (tests/services.py); only the fault suites, which kill, fill or reconfigure a
server, start their own."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from _pytest.nodeid import coerce_node_id
from litestar.testing import AsyncTestClient
from nats.aio.client import Client

from audioprep.shared.nats_conn import connect
from audioprep.shared.nats_server import NatsServer
from audioprep.shared.provision import provision
from audioprep.shared.settings import Settings
from tests.waiting import close_clients


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under `-n 2` (make test): each test file stays on one process (its module fixtures,
    and tests that check what the file's other tests saw), and the fault suites run one after
    another on one process (they kill, pause, fill and partition servers, mount tmpfs, make
    network namespaces and time against ack_wait); files are spread over both processes.

    xdist's `--dist loadgroup` schedules by a `@group` suffix on the node id, which its own
    hook sets through `item._nodeid`; pytest 9 keeps the id in `item._id`, so that suffix
    never arrives and every test would be scheduled alone. The suffix is set here instead.
    schemathesis also gives every item it generates for one test the same node id (the
    operation is only in the name), and xdist would run one of them: each gets its name."""
    on_xdist_worker = hasattr(config, "workerinput")
    for item in items:
        path = item.nodeid.split("::", 1)[0]  # the file, also for generated (parametrized) items
        heavy = path.startswith(("tests/faults/", "tests/fairness/"))
        group = "faults" if heavy else path
        item.add_marker(pytest.mark.xdist_group(group))
        if on_xdist_worker:
            head, _, _ = item.nodeid.rpartition("::")
            item._id = coerce_node_id(f"{head}::{item.name}@{group}")


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("nats-store"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def base_settings(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    data = tmp_path_factory.mktemp("data")
    return Settings(
        nats_url=nats_server.url,
        data_dir=data,
        storage_url=(data / "storage").resolve().as_uri(),
        signing_secret="test-secret",
        signing_secret_is_ephemeral=False,
        worker_concurrency=2,
        log_format="console",
        url_allow_hosts=frozenset({"127.0.0.1", "localhost"}),
    )


@pytest.fixture(scope="session")
async def nc(base_settings: Settings) -> AsyncIterator[Client]:
    client = await connect(base_settings, "tests")
    await provision(client.jetstream(), base_settings)
    yield client
    await close_clients()  # tests.waiting's wake-up connections
    await client.close()


@dataclass
class Stack:
    settings: Settings
    client: AsyncTestClient  # type: ignore[type-arg]
    nc: Client


@contextlib.asynccontextmanager
async def running_stack(
    settings: Settings, nc: Client, *, workers: int = 1
) -> AsyncIterator[Stack]:
    """API (in-process test client), projector and worker tasks against the real server."""
    from audioprep.services.api.app import create_app
    from audioprep.services.projector.main import run_projector
    from audioprep.services.worker.main import run_worker

    stop = asyncio.Event()
    tasks = [asyncio.create_task(run_projector(settings, stop))]
    tasks += [asyncio.create_task(run_worker(settings, stop)) for _ in range(workers)]
    try:
        app = create_app(settings)
        app.state.settings = settings  # tests.jobs_helpers.wait_for_job wakes on its names
        async with AsyncTestClient(app=app, timeout=30) as client:
            yield Stack(settings=settings, client=client, nc=nc)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=60)


@pytest.fixture(scope="session")
async def stack(base_settings: Settings, nc: Client) -> AsyncIterator[Stack]:
    async with running_stack(base_settings, nc) as s:
        yield s


@pytest.fixture
def media_dir(tmp_path: Path) -> Path:
    d = tmp_path / "media"
    d.mkdir()
    return d
