"""A worker's job slots: a slot is reserved *before* asking NATS for work, so a process never
receives a message it has no slot for (and holds it while another process could start it)."""

from __future__ import annotations

import asyncio


class Slots:
    """`await slots.reserve()` ... `slots.release()`; at most `size` reserved at once."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.busy = 0
        self._free = asyncio.Semaphore(size)

    @property
    def free(self) -> int:
        return self.size - self.busy

    async def reserve(self) -> None:
        await self._free.acquire()
        self.busy += 1

    def release(self) -> None:
        self.busy -= 1
        self._free.release()
