"""Every key of a KV bucket matching a filter, with its latest entry and revision: complete,
also right after a leader change of the bucket's stream (docs/reliability.md, "Listing KV
keys under leader changes").

Not nats-py's `kv.watch()`, `kv.keys()` or `kv.history()`: they stop at the watcher's "caught
up" marker (`None`), which nats-py puts first when the consumer's info says nothing is pending
and nothing has arrived yet. In a 3-node cluster that info can overtake the values (the
consumer on another node than the client's): 2-6 % of the listings after leader step-downs
and a few percent even in a quiet cluster answered an empty set (bench/kv_read.py,
tests/faults/test_kv_listing_leader_changes.py; nats-io/nats.py#842). Nor the ordered
consumer's per-message `num_pending` reaching 0: under concurrent writes it can reach 0 and
rise again (nats-io/nats.py#995), and it counts on the consumer's replica, which may be
behind. Nor `STREAM.INFO` with `subjects_filter`: it sends every subject name back. And each
watch leaves its consumer on the server for 5 minutes, and a stream takes 1000 consumers (then
"maximum consumers limit reached"): 1000 listings in 5 minutes stopped every listing.
`kv.keys(filters=…)` also matches filters as substrings: `<tenant>.*` matched no key.

How a read knows it has everything, without trusting any marker:
1. The bucket stream's leader names the last message matching the filter (a message get with
   `last_by_subj`, a wildcard filter): its sequence L bounds the answer, and "none" is the
   empty answer. Only the leader is asked, since it holds every acknowledged write; while an
   election runs nobody answers, and the request is made again (0.25 s, doubling) until
   `timeout`, then the read fails (the API answers 503) rather than guess.
2. One multi_last direct get brings the latest message of every matching key. Any replica may
   answer it; the answer is taken if it reaches L (a replica holding L holds everything
   before it), so a replica behind is caught, not believed (unchecked, it missed
   acknowledged keys in 1 of 117 listings: bench/kv_read.py).
3. Otherwise — more keys than one direct get answers (1024), or that replica was behind — an
   ordered consumer, last message per key, is read until a message at L or later arrives.

Delete markers (`KV-Operation: DEL/PURGE`, server markers) are entries too (`deleted`), left
out unless asked for: a compare-and-set needs their revision.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError
from nats.js.kv import KV_DEL, KV_MARKER_REASON, KV_OP, KV_PURGE

from audioprep.shared import direct_get, names
from audioprep.shared.nats_conn import is_transient

log = logging.getLogger("audioprep.kv_read")

# A request to the leader gets no answer while an election runs (nobody leads): the first try
# waits briefly, each next one twice as long, so a slow but working leader is still heard.
FIRST_TRY_S = 0.25
LAST_TRY_S = 2.0
RETRY_PAUSE_S = 0.05
# The server removes a read's consumer this long after the read unsubscribed (nats-py's KV
# watch leaves its consumer 5 minutes, and a stream takes 1000 consumers at most, measured)
CONSUMER_GONE_S = 2.0
NO_MESSAGE = 10037  # JetStream: no message found (a missing stream is 10059)


@dataclass(frozen=True, slots=True)
class KvEntry:
    """A key's latest entry; `value` is b"" for a delete marker."""

    key: str
    value: bytes
    revision: int
    deleted: bool = False


def _is_delete(headers: dict[str, str] | None) -> bool:
    headers = headers or {}
    return headers.get(KV_OP) in (KV_DEL, KV_PURGE) or KV_MARKER_REASON in headers


async def last_revision(nc: Client, bucket: str, keys: str = ">", *, timeout: float = 5.0) -> int:
    """The sequence of the last message on `keys` (a filter) in the bucket's stream, 0 when
    none, from the stream's leader (retried through an election until `timeout`)."""
    stream = names.kv_stream(bucket)
    request = json.dumps({"last_by_subj": names.kv_subject(bucket, keys)}).encode()
    deadline = time.monotonic() + timeout
    wait = FIRST_TRY_S
    while True:
        left = deadline - time.monotonic()
        try:
            reply = await nc.request(
                names.msg_get_subject(stream), request, timeout=max(0.05, min(wait, left))
            )
            answer = json.loads(reply.data or b"{}")
            error = answer.get("error")
            if error is None:
                return int(answer["message"]["seq"])
            if error.get("err_code") == NO_MESSAGE:
                return 0
            APIError.from_error(error)  # raises the error's class (503: transient)
        except Exception as exc:
            if not is_transient(exc) or time.monotonic() + RETRY_PAUSE_S >= deadline:
                raise
        wait = min(2 * wait, LAST_TRY_S)
        await asyncio.sleep(RETRY_PAUSE_S)


