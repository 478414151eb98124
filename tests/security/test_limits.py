"""Rate limit per tenant, the signing secret outside dev mode, API key parsing."""

from __future__ import annotations

from pathlib import Path

import pytest
from litestar.testing import AsyncTestClient
from nats.aio.client import Client

from audioprep.services.api.app import create_app
from audioprep.services.api.rate_limit import TokenBuckets
from audioprep.shared.ids import new_job_id
from audioprep.shared.settings import Settings, parse_api_keys
from tests.security.conftest import A, B


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_allows_burst_then_refills() -> None:
    clock = FakeClock()
    buckets = TokenBuckets(2.0, 3, clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = buckets.take("a")
    assert wait == pytest.approx(0.5)
    assert buckets.take("b") == 0.0  # other keys have their own bucket
    clock.now += 0.5
    assert buckets.take("a") == 0.0
    assert buckets.take("a") > 0
    clock.now += 100  # refills only up to the burst
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") > 0


def test_token_bucket_memory_is_bounded() -> None:
    buckets = TokenBuckets(1.0, 1, clock=FakeClock(), max_buckets=10)
    for i in range(100):
        buckets.take(f"ip-{i}")
    assert len(buckets._buckets) == 10


async def test_rate_limit_is_per_tenant_with_retry_after(
    secure_settings: Settings, secure_nc: Client
) -> None:
    settings = secure_settings.with_(rate_limit_per_s=0.2, rate_limit_burst=3)
    async with AsyncTestClient(app=create_app(settings)) as client:
        path = f"/api/audio/jobs/{new_job_id()}"
        codes = [(await client.get(path, headers=A)).status_code for _ in range(3)]
        assert codes == [404, 404, 404]
        resp = await client.get(path, headers=A)
        assert resp.status_code == 429
        assert resp.headers["content-type"].startswith("application/problem+json")
        assert resp.json()["code"] == "rate_limited"
        assert 1 <= int(resp.headers["retry-after"]) <= 5
        # Another tenant has its own budget; health checks are never limited.
        assert (await client.get(path, headers=B)).status_code == 404
        assert (await client.get("/healthz")).status_code == 200
        # Callers without a valid key are limited too (per address), before the 401.
        codes = [(await client.get(path)).status_code for _ in range(4)]
        assert codes == [401, 401, 401, 429]


def test_rate_limit_defaults() -> None:
    assert Settings().rate_limit_per_s == 0
    assert Settings.from_env({}).rate_limit_per_s == 0  # dev mode: off
    prod = {"AUDIOPREP_DEV_MODE": "0", "AUDIOPREP_SIGNING_SECRET": "s" * 32}
    env = Settings.from_env(prod)
    assert (env.rate_limit_per_s, env.rate_limit_burst) == (20.0, 100)
    env = Settings.from_env({**prod, "AUDIOPREP_RATE_LIMIT_PER_S": "0"})
    assert env.rate_limit_per_s == 0
    env = Settings.from_env({"AUDIOPREP_RATE_LIMIT_PER_S": "5", "AUDIOPREP_RATE_LIMIT_BURST": "7"})
    assert (env.rate_limit_per_s, env.rate_limit_burst) == (5.0, 7)


def test_signing_secret_required_outside_dev_mode() -> None:
    prod = {"AUDIOPREP_DEV_MODE": "0"}
    for env in (prod, {**prod, "AUDIOPREP_SIGNING_SECRET": "short"}):
        settings = Settings.from_env(env)  # workers and the projector don't need one
        with pytest.raises(ValueError, match="AUDIOPREP_SIGNING_SECRET"):
            settings.check_signing_secret()
        with pytest.raises(ValueError, match="at least 32"):
            create_app(settings)  # the API refuses to start
    ok = Settings.from_env({**prod, "AUDIOPREP_SIGNING_SECRET": "s" * 32})
    assert not ok.signing_secret_is_ephemeral
    ok.check_signing_secret()
    create_app(ok)
    dev = Settings.from_env({})
    assert dev.dev_mode and dev.signing_secret_is_ephemeral and len(dev.signing_secret) >= 32
    dev.check_signing_secret()
    with pytest.raises(ValueError):
        create_app(Settings(dev_mode=False))


def test_api_keys_from_env_and_file(tmp_path: Path) -> None:
    assert parse_api_keys("k1=tenantA, k2=tenant_B") == {"k1": "tenantA", "k2": "tenant_B"}
    keyfile = tmp_path / "keys"
    keyfile.write_text("# comment\nk1=tenantA\n\nk2=tenantB\n")
    assert parse_api_keys(f"@{keyfile}") == {"k1": "tenantA", "k2": "tenantB"}
    env = Settings.from_env({"AUDIOPREP_API_KEYS": f"@{keyfile}"})
    assert env.api_keys == {"k1": "tenantA", "k2": "tenantB"}
    for bad in ("k1", "=t", "k1=", "k1=../etc", "k1=a.b", "k1=a b", "k1=" + "t" * 65):
        with pytest.raises(ValueError):
            parse_api_keys(bad)


def test_yt_dlp_cannot_bypass_the_resolver_guard() -> None:
    """With curl_cffi installed yt-dlp would resolve names in libcurl, past url_guard."""
    import importlib.util

    assert importlib.util.find_spec("curl_cffi") is None


def test_duration_limit_holds_when_the_header_lies(tmp_path: Path) -> None:
    """Raw ADTS has no duration: FFmpeg estimates it from the first frames' bitrate (loud
    noise, then long cheap silence: 4 s estimated for 33 s). Decoding stops at the limit."""
    import numpy as np

    from audioprep.domain.errors import TOO_LONG, Permanent
    from audioprep.services.worker.pipeline.analyse import analyse
    from audioprep.services.worker.pipeline.decode import open_audio
    from audioprep.services.worker.pipeline.probe import header_duration_ms
    from tests.media import noise, silence, write_samples

    pcm = np.concatenate([noise(seconds=3.0, dbfs=-1), silence(seconds=30.0)], axis=1)
    path = str(write_samples(tmp_path / "liar.aac", pcm))
    with open_audio(path) as (container, stream):
        estimated = header_duration_ms(container, stream)
    assert estimated is not None and estimated < 15_000
    with pytest.raises(Permanent) as info:
        analyse(path, points=100, max_duration_s=15)
    assert info.value.code == TOO_LONG
    assert "at least 15 s" in info.value.message
