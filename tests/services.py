"""Running audioprep's services for tests: the environment a service process reads its
settings from, and suites' own names on the one shared nats-server.

Every suite that starts services against the session's nats-server (tests/conftest.py) gets
its own name prefix (`suite_settings`), so its streams, consumers and buckets are its own:
another suite's workers never take its jobs.
"""

from __future__ import annotations

import os
from typing import Any

from audioprep.shared.names import Names
from audioprep.shared.settings import Settings


def suite_settings(base: Settings, prefix: str, **changes: Any) -> Settings:
    """`base` with its own names (`<prefix>_JOBS`, `<prefix>.jobs.…`, `<prefix>_jobs`, …)."""
    return base.with_(names=Names(prefix), **changes)


def service_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The AUDIOPREP_* environment that makes `Settings.from_env()` equal `settings` in the
    fields tests set (the rest of the environment is kept, other AUDIOPREP_* are dropped)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIOPREP_")}
    env.update(
        AUDIOPREP_NATS_URL=settings.nats_url,
        AUDIOPREP_NAME_PREFIX=settings.names.prefix,
        AUDIOPREP_DATA_DIR=str(settings.data_dir),
        AUDIOPREP_STORAGE_URL=settings.storage,
        AUDIOPREP_SIGNING_SECRET=settings.signing_secret,
        AUDIOPREP_WORKER_CONCURRENCY=str(settings.worker_concurrency),
        AUDIOPREP_ACK_WAIT_S=str(settings.ack_wait_s),
        AUDIOPREP_MAX_DELIVER=str(settings.max_deliver),
        AUDIOPREP_STREAM_REPLICAS=str(settings.stream_replicas),
        AUDIOPREP_URL_ALLOW_HOSTS=",".join(sorted(settings.url_allow_hosts)),
        AUDIOPREP_API_KEYS=",".join(f"{k}={t}" for k, t in settings.api_keys.items()),
        AUDIOPREP_DEV_MODE="1" if settings.dev_mode else "0",
        AUDIOPREP_WEBHOOK_SECRET_KEY=settings.webhook_secret_key,
        AUDIOPREP_WEBHOOK_RETRY_SCHEDULE_S=",".join(
            str(s) for s in settings.webhook_retry_schedule_s
        ),
        AUDIOPREP_WEBHOOK_RETRY_FOR_S=str(settings.webhook_retry_for_s),
        AUDIOPREP_WEBHOOK_ACK_WAIT_S=str(settings.webhook_ack_wait_s),
        AUDIOPREP_WEBHOOK_TIMEOUT_S=str(settings.webhook_timeout_s),
        AUDIOPREP_WEBHOOK_DISABLE_AFTER_S=str(settings.webhook_disable_after_s),
        AUDIOPREP_LOG_FORMAT="console",
        AUDIOPREP_LOG_LEVEL="INFO",
    )
    env.update(extra)
    return env
