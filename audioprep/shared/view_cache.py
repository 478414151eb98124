"""A watch-fed cache of KV views, so a poll needs no NATS round trip (the API's hot read).

The cache holds raw view bytes by key with the KV revision they were written at. It learns
from two sources:
- a watch on the bucket (an ordered consumer on `$KV.<bucket>.>` delivering new writes only):
  every write and delete lands here within the watch's delivery delay (sub-millisecond on a
  healthy connection);
- reads that missed it (`JobViews.stored` reads KV and hands the entry back).

Correctness rules (what "invalidation" means here):
- an entry only ever moves forward: an older revision never replaces a newer one, so a read
  that raced a watched write cannot put the old view back; deletes leave a tombstone;
- a read's result is kept only if the watch that covers it was already subscribed when the read
  was issued (`token()` before the read, `learned(..., token)` after): a write between the
  read and a later subscription could otherwise be missed;
- on any disconnect or reconnect of the connection the cache is emptied and bypassed until a
  new watch is subscribed (nats-py's ordered consumer can take seconds to notice a restart),
  so a view is never served from before an outage.
Bounded: the least recently used entries go past `size` (a view is ~0.5-1 KB).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from audioprep.shared import names

log = logging.getLogger("audioprep.view_cache")

DEFAULT_SIZE = 50_000
# Headers that mark a KV message as a delete (nats-py: KV-Operation; server markers, 2.11+)
_DELETE_HEADERS = ("KV-Operation", "Nats-Marker-Reason")


class ViewCache:
    """Raw KV entries of one bucket, kept current by a watch (see the module docstring)."""

    def __init__(self, nc: Client, js: JetStreamContext, bucket: str, *, size: int = DEFAULT_SIZE):
        self.nc = nc
        self.js = js
        self.bucket = bucket
        self.size = size
        self._prefix = names.kv_subject(bucket, "")
        self._entries: OrderedDict[str, tuple[bytes | None, int]] = OrderedDict()
        self._generation = 0  # bumped by every (re)subscription
        self._live = False
        self._reconnects = -1
        self._sub: JetStreamContext.PushSubscription | None = None
        self._renew: asyncio.Task[None] | None = None
        self._closed = False
        self.hits = 0
        self.misses = 0

    async def start(self) -> None:
        await self._subscribe()

    async def stop(self) -> None:
        self._closed = True
        self._live = False
        if self._renew is not None:
            self._renew.cancel()
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        self._entries.clear()

    async def _subscribe(self) -> None:
        self._live = False
        self._entries.clear()
        old, self._sub = self._sub, None
        if old is not None:
            with contextlib.suppress(Exception):
                await old.unsubscribe()
        reconnects = self.nc.stats["reconnects"]
        self._sub = await self.js.subscribe(
            self._prefix + ">",
            stream=names.kv_stream(self.bucket),
            ordered_consumer=True,
            idle_heartbeat=1.0,
            cb=self._on_msg,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW),
        )
        if self._closed:
            return
        self._entries.clear()
        self._reconnects = reconnects
        self._generation += 1
        self._live = True

    async def _renew_quietly(self) -> None:
        try:
            await self._subscribe()
        except Exception as exc:  # NATS still away: the next read tries again
            log.info("view cache watch not renewed yet", extra={"error": repr(exc)})

    def token(self) -> int | None:
        """The current watch generation, None while the cache must not be used."""
        nc = self.nc
        if self._live and nc.is_connected and nc.stats["reconnects"] == self._reconnects:
            return self._generation
        if self._live:
            self._live = False  # the connection moved under the watch: forget everything
            self._entries.clear()
        if not self._closed and nc.is_connected and (self._renew is None or self._renew.done()):
            self._renew = asyncio.get_running_loop().create_task(self._renew_quietly())
        return None

    def get(self, key: str, token: int | None) -> bytes | None:
        """The cached value of `key`, or None (unknown here, deleted, or cache not usable)."""
        if token is None or token != self._generation:
            return None
        entry = self._entries.get(key)
        if entry is None or entry[0] is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[0]

    def learned(self, key: str, value: bytes | None, revision: int, token: int | None) -> None:
        """A read of KV that missed the cache; kept if the watch covered it (see above)."""
        if token is not None and token == self._generation and self._live:
            self._put(key, value, revision)

    async def _on_msg(self, msg: Msg) -> None:
        key = msg.subject[len(self._prefix) :]
        revision = msg.metadata.sequence.stream
        headers = msg.headers
        deleted = headers is not None and any(h in headers for h in _DELETE_HEADERS)
        self._put(key, None if deleted else msg.data, revision)

    def _put(self, key: str, value: bytes | None, revision: int) -> None:
        entry = self._entries.get(key)
        if entry is not None and entry[1] >= revision:
            return
        self._entries[key] = (value, revision)
        self._entries.move_to_end(key)
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)
