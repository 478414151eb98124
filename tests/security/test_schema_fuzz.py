"""schemathesis against the served OpenAPI schema of a live API (uvicorn on a free port), with
every check it has (`--checks all`): no 5xx, status codes, content types, headers and bodies as
documented, schema-valid requests accepted (positive data acceptance), schema-violating ones
refused (negative data rejection), missing auth refused, unsupported methods 405 with `Allow`.
Cases come from its examples, coverage (boundaries, missing and wrong parts) and fuzzing phases.

The few answers a schema can't predict are the documented exceptions below (also listed in
docs/http-api.md "OpenAPI"): each one is matched on the check, the operation and the problem
`code`/`field` the API answered with, never on a bare status.

The app runs on its own nats-server with no workers, so the jobs it accepts just wait and
disturb nothing. Also here: a real chunked upload over a socket, cut off by the size limit.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import hypothesis
import nats
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, Phase
from PIL import Image
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.openapi.checks import RejectedPositiveData

from audioprep.domain.events import JobCancelled
from audioprep.services.api.app import create_app
from audioprep.services.api.openapi import complete_schema
from audioprep.shared import keys
from audioprep.shared.event_store import EventStore
from audioprep.shared.names import Names
from audioprep.shared.nats_server import NatsServer, free_port
from audioprep.shared.provision import provision
from audioprep.shared.settings import Settings
from tests.security.conftest import KEY_A, KEY_B, TENANT_A, TENANT_B

NAMES = Names("fuzz")  # its own names on the session's nats-server: no workers there

AUTH = {"Authorization": f"Bearer {KEY_A}"}
MAX_EXAMPLES = 60  # fuzzing examples per operation (coverage and examples phases come on top)

# (check failure, operationId, problem code, problem field or None = any): answers to
# schema-valid requests that depend on more than the request's shape.
DOCUMENTED_EXCEPTIONS: dict[tuple[type[Failure], str, str], set[str | None] | None] = {
    # `localhost` and `*.localhost` match the URL pattern (a host name) but are local.
    (RejectedPositiveData, "ingestAudio", "forbidden_url"): {"url"},
    # Rules across recipe fields: trim.endMs > trim.startMs; a preset excludes explicit targets.
    (RejectedPositiveData, "previewEdit", "invalid_recipe"): {
        "recipe.trim.endMs",
        "recipe.normalize.preset",
    },
    (RejectedPositiveData, "saveEdit", "invalid_recipe"): {
        "recipe.trim.endMs",
        "recipe.normalize.preset",
    },
    # A preset's recipe follows the same rules (routes/presets.py checks it as a save would).
    (RejectedPositiveData, "createPreset", "invalid_recipe"): {
        "recipe.trim.endMs",
        "recipe.normalize.preset",
    },
    (RejectedPositiveData, "replacePreset", "invalid_recipe"): {
        "recipe.trim.endMs",
        "recipe.normalize.preset",
    },
    # The SSRF guard on a webhook URL (docs/webhooks.md "SSRF guard"): a schema-valid string
    # that is no http(s) URL, a private/local target, a name that does not resolve.
    (RejectedPositiveData, "createWebhook", "forbidden_url"): {"url"},
    (RejectedPositiveData, "createWebhook", "invalid_url"): {"url"},
    (RejectedPositiveData, "createWebhook", "unresolvable_host"): {"url"},
    # POST /api/images: a schema-valid `file` is any bytes; only a JPEG or PNG (by content) of
    # at most 3000×3000 pixels that decodes is a picture (docs/publishing.md "Cover images").
    (RejectedPositiveData, "uploadImage", "unsupported_image"): {"file"},
    (RejectedPositiveData, "uploadImage", "invalid_image"): {"file"},
    (RejectedPositiveData, "uploadImage", "image_too_large"): {"file"},
    # GET /api/usage: `2026-13-45` has the shape of a date but is none; `to` before `from`,
    # or more than 366 days, is a rule across the two (docs/fairness.md).
    (RejectedPositiveData, "getUsage", "invalid_date"): {"from", "to"},
    (RejectedPositiveData, "getUsage", "invalid_date_range"): None,
}

SOURCE_KEY = keys.source_key(TENANT_A, "01FUZZSOURCE00000000000000", "source.wav")
statuses: defaultdict[str, Counter[int]] = defaultdict(Counter)
excused: Counter[str] = Counter()


@dataclass
class LiveApi:
    base_url: str
    settings: Settings
    job_ids: list[str]  # finished (cancelled) jobs of tenant A: an ingest, a preview, a save


def _finished_jobs(base_url: str, nats_url: str) -> list[str]:
    """Jobs for the fuzzed job routes to find: cancelled before anyone ran them. With no worker
    here to confirm (the view is `cancelled` at once, the stream ends with the worker's
    JobCancelled), the test appends that event as a worker would, so an SSE request replays
    a finished stream and returns."""
    requests = [
        ("/api/audio/ingest", {"source": "url", "url": "https://example.com/a.mp3"}),
        ("/api/audio/edit/preview", {"sourceKey": SOURCE_KEY, "recipe": {"gainDb": -1}}),
        ("/api/audio/edit/save", {"sourceKey": SOURCE_KEY, "format": "flac"}),
    ]
    ids: list[tuple[str, Any]] = []
    with httpx.Client(base_url=base_url, headers=AUTH, timeout=15) as client:
        for path, body in requests:
            accepted = client.post(path, json=body)
            assert accepted.status_code == 202, accepted.text
            job_id = accepted.json()["jobId"]
            cancelled = client.post(f"/api/audio/jobs/{job_id}/cancel")
            assert cancelled.json()["status"] == "cancelled", cancelled.text
            ids.append((job_id, cancelled.json()["kind"]))

    async def confirm() -> None:
        nc = await nats.connect(nats_url)
        events = EventStore(nc, nc.jetstream(), NAMES)
        for job_id, kind in ids:
            await events.append_terminal(JobCancelled(job_id=job_id, kind=kind, tenant=TENANT_A))
        await nc.close()

    asyncio.run(confirm())
    return [job_id for job_id, _ in ids]


def fuzz_settings(base: Path, nats_url: str) -> Settings:
    return Settings(
        nats_url=nats_url,
        names=NAMES,
        data_dir=base,
        storage_url=(base / "storage").resolve().as_uri(),
        signing_secret="fuzz-secret-0123456789abcdef0123456789",
        signing_secret_is_ephemeral=False,
        log_format="console",
        log_level="ERROR",
        api_keys={KEY_A: TENANT_A, KEY_B: TENANT_B},
        max_upload_bytes=2 * 1024 * 1024,
        dev_mode=False,
        webhook_secret_key="fuzz-webhook-key-0123456789abcdef0123",
    )


def _document() -> dict[str, Any]:
    """The OpenAPI document of an app with these settings, as its start-up hook completes it.

    Built at import (pytest parametrizes from it; schemathesis' fixture-based loader doesn't
    work with this pytest) without connecting anywhere; test_the_served_schema_is_this_one
    checks that the live API serves exactly this document.
    """
    app = create_app(fuzz_settings(Path("/nonexistent"), "nats://127.0.0.1:1"))
    complete_schema(app)
    return app.openapi_schema.to_schema()


DOCUMENT = _document()
schema = schemathesis.openapi.from_dict(DOCUMENT)


@pytest.fixture(scope="module")
def live_api(
    nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveApi]:
    base = tmp_path_factory.mktemp("fuzz")
    server = nats_server
    settings = fuzz_settings(base, server.url)

    async def prepare() -> None:
        nc = await nats.connect(server.url)
        await provision(nc.jetstream(), settings)
        await nc.close()

    asyncio.run(prepare())
    source = base / "storage" / SOURCE_KEY
    source.parent.mkdir(parents=True)
    source.write_bytes(b"RIFF" + bytes(64))  # only its existence is checked: no workers here
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
    base_url = f"http://127.0.0.1:{port}"
    try:
        jobs = _finished_jobs(base_url, server.url)
        yield LiveApi(base_url=base_url, settings=settings, job_ids=jobs)
    finally:
        uv.should_exit = True
        thread.join(15)


def test_the_served_schema_is_this_one(live_api: LiveApi) -> None:
    served = httpx.get(f"{live_api.base_url}/schema/openapi.json", headers=AUTH, timeout=15)
    assert served.status_code == 200
    assert served.json() == json.loads(json.dumps(DOCUMENT))
    # With API keys configured the document says so: bearer auth on every /api/ operation but
    # the signed download (schemathesis' ignored_auth check then calls them without it).
    assert DOCUMENT["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    for path, item in DOCUMENT["paths"].items():
        for operation in item.values():
            keyed = path.startswith("/api/") and path != "/api/storage/download"
            assert operation["security"] == ([{"apiKey": []}] if keyed else []), path
            assert ("401" in operation["responses"]) == keyed, path


def _problem(response: Any) -> dict[str, Any]:
    if not response.headers.get("content-type", [""])[0].startswith("application/problem+json"):
        return {}
    try:
        body = json.loads(response.content)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


positive_cases: Counter[str] = Counter()


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 40, 90)).save(out, "PNG")
    return out.getvalue()


_PNG = _png()


def _with_state(case: Any, operation_id: str, live_api: LiveApi) -> None:
    """What a schema can't know, for schema-valid cases only (negative ones stay as generated):

    - an Idempotency-Key the generator repeats (`0`, `a`, …) with another body is rightly a 422
      `idempotency_key_reused`: each case gets its own key (its generated value as a prefix);
    - a random `sourceKey` is a 404: every other edit case names a stored source instead, so
      the accepted path (render cache, coalescing, the job) is fuzzed too;
    - a random job id is a 404: every other job case names one of the finished jobs instead
      (their views, events, a cancel of a finished job, a preview's audio that isn't there);
    - random bytes are no picture (415): every other image upload sends a real PNG, so the
      re-encode and store path is fuzzed too.
    """
    positive_cases[operation_id] += 1
    turn = positive_cases[operation_id]
    if "job_id" in (case.path_parameters or {}) and turn % 2 == 0:
        case.path_parameters["job_id"] = live_api.job_ids[(turn // 2) % len(live_api.job_ids)]
    headers = case.headers or {}
    if "Idempotency-Key" in headers:
        headers["Idempotency-Key"] = f"{headers['Idempotency-Key']}-{uuid.uuid4().hex}"[-200:]
    if operation_id == "uploadImage" and isinstance(case.body, dict) and turn % 2 == 0:
        case.body["file"] = _PNG
    if (
        operation_id in ("previewEdit", "saveEdit")
        and isinstance(case.body, dict)
        and turn % 2 == 0
    ):
        case.body["sourceKey"] = SOURCE_KEY


def _documented(failure: Failure, operation_id: str, response: Any) -> bool:
    problem = _problem(response)
    key = (type(failure), operation_id, str(problem.get("code")))
    if key not in DOCUMENTED_EXCEPTIONS:
        return False
    fields = DOCUMENTED_EXCEPTIONS[key]
    return fields is None or problem.get("field") in fields


@schema.parametrize()
@hypothesis.settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_api_passes_every_schemathesis_check(case: Any, live_api: LiveApi) -> None:
    operation_id = case.operation.definition.raw.get("operationId", case.operation.label)
    if case.meta is not None and case.meta.generation.mode.is_positive:
        _with_state(case, operation_id, live_api)
    response = case.call(base_url=live_api.base_url, headers=AUTH, timeout=15)
    statuses[operation_id][response.status_code] += 1
    try:
        case.validate_response(response, headers=AUTH)  # every check schemathesis has
    except FailureGroup as group:
        failures = list(group.exceptions)
    except Failure as failure:
        failures = [failure]
    else:
        return
    undocumented = [f for f in failures if not _documented(f, operation_id, response)]
    if len(failures) > len(undocumented):
        problem = _problem(response)
        excused[f"{operation_id} {problem.get('code')} {problem.get('field')}"] += 1
    if undocumented:
        sent = response.request
        body = (sent.body or b"")[:300] if isinstance(sent.body, bytes) else sent.body
        lines = [
            f"{operation_id}: {sent.method} {sent.url} body={body!r}",
            f"headers={ {k: v for k, v in sent.headers.items() if k.lower() != 'authorization'} }",
            f"-> {response.status_code} {response.content[:300]!r}",
            *(f"{type(f).__name__}: {f.title}: {f.message}" for f in undocumented),
        ]
        pytest.fail("\n".join(lines), pytrace=False)


def test_the_checks_saw_every_operation_accept_and_refuse() -> None:
    """The run above exercised something: every operation answered, POSTs accepted jobs."""
    if not statuses:
        pytest.skip("run with test_api_passes_every_schemathesis_check")
    print(f"\nschemathesis statuses: { {op: dict(c) for op, c in statuses.items()} }")
    print(f"documented exceptions met: {dict(excused)}")
    assert len(statuses) >= 11, sorted(statuses)
    for operation_id in ("ingestAudio", "previewEdit", "saveEdit"):
        assert statuses[operation_id][202] > 0, (operation_id, statuses[operation_id])
    assert all(code < 500 for counts in statuses.values() for code in counts), statuses


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
