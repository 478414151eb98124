"""Queue positions for polls of waiting jobs, from the dispatcher, without making a poll wait
for it (docs/fairness.md, "Queue position")."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

from nats.aio.client import Client

from audioprep.shared.admission import POSITION_TIMEOUT_S, PositionReply, PositionRequest, ask


class QueuePositions:
    """Waiting jobs' positions as the dispatcher last said, asked at most once a second per
    job. A poll waits at most FIRST_WAIT_S for the first answer (a healthy dispatcher answers
    in well under a millisecond); a later one never waits: it shows the last answer and asks
    again in the background when that one is older than REFRESH_S. No answer (no dispatcher
    running, or it timed out) counts as an answer without a position: the polls of the next
    REFRESH_S don't wait for it again (before, every poll of a waiting job waited up to
    FIRST_WAIT_S while no dispatcher ran; bench/RESULTS.md)."""

    FIRST_WAIT_S = 0.02
    REFRESH_S = 1.0
    SIZE = 10_000

    def __init__(self) -> None:
        self._known: OrderedDict[str, tuple[int | None, float]] = OrderedDict()
        self._asking: dict[str, asyncio.Task[None]] = {}

    async def get(self, nc: Client, subject: str, job_id: str) -> int | None:
        now = time.monotonic()
        known = self._known.get(job_id)
        if known is None or now - known[1] >= self.REFRESH_S:
            task = self._asking.get(job_id)
            if task is None:
                task = asyncio.create_task(self._ask(nc, subject, job_id))
                self._asking[job_id] = task
                task.add_done_callback(lambda _: self._asking.pop(job_id, None))
            if known is None:
                await asyncio.wait({task}, timeout=self.FIRST_WAIT_S)
                known = self._known.get(job_id)
        return known[0] if known is not None else None

    async def _ask(self, nc: Client, subject: str, job_id: str) -> None:
        reply = await ask(
            nc,
            subject,
            PositionRequest(job_ids=[job_id]),
            PositionReply,
            POSITION_TIMEOUT_S,
        )
        position = reply.positions.get(job_id) if reply is not None else None
        self._known[job_id] = (position, time.monotonic())
        self._known.move_to_end(job_id)
        while len(self._known) > self.SIZE:
            self._known.popitem(last=False)
