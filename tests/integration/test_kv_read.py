"""shared/kv_read.py against the real nats-server: every matching key with its latest entry,
by the direct get and by the consumer it falls back to (the leader-change case is
tests/faults/test_kv_listing_leader_changes.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from audioprep.shared import kv_read, names

PATHS = pytest.mark.parametrize("direct", [True, False], ids=["direct-get", "consumer"])


@pytest.fixture
async def bucket(nc: Client) -> AsyncIterator[tuple[str, KeyValue]]:
    """A bucket of its own (history kept, as KV presets has), removed afterwards."""
    name = f"kvread_{uuid.uuid4().hex[:8]}"
    js = nc.jetstream()
    kv = await js.create_key_value(
        KeyValueConfig(bucket=name, history=5, storage=StorageType.FILE, direct=True)
    )
    yield name, kv
    await js.delete_key_value(name)


async def _consumers(nc: Client, bucket: str) -> int:
    return (await nc.jetstream().stream_info(names.kv_stream(bucket))).state.consumer_count


@PATHS
async def test_latest_entries_and_delete_markers(
    nc: Client, bucket: tuple[str, KeyValue], direct: bool
) -> None:
    name, kv = bucket
    assert await kv_read.read_latest(nc, name, "acme.*", direct=direct) == {}  # nothing yet
    await kv.put("acme.a", b"1")
    await kv.put("acme.a", b"2")
    await kv.put("acme.b", b"x")
    await kv.put("acme.gone", b"x")
    await kv.delete("acme.gone")
    await kv.put("acme2.a", b"other tenant")
    await kv.put("acme.sub.key", b"not one token")

    found = await kv_read.read_latest(nc, name, "acme.*", direct=direct)
    assert {k: e.value for k, e in found.items()} == {"acme.a": b"2", "acme.b": b"x"}
    for key, entry in found.items():
        assert entry.revision == (await kv.get(key)).revision
    with_deletes = await kv_read.read_latest(nc, name, "acme.*", deletes=True, direct=direct)
    gone = with_deletes["acme.gone"]
    assert gone.deleted and gone.value == b""
    assert gone.revision > found["acme.a"].revision  # the marker's own revision, for CAS
    everything = await kv_read.read_latest(nc, name, direct=direct)
    assert set(everything) == {"acme.a", "acme.b", "acme2.a", "acme.sub.key"}

    await kv.delete("acme.a")
    await kv.delete("acme.b")
    assert await kv_read.read_latest(nc, name, "acme.*", direct=direct) == {}


async def test_more_keys_than_one_direct_get_answers(
    nc: Client, bucket: tuple[str, KeyValue]
) -> None:
    """Past 1024 matching keys (deleted ones count) the server refuses a multi_last direct
    get: the read goes on with a consumer and is still complete. (EndpointStore's fallback
    for that case was `kv.keys(filters=[<tenant>.*])`, whose filters are substrings: it
    listed nothing.)"""
    name, kv = bucket
    keys = [f"acme.k{i:04d}" for i in range(1100)]
    for start in range(0, len(keys), 100):
        await asyncio.gather(*(kv.put(k, b"v") for k in keys[start : start + 100]))
    await kv.delete(keys[0])
    found = await kv_read.read_latest(nc, name, "acme.*")
    assert sorted(found) == keys[1:]
    revisions = [e.revision for e in found.values()]
    assert revisions == sorted(revisions)  # in revision order


async def test_direct_reads_leave_no_consumer(nc: Client, bucket: tuple[str, KeyValue]) -> None:
    """A listing by direct get creates no consumer (nats-py's KV watch leaves one for 5
    minutes each, and a stream takes 1000 at most)."""
    name, kv = bucket
    await kv.put("acme.a", b"1")
    before = await _consumers(nc, name)
    for _ in range(50):
        assert set(await kv_read.read_latest(nc, name, "acme.*")) == {"acme.a"}
    assert await _consumers(nc, name) == before


async def test_a_missing_bucket_is_an_error_not_an_empty_answer(nc: Client) -> None:
    with pytest.raises(NotFoundError):
        await kv_read.read_latest(nc, f"missing_{uuid.uuid4().hex[:8]}", timeout=1)
