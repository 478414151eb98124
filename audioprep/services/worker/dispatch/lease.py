"""Who dispatches: a key in KV bucket `scheduler_lease`, whose entries expire after the TTL.

`create` wins the lease when nobody holds it (or the holder's last renewal expired); the holder
renews with compare-and-set on its revision, so a holder that was away too long finds it lost
and steps down. Two holders at once (a holder frozen past the TTL that wakes up) can only
race to release a job: each release is written with the job's expected last sequence, so a job
is released once whoever writes.
"""

from __future__ import annotations

import contextlib
import logging

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from audioprep.shared import names
from audioprep.shared.provision import LEASE_TTL_S

log = logging.getLogger("audioprep.dispatch")

__all__ = ["LEASE_TTL_S", "Lease"]


class Lease:
    def __init__(self, kv: KeyValue, holder: str) -> None:
        self.kv = kv
        self.holder = holder
        self.revision = 0

    async def acquire(self) -> bool:
        try:
            self.revision = await self.kv.create(names.SCHEDULER_LEASE_KEY, self.holder.encode())
        except KeyWrongLastSequenceError:
            return False
        return True

    async def renew(self) -> bool:
        """False when someone else holds it now (ours expired)."""
        try:
            self.revision = await self.kv.update(
                names.SCHEDULER_LEASE_KEY, self.holder.encode(), last=self.revision
            )
        except KeyWrongLastSequenceError:
            return False
        return True

    async def release(self) -> None:
        """Hand it over at once (a graceful stop): the next create wins without waiting."""
        # already someone else's, or expired: nothing to hand over
        with contextlib.suppress(KeyWrongLastSequenceError, KeyNotFoundError):
            await self.kv.delete(names.SCHEDULER_LEASE_KEY, last=self.revision)
        self.revision = 0

    async def holder_now(self) -> str | None:
        try:
            entry = await self.kv.get(names.SCHEDULER_LEASE_KEY)
        except KeyNotFoundError:
            return None
        return entry.value.decode() if entry.value else None
