"""One frozen settings object, built from AUDIOPREP_* environment variables."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from audioprep.shared.names import Names

GIB = 1024**3
MIN_SECRET_CHARS = 32
_TENANT_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything a service needs to know; nothing here connects to anything."""

    nats_url: str = "nats://127.0.0.1:4222"
    # Every stream, subject, bucket and key, from one prefix (AUDIOPREP_NAME_PREFIX; default none)
    names: Names = field(default_factory=Names)
    data_dir: Path = Path("./data")
    storage_url: str = ""
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    signing_secret: str = ""
    signing_secret_is_ephemeral: bool = True
    worker_concurrency: int = field(default_factory=lambda: os.cpu_count() or 1)
    max_upload_bytes: int = 2 * GIB
    max_duration_s: int = 4 * 3600
    api_keys: Mapping[str, str] = field(default_factory=dict)
    url_allow_hosts: frozenset[str] = frozenset()
    log_format: str = "json"
    log_level: str = "INFO"
    stream_max_age_s: int = 30 * 24 * 3600
    stream_replicas: int = 1
    ack_wait_s: float = 60.0
    max_deliver: int = 5
    public_url: str = ""
    metrics_port: int = 0
    drain_grace_s: float = 30.0
    # How often `audioprep up` runs `storage gc --yes` (0 = never; see services/cli/storage.py).
    gc_interval_s: float = 3600.0
    dev_mode: bool = True
    # Requests per second per tenant on /api/ (token bucket); 0 = no limit. Off by default in
    # code and in dev mode; from the environment with AUDIOPREP_DEV_MODE=0: 20/s, bursts of 100.
    rate_limit_per_s: float = 0.0
    rate_limit_burst: int = 100
    # Webhooks (docs/webhooks.md). The key encrypts endpoint secrets at rest (AES-GCM); unset
    # in dev mode: a key file in the data dir. Retries follow the schedule (the last step
    # repeats) until a delivery is older than webhook_retry_for_s.
    webhook_secret_key: str = ""
    webhook_timeout_s: float = 10.0
    webhook_retry_schedule_s: tuple[float, ...] = (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0)
    webhook_retry_for_s: float = 24 * 3600.0
    webhook_disable_after_s: float = 5 * 24 * 3600.0
    webhook_retention_s: int = 7 * 24 * 3600
    webhook_ack_wait_s: float = 30.0
    webhook_concurrency: int = 64
    webhook_secret_grace_s: float = 24 * 3600.0

    @property
    def storage(self) -> str:
        """Storage URL with the data-dir default filled in."""
        if self.storage_url:
            return self.storage_url
        return (self.data_dir / "storage").resolve().as_uri()

    @property
    def base_url(self) -> str:
        """The URL clients use to reach the API (for signed download links)."""
        return self.public_url or f"http://{self.api_host}:{self.api_port}"

    def check_signing_secret(self) -> None:
        """Outside dev mode the API needs a real secret: links must survive restarts and
        match across replicas (workers and the projector sign nothing)."""
        if self.dev_mode:
            return
        if self.signing_secret_is_ephemeral or len(self.signing_secret) < MIN_SECRET_CHARS:
            raise ValueError(
                f"AUDIOPREP_SIGNING_SECRET (at least {MIN_SECRET_CHARS} characters) is required "
                "when AUDIOPREP_DEV_MODE=0: signed download links must survive restarts and "
                "match across API replicas"
            )

    def with_(self, **changes: object) -> Settings:
        """A copy with some fields changed (tests, CLI flags)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read AUDIOPREP_* variables; unset ones keep their working defaults."""
        e = os.environ if env is None else env

        def get(name: str, default: str) -> str:
            return e.get(f"AUDIOPREP_{name}", default) or default

        secret = e.get("AUDIOPREP_SIGNING_SECRET", "")
        dev_mode = get("DEV_MODE", "1").lower() not in ("0", "false", "no")
        return cls(
            nats_url=get("NATS_URL", cls.nats_url),
            names=Names(e.get("AUDIOPREP_NAME_PREFIX", "")),
            data_dir=Path(get("DATA_DIR", "./data")),
            storage_url=e.get("AUDIOPREP_STORAGE_URL", ""),
            api_host=get("API_HOST", cls.api_host),
            api_port=int(get("API_PORT", str(cls.api_port))),
            signing_secret=secret or secrets.token_urlsafe(32),
            signing_secret_is_ephemeral=not secret,
            worker_concurrency=int(get("WORKER_CONCURRENCY", str(os.cpu_count() or 1))),
            max_upload_bytes=int(get("MAX_UPLOAD_BYTES", str(2 * GIB))),
            max_duration_s=int(get("MAX_DURATION_S", str(4 * 3600))),
            api_keys=parse_api_keys(e.get("AUDIOPREP_API_KEYS", "")),
            url_allow_hosts=frozenset(
                h.strip().lower() for h in e.get("AUDIOPREP_URL_ALLOW_HOSTS", "").split(",") if h
            ),
            log_format=get("LOG_FORMAT", "json"),
            log_level=get("LOG_LEVEL", "INFO").upper(),
            stream_max_age_s=int(get("STREAM_MAX_AGE_S", str(30 * 24 * 3600))),
            stream_replicas=int(get("STREAM_REPLICAS", "1")),
            ack_wait_s=float(get("ACK_WAIT_S", "60")),
            max_deliver=int(get("MAX_DELIVER", "5")),
            public_url=e.get("AUDIOPREP_PUBLIC_URL", ""),
            metrics_port=int(get("METRICS_PORT", "0")),
            drain_grace_s=float(get("DRAIN_GRACE_S", "30")),
            gc_interval_s=float(get("GC_INTERVAL_S", "3600")),
            dev_mode=dev_mode,
            rate_limit_per_s=float(get("RATE_LIMIT_PER_S", "0" if dev_mode else "20")),
            rate_limit_burst=int(get("RATE_LIMIT_BURST", "100")),
            webhook_secret_key=e.get("AUDIOPREP_WEBHOOK_SECRET_KEY", ""),
            webhook_timeout_s=float(get("WEBHOOK_TIMEOUT_S", "10")),
            webhook_retry_schedule_s=tuple(
                float(x)
                for x in get("WEBHOOK_RETRY_SCHEDULE_S", "5,30,120,600,1800,3600").split(",")
            ),
            webhook_retry_for_s=float(get("WEBHOOK_RETRY_FOR_S", str(24 * 3600))),
            webhook_disable_after_s=float(get("WEBHOOK_DISABLE_AFTER_S", str(5 * 24 * 3600))),
            webhook_retention_s=int(get("WEBHOOK_RETENTION_S", str(7 * 24 * 3600))),
            webhook_ack_wait_s=float(get("WEBHOOK_ACK_WAIT_S", "30")),
            webhook_concurrency=int(get("WEBHOOK_CONCURRENCY", "64")),
            webhook_secret_grace_s=float(get("WEBHOOK_SECRET_GRACE_S", str(24 * 3600))),
        )


def parse_api_keys(raw: str) -> dict[str, str]:
    """`key1=tenantA,key2=tenantB` → {key: tenant}; a bare `@path` reads that file."""
    raw = raw.strip()
    if raw.startswith("@"):
        raw = Path(raw[1:]).read_text().replace("\n", ",")
    keys: dict[str, str] = {}
    for item in raw.split(","):
        item = item.strip()
        if not item or item.startswith("#"):
            continue
        key, sep, tenant = item.partition("=")
        if not sep or not key.strip() or not tenant.strip():
            raise ValueError("AUDIOPREP_API_KEYS entries must look like key=tenant")
        if not _TENANT_RE.fullmatch(tenant.strip()):
            raise ValueError(
                f"AUDIOPREP_API_KEYS: tenant {tenant.strip()[:64]!r} must be 1-64 characters "
                "of A-Z a-z 0-9 _ -"
            )
        keys[key.strip()] = tenant.strip()
    return keys
