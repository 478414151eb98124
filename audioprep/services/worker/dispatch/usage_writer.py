"""The usage projection's writer: per-event deltas gathered in memory, written to KV `usage`
with compare-and-set about twice a second (one write per tenant-day, not per event)."""

from __future__ import annotations

import logging
from collections import OrderedDict

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from audioprep.shared import names
from audioprep.shared.usage import TenantDayUsage, decode_usage, encode_usage

log = logging.getLogger("audioprep.dispatch")

CACHE_SIZE = 4096
CAS_RETRIES = 10


class UsageWriter:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self._cache: OrderedDict[str, tuple[TenantDayUsage, int]] = OrderedDict()
        self._pending: dict[str, list[tuple[int, TenantDayUsage]]] = {}

    def add(self, key: str, seq: int, delta: TenantDayUsage) -> None:
        self._pending.setdefault(key, []).append((seq, delta))

    @property
    def dirty(self) -> bool:
        return bool(self._pending)

    async def _load(self, key: str, *, fresh: bool = False) -> tuple[TenantDayUsage | None, int]:
        if not fresh and key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return None, 0
        if not entry.value or entry.revision is None:
            return None, 0
        return decode_usage(entry.value), entry.revision

    @staticmethod
    def _applied(
        record: TenantDayUsage | None, key: str, deltas: list[tuple[int, TenantDayUsage]]
    ) -> TenantDayUsage | None:
        """The record with the deltas it has not counted yet (None: nothing new)."""
        day, _, tenant = key.partition(".")
        out = TenantDayUsage(date=day, tenant=tenant)
        if record is not None:
            out.add(record)
        changed = False
        for seq, delta in deltas:
            if seq <= out.seq:
                continue  # already counted (a replay after a new dispatcher took over)
            out.add(delta)
            out.seq = seq
            changed = True
        return out if changed else None

    async def current(self, day: str, tenant: str) -> TenantDayUsage | None:
        """The tenant's day as it will be once written (for quota checks)."""
        key = names.usage_key(day, tenant)
        record, _ = await self._load(key)
        newer = self._applied(record, key, self._pending.get(key, []))
        return newer or record

    async def flush(self) -> int:
        """Write every tenant-day with new counts; returns how many were written."""
        written = 0
        for key in list(self._pending):
            deltas = self._pending.pop(key)
            try:
                written += await self._write(key, deltas)
            except BaseException:
                self._pending.setdefault(key, [])[:0] = deltas  # keep them for the next flush
                raise
        return written

    async def _write(self, key: str, deltas: list[tuple[int, TenantDayUsage]]) -> int:
        record, revision = await self._load(key)
        for _ in range(CAS_RETRIES):
            new = self._applied(record, key, deltas)
            if new is None:
                return 0
            try:
                if revision:
                    revision = await self.kv.update(key, encode_usage(new), last=revision)
                else:
                    revision = await self.kv.create(key, encode_usage(new))
            except KeyWrongLastSequenceError:
                record, revision = await self._load(key, fresh=True)
                continue
            self._cache[key] = (new, revision)
            self._cache.move_to_end(key)
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
            return 1
        raise RuntimeError(f"usage {key}: too much contention")
