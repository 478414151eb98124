"""Queue positions without a dispatcher: a poll asks once, and the polls after it (for a
second) neither wait nor ask again."""

from __future__ import annotations

import time

from nats.aio.client import Client

from audioprep.services.api.queue_positions import QueuePositions
from audioprep.shared.ids import new_job_id


async def test_no_answer_is_remembered_for_a_second(nc: Client) -> None:
    positions = QueuePositions()
    job = new_job_id()
    subject = f"nobody.answers.{job}"
    assert await positions.get(nc, subject, job) is None  # no responders: at once
    assert job in positions._known and positions._known[job][0] is None
    started = time.monotonic()
    for _ in range(50):
        assert await positions.get(nc, subject, job) is None
        assert positions._asking == {}  # answered from what is known: no new request
    assert time.monotonic() - started < positions.FIRST_WAIT_S  # 50 polls, no wait at all
