"""Weighted round robin across tenants (stride scheduling). Pure: no I/O, no clock.

Each tenant with waiting jobs has a *pass*; the next job comes from the eligible tenant with
the lowest pass (ties: tenant name), whose pass then grows by 1/weight. A tenant of weight 3
is picked three times for every pick of a tenant of weight 1 while both have work. A tenant
that arrives (or comes back) starts at the current virtual time, so being idle earns no credit
and a newcomer's first job goes next.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator

EPSILON = 1e-9


class FairQueue:
    """Waiting jobs of one kind: per tenant in arrival order, picked by weighted round robin."""

    def __init__(self, weight: Callable[[str], int]) -> None:
        self._weight = weight
        self._queues: dict[str, deque[str]] = {}
        self._pass: dict[str, float] = {}
        self._vtime = 0.0

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def waiting(self, tenant: str) -> int:
        queue = self._queues.get(tenant)
        return len(queue) if queue else 0

    def tenants(self) -> Iterator[tuple[str, int]]:
        """(tenant, waiting) for every tenant with waiting jobs."""
        for tenant, queue in self._queues.items():
            yield tenant, len(queue)

    def push(self, tenant: str, job_id: str) -> None:
        queue = self._queues.get(tenant)
        if queue is None:
            # (Re)joining: no credit for the time away, no debt either.
            self._pass[tenant] = max(self._pass.get(tenant, 0.0), self._vtime)
            queue = self._queues[tenant] = deque()
        queue.append(job_id)

    def remove(self, tenant: str, job_id: str) -> bool:
        """Take a job out wherever it is (cancelled, or started by someone else)."""
        queue = self._queues.get(tenant)
        if not queue:
            return False
        try:
            queue.remove(job_id)
        except ValueError:
            return False
        if not queue:
            del self._queues[tenant]
        return True

    def pick(self, eligible: Callable[[str], bool] = lambda _: True) -> tuple[str, str] | None:
        """Pop the next job: (tenant, job_id), or None when no eligible tenant has one."""
        best: str | None = None
        for tenant in self._queues:
            if not eligible(tenant):
                continue
            if best is None or (self._pass[tenant], tenant) < (self._pass[best], best):
                best = tenant
        if best is None:
            return None
        queue = self._queues[best]
        job_id = queue.popleft()
        if not queue:
            del self._queues[best]
        self._vtime = max(self._vtime, self._pass[best])
        self._pass[best] += 1.0 / max(1, self._weight(best))
        return best, job_id

    def position(self, tenant: str, job_id: str) -> int | None:
        """How many jobs this queue hands out before `job_id` if nothing else arrives
        (caps ignored: an estimate). None when it is not waiting here."""
        queue = self._queues.get(tenant)
        if not queue:
            return None
        try:
            index = queue.index(job_id)
        except ValueError:
            return None
        # The pass at which this job is picked; every other tenant's jobs with a lower pass
        # (or the same pass and an earlier name) go first.
        target = self._pass[tenant] + index / max(1, self._weight(tenant))
        ahead = index
        for other, other_queue in self._queues.items():
            if other == tenant:
                continue
            weight = max(1, self._weight(other))
            span = (target - self._pass[other]) * weight
            # ties go to the earlier name
            tie_first = other < tenant
            before = math.floor(span + EPSILON) + 1 if tie_first else math.ceil(span - EPSILON)
            ahead += max(0, min(len(other_queue), before))
        return ahead
