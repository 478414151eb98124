"""A second, locked-down stack on its own nats-server: API keys for two tenants, no allow-list
for loopback URLs except the name `localhost` (redirect tests), so nothing the shared session
stack does (its workers allow 127.0.0.1) can pick up these jobs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from audioprep.shared.names import Names
from audioprep.shared.nats_conn import connect
from audioprep.shared.nats_server import NatsServer
from audioprep.shared.provision import provision
from audioprep.shared.settings import Settings
from audioprep.shared.storage import Storage, open_storage
from tests.conftest import Stack, running_stack

KEY_A = "key-a-0123456789abcdef0123456789"
KEY_B = "key-b-0123456789abcdef0123456789"
TENANT_A = "tenantA"
TENANT_B = "tenantB"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


A = bearer(KEY_A)
B = bearer(KEY_B)


@pytest.fixture(scope="session")
def secure_settings(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """API keys on, dev mode off: its own names on the session's nats-server."""
    data = tmp_path_factory.mktemp("secure-data")
    return Settings(
        nats_url=nats_server.url,
        names=Names("sec"),
        data_dir=data,
        storage_url=(data / "storage").resolve().as_uri(),
        signing_secret="secure-test-secret-0123456789abcdef",
        signing_secret_is_ephemeral=False,
        worker_concurrency=2,
        log_format="console",
        api_keys={KEY_A: TENANT_A, KEY_B: TENANT_B},
        url_allow_hosts=frozenset({"localhost"}),
        max_upload_bytes=2 * 1024 * 1024,
        max_duration_s=600,
        dev_mode=False,
    )


@pytest.fixture(scope="session")
async def secure_nc(secure_settings: Settings) -> AsyncIterator[Client]:
    client = await connect(secure_settings, "tests")
    await provision(client.jetstream(), secure_settings)
    yield client
    await client.close()


@pytest.fixture(scope="session")
async def secure_stack(secure_settings: Settings, secure_nc: Client) -> AsyncIterator[Stack]:
    async with running_stack(secure_settings, secure_nc) as s:
        yield s


@pytest.fixture(scope="session")
def secure_storage(secure_settings: Settings) -> Storage:
    return open_storage(secure_settings.storage)


def storage_root(settings: Settings) -> Path:
    return (settings.data_dir / "storage").resolve()
