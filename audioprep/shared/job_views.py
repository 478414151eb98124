"""Reading a job's view: the one place besides the projector where the fold is applied.

Two ways to read, chosen by what the caller needs:
- `get`: the projector's view from KV bucket `jobs` (one direct get), folded from the job's
  events when the projector has not written it yet. What a poll shows.
- `fresh`: folded from the job's events (one batched direct get) — never behind the last
  event, for decisions made right after one (cancel, joining a preview in flight, webhook
  payloads); falls back to the KV view once the events have aged out of the stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from audioprep.domain.events import Event
from audioprep.domain.fold import fold, fold_history
from audioprep.domain.views import JobView, decode_view
from audioprep.shared.event_store import EventStore, StoredEvent
from audioprep.shared.view_cache import ViewCache

LOOKUP_CONCURRENCY = 32  # direct gets in flight when reading many views


class JobViews:
    """A job's view from KV `jobs` and stream JOBS."""

    def __init__(self, kv: KeyValue, events: EventStore, *, cache: ViewCache | None = None) -> None:
        """`cache`: a watch-fed copy of the bucket (the API's polls); `stored` reads it first."""
        self.kv = kv
        self.events = events
        self.cache = cache

    async def stored(self, job_id: str) -> JobView | None:
        """What the projector has written for the job, if anything."""
        cache = self.cache
        token = None
        if cache is not None:
            token = cache.token()
            raw = cache.get(job_id, token)
            if raw is not None:
                return decode_view(raw)
        try:
            entry = await self.kv.get(job_id)
        except KeyNotFoundError:
            return None
        if cache is not None and entry.revision is not None:
            cache.learned(job_id, entry.value, entry.revision, token)
        return decode_view(entry.value) if entry.value else None

    async def get(self, job_id: str) -> JobView | None:
        """The KV view, or the fold of the job's events when the projector hasn't caught up."""
        return await self.stored(job_id) or fold_history(await self.events.history(job_id))

    async def fresh(self, job_id: str) -> JobView | None:
        """The fold of the job's events as they are now; the KV view if they aged out."""
        return fold_history(await self.events.history(job_id)) or await self.stored(job_id)

    @staticmethod
    def with_event(view: JobView, event: Event, seq: int) -> JobView:
        """The view once `event` (just appended by the caller, at `seq`) is applied."""
        return fold(view, event, seq) or view

    @staticmethod
    def folded(history: Iterable[StoredEvent]) -> JobView | None:
        """The view of an already-read history (`jobs show` prints both)."""
        return fold_history(history)

    async def many(self, job_ids: Iterable[str]) -> dict[str, JobView | None]:
        """`get` for many jobs, a bounded number at a time."""
        gate = asyncio.Semaphore(LOOKUP_CONCURRENCY)

        async def one(job_id: str) -> tuple[str, JobView | None]:
            async with gate:
                return job_id, await self.get(job_id)

        return dict(await asyncio.gather(*(one(j) for j in job_ids)))
