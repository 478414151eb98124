"""A counting semaphore that serves waiters by priority (previews before ingests before saves)."""

from __future__ import annotations

import asyncio
import heapq
import itertools


class PrioritySlots:
    """`async with slots.take(priority)`; lower numbers are served first when slots are scarce."""

    def __init__(self, size: int) -> None:
        self.free = size
        self.size = size
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._watchers: list[asyncio.Future[None]] = []

    @property
    def busy(self) -> int:
        return self.size - self.free

    async def wait_free(self) -> None:
        """Until a slot is free for the taking: a worker asks for work only when it can run
        it, so a busy process never holds a request another process could start now."""
        while self.free <= 0 or self._waiters:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._watchers.append(fut)
            try:
                await fut
            finally:
                if fut in self._watchers:
                    self._watchers.remove(fut)

    async def acquire(self, priority: int) -> None:
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._order), fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # we were handed a slot but won't use it
            raise

    def release(self) -> None:
        while self._waiters:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)
                return
        self.free += 1
        watchers, self._watchers = self._watchers, []
        for watcher in watchers:
            if not watcher.done():
                watcher.set_result(None)
