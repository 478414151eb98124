"""schemathesis against the served OpenAPI schema of a live API (uvicorn on a free port).

Every operation gets schema-valid and schema-violating requests; no answer may be a 5xx and
every answer must conform to the schema (status code, content type, body). The app runs on
its own nats-server with no workers, so the jobs it accepts just wait and disturb nothing.
Also here: a real chunked upload over a socket, cut off by the size limit mid-stream.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, Phase
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from services.api.app import create_app
from shared.nats_server import NatsServer, free_port
from shared.provision import provision
from shared.settings import Settings
from tests.security.conftest import KEY_A, KEY_B, TENANT_A, TENANT_B

AUTH = {"Authorization": f"Bearer {KEY_A}"}
EXAMPLES = {GenerationMode.POSITIVE: 25, GenerationMode.NEGATIVE: 15}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@dataclass
class LiveApi:
    base_url: str
    settings: Settings


@pytest.fixture(scope="module")
def live_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApi]:
    import asyncio

    import nats

    base = tmp_path_factory.mktemp("fuzz")
    server = NatsServer(base / "nats").start()
    settings = Settings(
        nats_url=server.url,
        data_dir=base,
        storage_url=(base / "storage").resolve().as_uri(),
        signing_secret="fuzz-secret-0123456789abcdef0123456789",
        signing_secret_is_ephemeral=False,
        log_format="console",
        log_level="ERROR",
        api_keys={KEY_A: TENANT_A, KEY_B: TENANT_B},
        max_upload_bytes=2 * 1024 * 1024,
        dev_mode=False,
    )

    async def prepare() -> None:
        nc = await nats.connect(server.url)
        await provision(nc.jetstream(), settings)
        await nc.close()

    asyncio.run(prepare())
    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="error", lifespan="on"
    )
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield LiveApi(base_url=f"http://127.0.0.1:{port}", settings=settings)
    finally:
        uv.should_exit = True
        thread.join(15)
        server.stop()


def test_schema_fuzz_no_server_errors_and_conforming_responses(live_api: LiveApi) -> None:
    schema = schemathesis.openapi.from_url(f"{live_api.base_url}/schema/openapi.json")
    statuses: Counter[int] = Counter()
    skipped: list[str] = []
    failures: set[str] = set()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 6, [op.label for op in operations]

    def fuzz(operation: Any, mode: GenerationMode, examples: int) -> None:
        checks = CHECKS if mode is GenerationMode.POSITIVE else CHECKS[:1]

        @hypothesis.settings(
            max_examples=examples,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            response = case.call(base_url=live_api.base_url, headers=AUTH, timeout=15)
            statuses[response.status_code] += 1
            try:
                case.validate_response(response, checks=checks, headers=AUTH)
            except (AssertionError, FailureGroup) as exc:  # collect them all, one line each
                lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
                failures.add(
                    f"{operation.label} -> {response.status_code}: " + " / ".join(lines[:6])
                )

        try:
            run()
        except hypothesis.errors.Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE, operation.label
            skipped.append(f"{operation.label} ({mode.value})")  # nothing to break

    for operation in operations:
        for mode, examples in EXAMPLES.items():
            fuzz(operation, mode, examples)
    total = sum(statuses.values())
    print(
        f"\nschemathesis: {len(operations)} operations, {total} requests, "
        f"5xx: {sum(n for s, n in statuses.items() if s >= 500)}, "
        f"statuses {dict(sorted(statuses.items()))}; no negative cases possible: {skipped}"
    )
    assert not [s for s in statuses if s >= 500]
    assert sorted(failures) == []


def test_chunked_upload_cut_off_mid_stream(live_api: LiveApi) -> None:
    """3 MiB sent in chunks (no Content-Length) against 2 MiB: 413, nothing left in storage."""
    storage_root = Path(live_api.settings.data_dir) / "storage"
    before = {p for p in storage_root.rglob("*") if p.is_file()}
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        yield b'--B\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n\r\n'
        for _ in range(48):
            sent += 64 * 1024
            yield b"\0" * (64 * 1024)
        yield b"\r\n--B--\r\n"

    headers = {**AUTH, "content-type": "multipart/form-data; boundary=B"}
    try:
        resp = httpx.post(
            f"{live_api.base_url}/api/audio/ingest", content=body(), headers=headers, timeout=30
        )
    except httpx.TransportError as exc:  # the server may close before we finish sending
        pytest.fail(f"no 413 answer: {exc!r}")
    assert resp.status_code == 413, resp.text
    assert resp.json()["code"] == "too_large"
    after = {p for p in storage_root.rglob("*") if p.is_file()}
    assert after - before == set()
    print(f"\nchunked upload: refused after {sent} of {48 * 64 * 1024} bytes sent")