async def read_latest(
    nc: Client,
    bucket: str,
    keys: str = ">",
    *,
    deletes: bool = False,
    direct: bool = True,
    timeout: float = 5.0,
    stall_timeout: float = 5.0,
) -> dict[str, KvEntry]:
    """Every key matching `keys` (a subject filter: `>`, `<tenant>.*`, …) with its latest entry,
    in revision order (see the module docstring). `direct=False` skips the direct get (a whole
    big bucket); `stall_timeout` bounds a consumer read that stops making progress."""
    last = await last_revision(nc, bucket, keys, timeout=timeout)
    if last == 0:
        return {}
    if direct:
        found = await _by_direct_get(nc, bucket, keys, last, timeout)
        if found is not None:
            return found if deletes else {k: e for k, e in found.items() if not e.deleted}
    found = await _by_consumer(nc, bucket, keys, last, stall_timeout)
    return found if deletes else {k: e for k, e in found.items() if not e.deleted}


async def _by_direct_get(
    nc: Client, bucket: str, keys: str, last: int, timeout: float
) -> dict[str, KvEntry] | None:
    """One multi_last direct get, None when it can't answer or its replica is behind `last`."""
    stream = names.kv_stream(bucket)
    request = {"multi_last": [names.kv_subject(bucket, keys)]}
    try:
        msgs = await direct_get.direct_get(nc, stream, request, timeout)
    except direct_get.TooManyResults:
        return None
    prefix = names.kv_subject(bucket, "")
    out: dict[str, KvEntry] = {}
    top = 0
    for msg in sorted(msgs, key=direct_get.sequence):
        seq = direct_get.sequence(msg)
        top = max(top, seq)
        key = direct_get.subject_of(msg).removeprefix(prefix)
        deleted = _is_delete(msg.headers)
        out[key] = KvEntry(key, b"" if deleted else msg.data, seq, deleted)
    if top < last:
        log.info("kv replica behind, reading by consumer", extra={"bucket": bucket, "at": top})
        return None
    return out


async def each_latest(
    nc: Client,
    bucket: str,
    on_entry: Callable[[KvEntry], None],
    keys: str = ">",
    *,
    timeout: float = 5.0,
    stall_timeout: float = 5.0,
) -> int:
    """`on_entry(entry)` for every key matching `keys`, delete markers included, without
    holding them: a whole big bucket in bounded memory (`projection rebuild`). Read as
    `read_latest` reads by consumer; after a consumer reset an older revision of a key may
    come again, always before its latest, so the caller keeps the highest revision. Returns
    the bucket stream's last revision the read went up to (0: nothing matched)."""
    last = await last_revision(nc, bucket, keys, timeout=timeout)
    if last:
        await _consume(nc, bucket, keys, last, stall_timeout, on_entry)
    return last


async def _by_consumer(
    nc: Client, bucket: str, keys: str, last: int, stall_timeout: float
) -> dict[str, KvEntry]:
    out: dict[str, KvEntry] = {}

    def keep(entry: KvEntry) -> None:
        # after a reset nats-py's ordered consumer resumes by sequence: older revisions of a
        # key may come again, always before its latest
        out[entry.key] = entry

    await _consume(nc, bucket, keys, last, stall_timeout, keep)
    return dict(sorted(out.items(), key=lambda item: item[1].revision))


async def _consume(
    nc: Client,
    bucket: str,
    keys: str,
    last: int,
    stall_timeout: float,
    on_entry: Callable[[KvEntry], None],
) -> None:
    """An ordered consumer, last message per key, until a message at `last` or later (or, when
    nothing comes for a while, until the leader's last matching message is one already read:
    the one at `last` may have aged out since, max_age)."""
    prefix = names.kv_subject(bucket, "")
    done = asyncio.Event()
    count = top = 0

    async def on_msg(msg: Msg) -> None:
        nonlocal count, top
        count += 1
        seq = msg.metadata.sequence.stream
        top = max(top, seq)
        key = msg.subject.removeprefix(prefix)
        deleted = _is_delete(msg.headers)
        on_entry(KvEntry(key, b"" if deleted else msg.data, seq, deleted))
        if seq >= last:
            done.set()

    sub = await nc.jetstream().subscribe(
        names.kv_subject(bucket, keys),
        stream=names.kv_stream(bucket),
        ordered_consumer=True,
        idle_heartbeat=1.0,
        cb=on_msg,
        pending_msgs_limit=-1,
        pending_bytes_limit=-1,
        inactive_threshold=CONSUMER_GONE_S,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.LAST_PER_SUBJECT),
    )
    try:
        seen, last_seen = -1, time.monotonic()
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), timeout=0.5)
            if done.is_set():
                break
            if count != seen:
                seen, last_seen = count, time.monotonic()
                continue
            if time.monotonic() - last_seen > stall_timeout:
                raise TimeoutError(f"{bucket} read stalled at {count} keys (up to rev {last})")
            with contextlib.suppress(Exception):  # an election: the stall timeout decides
                if await last_revision(nc, bucket, keys, timeout=LAST_TRY_S) <= top:
                    break
    finally:
        await sub.unsubscribe()
