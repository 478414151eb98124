"""Listing KV keys right after leader changes: presets, all-tenant usage, webhook endpoints.

A 3-node cluster (every bucket at replicas 3) holds one tenant's presets (some replaced, some
deleted), one day's usage of many tenants and one tenant's webhook endpoints (some deleted).
Then, over and over, the leader of one of the three buckets' streams steps down and at once
every node's connection lists that bucket, with the code as it is (shared/kv_read.py behind
`PresetStore.names`, `usage.read_days` and `EndpointStore.for_tenant`) and with the code it
replaced (a KV watch up to its "caught up" marker; the unchecked multi_last direct get for
endpoints), in the same run. Every answer is compared with what was written.

The new listings must never be incomplete. The old ones are counted, not asserted: a watch's
marker comes before the values in a few percent of the reads after a leader change (an empty
answer), which is the bug; a run may by chance see none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client
from nats.js.kv import KeyValue

from audioprep.domain.events import utcnow
from audioprep.shared import direct_get, names, usage
from audioprep.shared.metadata import Metadata
from audioprep.shared.nats_cluster import NatsCluster, wait_for_jetstream
from audioprep.shared.nats_conn import connect
from audioprep.shared.presets import MAX_PRESETS_PER_TENANT, PresetFields, PresetStore
from audioprep.shared.webhook_store import (
    MAX_ENDPOINTS_PER_TENANT,
    Endpoint,
    EndpointStore,
    new_endpoint_id,
)
from tests.faults.harness import NAMES, fault_settings, provision_when_ready, step_down

pytestmark = pytest.mark.slow

TENANT = "acme"
DAY = "2026-11-30"
PRESETS, PRESETS_DELETED = 150, 10
TENANTS_OF_DAY = 400
ENDPOINTS, ENDPOINTS_DELETED = 60, 6
WRITE_PAUSE_S = 0.02  # between updates of one bucket while the reads run
STEPDOWNS = 15  # one bucket's stream after the other
READS_PER_STEPDOWN = 4  # per node connection, of the old and of the new code, one at a time

BUCKETS = {
    "presets": NAMES.presets_bucket,
    "usage": NAMES.usage_bucket,
    "webhooks": NAMES.webhook_endpoints_bucket,
}


# ---- the code that was replaced (kept here to count its answers) --------------------------------


async def _watch_keys(kv: KeyValue, keys: str, *, meta_only: bool) -> dict[str, bytes]:
    """A KV watch read up to its "caught up" marker (presets.names and usage before)."""
    watcher = await kv.watch(keys, ignore_deletes=True, meta_only=meta_only)
    found: dict[str, bytes] = {}
    try:
        async for entry in watcher:
            if entry is None:
                break
            found[entry.key] = entry.value or b""
    finally:
        await watcher.stop()  # type: ignore[no-untyped-call]
    return found


async def old_preset_names(nc: Client, kv: KeyValue) -> set[str]:
    found = await _watch_keys(kv, f"{TENANT}.>", meta_only=True)
    return {k.removeprefix(f"{TENANT}.") for k in found}


async def old_usage_tenants(nc: Client, kv: KeyValue) -> set[str]:
    found = await _watch_keys(kv, names.usage_day_keys(DAY), meta_only=False)
    return {usage.decode_usage(v).tenant for v in found.values() if v}


async def old_endpoint_ids(nc: Client, kv: KeyValue) -> set[str]:
    """EndpointStore.for_tenant before: one multi_last direct get, whichever replica answers."""
    bucket = NAMES.webhook_endpoints_bucket
    request = {"multi_last": [names.kv_subject(bucket, names.tenant_keys(TENANT))]}
    msgs = await direct_get.direct_get(nc, names.kv_stream(bucket), request, 5.0)
    live = [m for m in msgs if (m.headers or {}).get("KV-Operation") is None and m.data]
    return {direct_get.subject_of(m).rpartition(".")[2] for m in live}


# ---- the code as it is --------------------------------------------------------------------------


async def new_preset_names(nc: Client, kv: KeyValue) -> set[str]:
    store = PresetStore(nc, kv, NAMES.presets_bucket)
    return set(await store.names(TENANT))


async def new_usage_tenants(nc: Client, kv: KeyValue) -> set[str]:
    records = await usage.read_days(nc, NAMES.usage_bucket, kv, [DAY], None)
    return {r.tenant for r in records}


async def new_endpoint_ids(nc: Client, kv: KeyValue) -> set[str]:
    store = EndpointStore(nc, nc.jetstream(), NAMES)
    return {e.id for e in await store.for_tenant(TENANT)}


Reader = Callable[[Client, KeyValue], Awaitable[set[str]]]
Node = tuple[Client, dict[str, KeyValue]]  # a connection to one node and its buckets
READERS: dict[str, tuple[Reader, Reader]] = {
    "presets": (old_preset_names, new_preset_names),
    "usage": (old_usage_tenants, new_usage_tenants),
    "webhooks": (old_endpoint_ids, new_endpoint_ids),
}


@dataclass
class Written:
    """What one listing must hold: the keys written before the faults, and those created
    meanwhile, each from when its write was acknowledged; `tried` may show up early."""

    base: set[str]
    acked: dict[str, float] = field(default_factory=dict)  # key -> monotonic time of its ack
    tried: set[str] = field(default_factory=set)
    updates: int = 0

    def due(self, at: float) -> set[str]:
        return self.base | {k for k, t in self.acked.items() if t < at}

    def check(self, got: set[str], started: float) -> bool:
        """Complete (every key acknowledged before the read began) and nothing made up."""
        return self.due(started) <= got <= self.base | self.tried


@dataclass
class Tally:
    reads: Counter[str] = field(default_factory=Counter)
    wrong: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    sizes: dict[str, list[int]] = field(default_factory=dict)  # sizes of the wrong answers

    async def read(self, bucket: str, reader: Reader, node: Node, want: Written) -> None:
        c, kvs = node
        started = time.monotonic()
        try:
            got = await asyncio.wait_for(reader(c, kvs[bucket]), timeout=15)
        except Exception:  # an error is a 503 to a client, not a wrong answer
            self.errors[bucket] += 1
            return
        self.reads[bucket] += 1
        if not want.check(got, started):
            self.wrong[bucket] += 1
            self.sizes.setdefault(bucket, []).append(len(got))

    def line(self) -> str:
        return " ".join(f"{b}={self.wrong[b]}/{self.reads[b]}" for b in BUCKETS)


async def turns(
    bucket: str, old: tuple[Tally, Node], new: tuple[Tally, Node], want: Written
) -> None:
    """One node's listings after a step-down: the old code and the new one, turn by turn."""
    old_reader, new_reader = READERS[bucket]
    for _ in range(READS_PER_STEPDOWN):
        await old[0].read(bucket, old_reader, old[1], want)
        await new[0].read(bucket, new_reader, new[1], want)


