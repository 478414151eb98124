"""What the API asks the dispatcher, and what it answers: core NATS request/reply on the
subjects of the name table (`scheduler.admit`, `scheduler.position`, `scheduler.status`).

Only a tenant with a queue limit or a daily quota makes the API ask at submit (one round trip,
~0.3 ms on loopback); a poll asks for the queue position only while the job waits. No
dispatcher answering (none is leading right now) means no answer: the caller goes on without
(limits fail open, the position is left out), and says so in its log.
"""

from __future__ import annotations

import logging
import time
from typing import TypeVar

import msgspec
import nats.errors
from nats.aio.client import Client

log = logging.getLogger("audioprep.admission")

ADMIT_TIMEOUT_S = 0.5
POSITION_TIMEOUT_S = 0.25
WARN_EVERY_S = 10.0


class _Wire(msgspec.Struct, kw_only=True, rename="camel", omit_defaults=True):
    pass


class AdmitRequest(_Wire):
    job_id: str
    tenant: str
    kind: str
    max_queued: int | None = None
    max_upload_bytes_per_day: int | None = None
    max_processing_s_per_day: float | None = None
    upload_bytes: int = 0
    reserve: bool = True


class AdmitReply(_Wire):
    ok: bool
    code: str | None = None
    detail: str = ""
    retry_after_s: int = 0
    quota: str | None = None
    queued: int = 0


class PositionRequest(_Wire):
    job_ids: list[str]


class PositionReply(_Wire):
    positions: dict[str, int] = msgspec.field(default_factory=dict)


class StatusRequest(_Wire):
    pass


class TenantCounts(_Wire):
    waiting: int = 0
    released: int = 0
    running: int = 0


class KindCounts(_Wire):
    waiting: int = 0
    unstarted: int = 0
    released: int = 0  # releases since this dispatcher started leading


class StatusReply(_Wire):
    leader: str
    mode: str
    applied_seq: int
    floor: int
    caught_up: bool
    tenants: dict[str, TenantCounts] = msgspec.field(default_factory=dict)
    kinds: dict[str, KindCounts] = msgspec.field(default_factory=dict)


R = TypeVar("R", bound=_Wire)
_last_warning: dict[str, float] = {}


async def ask(
    nc: Client, subject: str, request: _Wire, reply_type: type[R], timeout: float
) -> R | None:
    """One request to the leading dispatcher; None when nobody answers in time."""
    try:
        msg = await nc.request(subject, msgspec.json.encode(request), timeout=timeout)
        return msgspec.json.decode(msg.data, type=reply_type)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError, msgspec.DecodeError) as exc:
        now = time.monotonic()
        if now - _last_warning.get(subject, -WARN_EVERY_S) >= WARN_EVERY_S:
            _last_warning[subject] = now
            log.warning(
                "dispatcher did not answer; going on without it",
                extra={"subject": subject, "error": type(exc).__name__},
            )
        return None
