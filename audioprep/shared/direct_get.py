"""JetStream batched direct gets: one request, the matching messages back on an inbox.

The one implementation behind a job's history (event_store), a delivery's history
(webhook_store) and `jobs ls` (cli/jobs): the server streams up to `batch` messages and ends
with a status message (204 end of batch, 404 nothing (more) found, 413 too many for
multi_last).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping

from nats.aio.client import Client
from nats.aio.msg import Msg

from audioprep.shared import names


class TooManyResults(Exception):
    """The server refused a multi_last request (413): more subjects matched than it answers."""


async def direct_get(
    nc: Client, stream: str, request: Mapping[str, object], timeout: float
) -> list[Msg]:
    """Send one batched direct-get request to `stream`; the data messages, in stream order."""
    inbox = nc.new_inbox()
    queue: asyncio.Queue[Msg] = asyncio.Queue()

    async def collect(msg: Msg) -> None:
        await queue.put(msg)

    batch = request.get("batch")
    limit = batch if isinstance(batch, int) and "multi_last" not in request else None
    sub = await nc.subscribe(inbox, cb=collect)
    try:
        await nc.publish(
            names.direct_get_subject(stream), json.dumps(request).encode(), reply=inbox
        )
        out: list[Msg] = []
        while True:
            msg = await asyncio.wait_for(queue.get(), timeout=timeout)
            status = (msg.headers or {}).get("Status")
            if status == "413":
                raise TooManyResults(stream)
            if status is not None:
                return out
            out.append(msg)
            if limit is not None and len(out) >= limit:
                return out
    finally:
        await sub.unsubscribe()


async def next_by_subject(
    nc: Client, stream: str, subject: str, start_seq: int, batch: int, timeout: float
) -> list[Msg]:
    """Up to `batch` messages on `subject` from `start_seq` on."""
    request = {"seq": start_seq, "next_by_subj": subject, "batch": batch}
    return await direct_get(nc, stream, request, timeout)


def sequence(msg: Msg) -> int:
    """A direct-get message's stream sequence."""
    return int((msg.headers or {})["Nats-Sequence"])


def subject_of(msg: Msg) -> str:
    """A direct-get message's original subject."""
    return (msg.headers or {})["Nats-Subject"]


def num_pending(msg: Msg) -> int | None:
    """How many messages on the request's subject follow this one in the stream (None when the
    server does not say)."""
    value = (msg.headers or {}).get("Nats-Num-Pending")
    return int(value) if value is not None and value.isdigit() else None