# ---- the data -----------------------------------------------------------------------------------


async def write_data(nc: Client) -> dict[str, set[str]]:
    """What each listing must answer."""
    js = nc.jetstream(timeout=5)
    presets = await PresetStore.open(nc, js, NAMES)
    fields = PresetFields(format="flac", metadata=Metadata(title="A show", artist="Someone"))
    for i in range(0, PRESETS, 10):  # create checks the tenant's count: not all at once
        await asyncio.gather(
            *(presets.create(TENANT, f"p{n:03d}", fields) for n in range(i, i + 10))
        )
    await presets.create("other", "p00", PresetFields())  # another tenant: not listed
    for i in range(0, PRESETS, 4):  # a second revision of some
        await presets.replace(TENANT, f"p{i:03d}", PresetFields(format="wav"))
    deleted = {f"p{i:03d}" for i in range(1, PRESETS, PRESETS // PRESETS_DELETED)}
    for name in deleted:
        await presets.delete(TENANT, name)

    usage_kv = await js.key_value(NAMES.usage_bucket)
    tenants = {f"t{i:02d}" for i in range(TENANTS_OF_DAY)}
    await asyncio.gather(
        *(
            usage_kv.put(
                names.usage_key(DAY, t),
                usage.encode_usage(usage.TenantDayUsage(date=DAY, tenant=t, requested=1)),
            )
            for t in tenants
        )
    )
    record = usage.TenantDayUsage(date="2026-12-01", tenant="t00", requested=1)
    await usage_kv.put(names.usage_key("2026-12-01", "t00"), usage.encode_usage(record))

    endpoints = EndpointStore(nc, js, NAMES)
    ids = [new_endpoint_id() for _ in range(ENDPOINTS)]
    for endpoint_id in ids:
        await endpoints.create(_endpoint(endpoint_id))
    for endpoint_id in ids[:ENDPOINTS_DELETED]:
        await endpoints.delete(TENANT, endpoint_id)
    return {
        "presets": {f"p{i:03d}" for i in range(PRESETS)} - deleted,
        "usage": tenants,
        "webhooks": set(ids[ENDPOINTS_DELETED:]),
    }


async def keep_writing(nc: Client, written: dict[str, Written], stop: asyncio.Event) -> None:
    """New keys in every listed set while the reads run (a tenant's first job of the day, new
    presets and endpoints up to the tenant's limits), then new revisions of existing ones."""
    js = nc.jetstream(timeout=2)
    presets = await PresetStore.open(nc, js, NAMES)
    usage_kv = await js.key_value(NAMES.usage_bucket)
    endpoints = EndpointStore(nc, js, NAMES, timeout=2)

    async def preset(n: int) -> str:
        name = f"q{n:03d}"
        if len(written["presets"].base) + n <= MAX_PRESETS_PER_TENANT:
            await presets.create(TENANT, name, PresetFields(format="wav"))
            return name
        await presets.replace(TENANT, "p000", PresetFields(format="flac" if n % 2 else "wav"))
        return ""

    async def usage_record(n: int) -> str:
        tenant = f"n{n:04d}"
        record = usage.TenantDayUsage(date=DAY, tenant=tenant, requested=1)
        await usage_kv.put(names.usage_key(DAY, tenant), usage.encode_usage(record))
        return tenant

    async def endpoint(n: int) -> str:
        if len(written["webhooks"].base) + n <= MAX_ENDPOINTS_PER_TENANT:
            new = _endpoint(new_endpoint_id())
            written["webhooks"].tried.add(new.id)
            await endpoints.create(new)
            return new.id
        some = min(written["webhooks"].base)
        await endpoints.update(
            TENANT, some, lambda e: msgspec.structs.replace(e, description=str(n))
        )
        return ""

    async def loop(bucket: str, write: Callable[[int], Awaitable[str]]) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                key = await write(n)
            except Exception:  # an election: the services retry too
                await asyncio.sleep(0.05)
                continue
            if key:
                written[bucket].acked[key] = time.monotonic()
            else:
                written[bucket].updates += 1
            await asyncio.sleep(WRITE_PAUSE_S)

    for bucket, prefix, count in (("presets", "q", 999), ("usage", "n", 9999)):
        written[bucket].tried |= {f"{prefix}{n:0{len(str(count))}d}" for n in range(count)}
    await asyncio.gather(
        loop("presets", preset), loop("usage", usage_record), loop("webhooks", endpoint)
    )


def _endpoint(endpoint_id: str) -> Endpoint:
    now = utcnow()
    return Endpoint(
        id=endpoint_id,
        tenant=TENANT,
        url="https://example.com/hook",
        events=["job.completed"],
        created_at=now,
        updated_at=now,
    )


async def test_listings_are_complete_right_after_leader_changes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="audioprep.kv_read")
    started = time.monotonic()
    cluster = NatsCluster(tmp_path / "cluster").start()
    conns: list[Client] = []
    try:
        await wait_for_jetstream(cluster.url)
        settings = fault_settings(cluster.url, tmp_path / "data", stream_replicas=3)
        await provision_when_ready(settings)
        admin = await connect(settings, "admin")
        conns.append(admin)
        truth = await write_data(admin)
        written = {bucket: Written(base=keys) for bucket, keys in truth.items()}
        # one connection per node for each kind of reader, so every node answers some reads
        per_node: list[tuple[Node, Node]] = []
        for node in cluster.nodes:
            pair: list[Node] = []
            for kind in ("old", "new"):
                c = await connect(settings.with_(nats_url=node.url), f"{kind}-{node.port}")
                conns.append(c)
                kvs = {b: await c.jetstream(timeout=5).key_value(n) for b, n in BUCKETS.items()}
                pair.append((c, kvs))
            per_node.append((pair[0], pair[1]))
        for bucket, (_, new) in READERS.items():  # quiet cluster: the answers are right
            c, kvs = per_node[0][1]
            assert await new(c, kvs[bucket]) == truth[bucket], bucket

        old, new = Tally(), Tally()
        stepdowns, refused = Counter[str](), 0
        writer = await connect(settings, "writer")
        conns.append(writer)
        stop = asyncio.Event()
        writing = asyncio.create_task(keep_writing(writer, written, stop))
        faults_started = time.monotonic()
        for i in range(STEPDOWNS):
            bucket = list(BUCKETS)[i % len(BUCKETS)]
            refused += await step_down(admin, names.kv_stream(BUCKETS[bucket]))
            stepdowns[bucket] += 1
            await asyncio.gather(
                *(turns(bucket, (old, o), (new, n), written[bucket]) for o, n in per_node)
            )
        faults_s = time.monotonic() - faults_started
        stop.set()
        await asyncio.wait_for(writing, timeout=15)
        print(
            f"\n[kv-listing-leader-changes] stepdowns={sum(stepdowns.values())} "
            f"({','.join(f'{b}={n}' for b, n in stepdowns.items())}) refused={refused} "
            f"wrong_old={sum(old.wrong.values())}/{sum(old.reads.values())} ({old.line()}) "
            f"wrong_new={sum(new.wrong.values())}/{sum(new.reads.values())} ({new.line()}) "
            f"old_wrong_sizes={old.sizes} errors_old={sum(old.errors.values())} "
            f"errors_new={sum(new.errors.values())} "
            f"new_by_consumer={sum('reading by consumer' in r.message for r in caplog.records)} "
            f"sizes=presets:{len(truth['presets'])},usage:{len(truth['usage'])},"
            f"webhooks:{len(truth['webhooks'])} "
            f"created={','.join(f'{b}:{len(w.acked)}' for b, w in written.items())} "
            f"updated={','.join(f'{b}:{w.updates}' for b, w in written.items())} "
            f"setup_s={faults_started - started:.1f} faults_s={faults_s:.1f} "
            f"wall_s={time.monotonic() - started:.1f}"
        )
        assert sum(new.wrong.values()) == 0, (new.wrong, new.sizes)
        for bucket in BUCKETS:
            assert new.reads[bucket] >= 2 * stepdowns[bucket], (bucket, new.reads, new.errors)
    finally:
        for c in conns:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(c.close(), timeout=5)
        cluster.stop()
