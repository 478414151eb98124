"""A real S3-compatible server (moto) on a free loopback port, and storage on both backends."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from nats.aio.client import Client

from audioprep.shared.names import Names
from audioprep.shared.nats_conn import connect
from audioprep.shared.nats_server import NatsServer, free_port, wait_for_port
from audioprep.shared.provision import provision
from audioprep.shared.settings import Settings
from audioprep.shared.storage import Storage, open_storage

REGION = "us-east-1"
# moto accepts any credentials; they only have to be present and consistent.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "audioprep-test",
    "AWS_SECRET_ACCESS_KEY": "audioprep-test-secret",
    "AWS_REGION": REGION,
    "AWS_ALLOW_HTTP": "true",
}


@dataclass(frozen=True)
class Moto:
    endpoint: str

    def client(self) -> object:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        )

    def create_bucket(self, prefix: str = "audioprep") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)  # type: ignore[attr-defined]
        return name


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    """moto_server as a child process (its own GIL), loopback only."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port("127.0.0.1", port, timeout=30)
        yield Moto(endpoint=f"http://127.0.0.1:{port}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def aws_env(moto_server: Moto) -> Iterator[dict[str, str]]:
    """The standard AWS_* variables pointing at moto, as a user would export them."""
    env = {**AWS_ENV, "AWS_ENDPOINT_URL": moto_server.endpoint}
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_BUCKET"):
            mp.delenv(name, raising=False)
        for name, value in env.items():
            mp.setenv(name, value)
        yield env


@pytest.fixture(scope="module")
def bucket(moto_server: Moto, aws_env: dict[str, str]) -> str:
    return moto_server.create_bucket()


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """The same contract, both backends; each test gets a fresh directory or prefix."""
    if request.param == "local":
        return open_storage((tmp_path / "store").as_uri())
    bucket_name: str = request.getfixturevalue("bucket")
    return open_storage(f"s3://{bucket_name}/t-{uuid.uuid4().hex[:10]}")


# The storage suite's own names on the session's nats-server (tests/services.py): workers
# of other suites (local storage) never take these jobs.
STORAGE_NAMES = Names("st")


def own_settings(nats: NatsServer, storage_url: str, data: Path) -> Settings:
    return Settings(
        nats_url=nats.url,
        names=STORAGE_NAMES,
        data_dir=data,
        storage_url=storage_url,
        signing_secret="test-secret",
        signing_secret_is_ephemeral=False,
        worker_concurrency=2,
        log_format="console",
    )


@pytest.fixture(scope="module")
async def own_nc(
    nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Client]:
    settings = own_settings(nats_server, "", tmp_path_factory.mktemp("unused"))
    client = await connect(settings, "tests-storage")
    await provision(client.jetstream(), settings)
    yield client
    await client.close()
