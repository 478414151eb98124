"""Issue 20 scenarios 6 and 7 on simulated hosts (network namespaces, tests/faults/netns.py).

Three NATS nodes, the API and two workers each on their own host with their own address; the
test process is the client host. Partitions are nftables drop rules.

- Scenario 6: the JOBS stream leader cut off from the other two nodes for CUT_S, CYCLES
  times, while uploads keep arriving; then a worker host cut off from every node for longer
  than ack_wait. A client connected only to the cut-off node publishes to an R3 stream all
  along: it must get errors, never an ack that the healed cluster does not hold.
- Scenario 7: one node killed with kill -9, its store wiped, and brought back by the
  procedures in docs/reliability.md, under load: under its own name ("A node lost its data"),
  and, with its host gone for good, replaced by a new node under a new name after its peer
  was removed ("A node is gone for good").

Afterwards nothing acknowledged is missing, each job ended once, and every node's JOBS
`last_seq` agrees.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from nats.js.api import StreamConfig

from audioprep.domain.events import JobStarted
from audioprep.shared.event_store import EventStore
from audioprep.shared.nats_cluster import wait_for_jetstream
from audioprep.shared.nats_conn import connect
from audioprep.shared.settings import Settings
from tests.faults.harness import (
    NAMES,
    ApiProcess,
    KeyedClient,
    Workers,
    audit,
    by_job,
    fault_settings,
    provision_when_ready,
    read_stream,
    retrying,
    wait_terminal,
)
from tests.faults.netns import SYSTEM_PASSWORD, SYSTEM_USER, Host, Lab, NetCluster, lab
from tests.media import write_tone

pytestmark = pytest.mark.slow

CYCLES = 3
CUT_S = 4.0  # past ack_wait, for the worker host
ACK_WAIT_S = 2.0
PROBE = "PROBE"


@dataclass
class Site:
    lab: Lab
    cluster: NetCluster
    settings: Settings
    api: ApiProcess
    workers: Workers
    worker_hosts: list[Host]
    root: Path


@contextlib.contextmanager
def _lab_or_skip() -> Iterator[Lab]:
    reason = Lab.available()
    if reason is not None:
        pytest.skip(f"SKIPPED LOUDLY: can't create network namespaces here: {reason}")
    with lab() as made:
        yield made


@contextlib.asynccontextmanager
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    """Hosts n1..n3 (NATS), api, w1, w2; the cluster provisioned with replicas 3."""
    with _lab_or_skip() as net:
        nodes = [net.add_host(f"n{i}") for i in (1, 2, 3)]
        api_host = net.add_host("api")
        worker_hosts = [net.add_host("w1"), net.add_host("w2")]
        cluster = NetCluster(nodes, tmp_path / "cluster").start()
        workers: Workers | None = None
        api: ApiProcess | None = None
        try:
            await wait_for_jetstream(cluster.url)
            settings = fault_settings(
                cluster.url, tmp_path / "data", stream_replicas=3, ack_wait_s=ACK_WAIT_S
            )
            await provision_when_ready(settings)
            api = ApiProcess(
                settings, tmp_path, host=api_host.address, port=8000, prefix=api_host.prefix()
            ).start()
            workers = Workers(settings, tmp_path)
            for host in worker_hosts:
                workers.start(prefix=host.prefix())
            await api.ready()
            yield Site(net, cluster, settings, api, workers, worker_hosts, tmp_path)
        finally:
            if api is not None:
                api.stop()
            if workers is not None:
                workers.stop_all()
            cluster.stop()


async def _leader(js: Any, stream: str = NAMES.stream) -> str:
    cluster = (await js.stream_info(stream)).cluster
    assert cluster is not None and cluster.leader
    return str(cluster.leader)


async def _last_seqs(cluster: NetCluster, stream: str) -> dict[str, int]:
    """Each node's own view of `stream` (its monitoring endpoint, not the leader's answer)."""
    out: dict[str, int] = {}
    async with httpx.AsyncClient(timeout=2) as client:
        for node in cluster.nodes:
            resp = await client.get(f"{node.monitor}/jsz", params={"streams": "true"})
            for account in resp.json().get("account_details", []):
                for detail in account.get("stream_detail", []):
                    if detail["name"] == stream:
                        out[node.name] = int(detail["state"]["last_seq"])
    return out


async def _converged(cluster: NetCluster, stream: str, timeout: float = 30.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.HTTPError):
            seqs = await _last_seqs(cluster, stream)
            if len(seqs) == len(cluster.nodes) and len(set(seqs.values())) == 1:
                return seqs
        assert time.monotonic() < deadline, f"{stream} never converged: {seqs}"
        await asyncio.sleep(0.25)


class Load:
    """Uploads, each under its own Idempotency-Key, `concurrency` at a time until stopped."""

    def __init__(self, client: KeyedClient, prefix: str, concurrency: int = 2) -> None:
        self.client = client
        self.prefix = prefix
        self.concurrency = concurrency
        self.sent = 0
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    async def _loop(self) -> None:
        while not self.stop.is_set():
            self.sent += 1
            await self.client.post(f"{self.prefix}-{self.sent}")
            await asyncio.sleep(0.15)  # a steady trickle the two workers keep up with

    def __enter__(self) -> Load:
        self.tasks = [asyncio.create_task(self._loop()) for _ in range(self.concurrency)]
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks)


class MinorityProbe:
    """A client connected only to one node, publishing to PROBE (R3) as fast as it can."""

    def __init__(self, url: str, label: str) -> None:
        self.url = url
        self.label = label
        self.acked: list[tuple[int, str]] = []  # (seq, subject)
        self.errors = 0
        self.stop = asyncio.Event()

    async def run(self) -> None:
        nc = await nats.connect(self.url, allow_reconnect=False, connect_timeout=2)
        js = nc.jetstream()
        n = 0
        try:
            while not self.stop.is_set():
                n += 1
                subject = f"probe.{self.label}.{n}"
                try:
                    ack = await js.publish(subject, b"x", timeout=0.5)
                    self.acked.append((ack.seq, subject))
                except Exception:
                    self.errors += 1
                    await asyncio.sleep(0.05)
        finally:
            with contextlib.suppress(Exception):
                await nc.close()


@pytest.fixture(scope="module")
async def hosts(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Site]:
    """One set of hosts for both scenarios (they leave the cluster whole and healthy)."""
    async with site(tmp_path_factory.mktemp("hosts")) as made:
        yield made


async def test_partitions_lose_nothing_and_converge(hosts: Site, tmp_path: Path) -> None:
    tone = write_tone(tmp_path / "tone.wav", seconds=0.3).read_bytes()
    s = hosts
    nc = await connect(s.settings, "fault-test")
    js = nc.jetstream()
    await retrying(
        lambda: js.add_stream(StreamConfig(name=PROBE, subjects=["probe.>"], num_replicas=3))
    )
    events = EventStore(nc, js, NAMES)
    probes: list[MinorityProbe] = []
    starts: dict[str, set[str]] = {}  # job → worker names that started it

    async def on_started(msg: Any) -> None:
        from audioprep.domain.events import decode_event

        event = decode_event(msg.data)
        if isinstance(event, JobStarted):
            starts.setdefault(event.job_id, set()).add(event.worker)

    await nc.subscribe("jobs.*.*.started", cb=on_started)
    try:
        async with httpx.AsyncClient(base_url=s.api.url, timeout=30) as client:
            kc = KeyedClient(client, tone, retry_for_s=60)
            with Load(kc, "part") as load:
                await asyncio.sleep(0.5)
                # 1. The JOBS stream leader cut off from its two peers, CYCLES times.
                for cycle in range(CYCLES):
                    name = await retrying(lambda: _leader(js))
                    node = s.cluster.node(name)
                    peers = [n.host for n in s.cluster.nodes if n is not node]
                    s.lab.cut(node.host, peers)
                    probe = MinorityProbe(node.url, f"c{cycle}")
                    probes.append(probe)
                    probing = asyncio.create_task(probe.run())
                    await asyncio.sleep(CUT_S)
                    probe.stop.set()
                    await probing
                    s.lab.heal(node.host)
                    await asyncio.sleep(0.5)
                # 2. A worker host cut off from every node past ack_wait.
                cut_worker = s.worker_hosts[0]
                s.lab.cut(cut_worker, [n.host for n in s.cluster.nodes])
                await asyncio.sleep(CUT_S)
                s.lab.heal(cut_worker)
                await asyncio.sleep(0.5)
                await load.finish()
        accepted = [ids[0] for ids in kc.answers.values()]
        unfinished = await wait_terminal(events, accepted, timeout=90)
        jobs_seqs = await _converged(s.cluster, NAMES.stream)
        probe_seqs = await _converged(s.cluster, PROBE)
        probe_seqs_max = max(probe_seqs.values())
        # every ack a minority client got is in the healed stream, at its sequence
        false_acks = 0
        for probe in probes:
            for seq, subject in probe.acked:
                got = await retrying(lambda q=seq: js.get_msg(PROBE, q))
                false_acks += got.subject != subject
        history = by_job(await read_stream(js))
        server_errors = sum(n for st, n in kc.statuses.items() if st >= 500 and st != 503)
        counts = audit(accepted, history, server_errors=server_errors)
        taken_over = sum(1 for names in starts.values() if len(names) > 1)
        print(
            "\n"
            + counts.line(
                "partitions",
                cycles=CYCLES,
                cut_s=CUT_S,
                answered_503=kc.statuses[503],
                minority_acks=sum(len(p.acked) for p in probes),
                minority_errors=sum(p.errors for p in probes),
                minority_false_acks=false_acks,
                minority_errors_stored_anyway=probe_seqs_max - sum(len(p.acked) for p in probes),
                worker_cut_s=CUT_S,
                jobs_run_by_two_workers=taken_over,
                jobs_last_seq=",".join(str(v) for v in jobs_seqs.values()),
                probe_last_seq=",".join(str(v) for v in probe_seqs.values()),
            )
        )
        assert not unfinished, s.workers.logs()
        counts.assert_clean()
        assert counts.completed == len(accepted)
        assert kc.retry_after_missing == 0
        assert false_acks == 0
        assert all(p.errors > 0 for p in probes)  # the minority was really cut off
    finally:
        await nc.close()


async def test_a_wiped_node_rejoins_and_carries_the_data(hosts: Site, tmp_path: Path) -> None:
    """kill -9 + wiped store of the JOBS leader, brought back as docs/reliability.md says ("A
    node lost its data"); then another original node is killed, so every quorum needs the
    rejoined node's copy."""
    tone = write_tone(tmp_path / "tone.wav", seconds=0.3).read_bytes()
    s = hosts
    nc = await connect(s.settings, "fault-test")
    js = nc.jetstream()
    events = EventStore(nc, js, NAMES)
    try:
        async with httpx.AsyncClient(base_url=s.api.url, timeout=30) as client:
            kc = KeyedClient(client, tone, retry_for_s=60)
            with Load(kc, "wipe") as load:
                await asyncio.sleep(0.5)
                # 1. kill -9, store gone (a lost disk); the two others carry on.
                wiped = s.cluster.node(await retrying(lambda: _leader(js)))
                wiped.kill()
                wiped.wipe()
                await asyncio.sleep(1.0)
                # 2. The procedure: same server name, empty store, the others up and current;
                #    wait until it is a current replica of every stream again.
                wiped.start()
                rejoin_s = await _until_current(js, wiped.name)
                seqs_after_rejoin = await _converged(s.cluster, NAMES.stream)
                # 3. The rejoined copy is used: another original node (the leader now, unless
                #    that is the rejoined one) is killed, so every quorum needs the new copy.
                name = await retrying(lambda: _leader(js))
                others = [n for n in s.cluster.nodes if n is not wiped]
                other = next((n for n in others if n.name == name), others[0])
                other.kill()
                await asyncio.sleep(2.0)
                other.start()
                await _until_current(js, other.name)
                await asyncio.sleep(0.5)
                await load.finish()
        accepted = [ids[0] for ids in kc.answers.values()]
        unfinished = await wait_terminal(events, accepted, timeout=90)
        jobs_seqs = await _converged(s.cluster, NAMES.stream)
        history = by_job(await read_stream(js))
        server_errors = sum(n for st, n in kc.statuses.items() if st >= 500 and st != 503)
        counts = audit(accepted, history, server_errors=server_errors)
        print(
            "\n"
            + counts.line(
                "wiped-node-rejoins",
                wiped=wiped.name,
                rejoined_current_s=round(rejoin_s, 1),
                last_seq_at_rejoin=",".join(str(v) for v in seqs_after_rejoin.values()),
                then_killed=other.name,
                answered_503=kc.statuses[503],
                jobs_last_seq=",".join(str(v) for v in jobs_seqs.values()),
            )
        )
        assert not unfinished, s.workers.logs()
        counts.assert_clean()
        assert counts.completed == len(accepted)
    finally:
        await nc.close()


async def _until_current(js: Any, name: str, timeout: float = 60.0) -> float:
    """Seconds until `name` is a current replica of every stream (stream info of each)."""
    started = time.monotonic()
    while True:
        try:
            names = [n async for n in _stream_names(js)]
            ok = True
            for stream in names:
                cluster = (await js.stream_info(stream)).cluster
                peers = {cluster.leader: True} | {
                    r.name: bool(r.current) for r in cluster.replicas or []
                }
                ok = ok and peers.get(name, False)
            if ok and names:
                return time.monotonic() - started
        except Exception:  # an election under way
            pass
        assert time.monotonic() - started < timeout, f"{name} not current after {timeout}s"
        await asyncio.sleep(0.25)


async def _stream_names(js: Any) -> AsyncIterator[str]:
    for info in await js.streams_info():
        yield info.config.name


async def test_a_lost_node_is_replaced_under_a_new_name(hosts: Site, tmp_path: Path) -> None:
    """kill -9 + wiped store of the JOBS leader, its host gone for good: the procedure of
    docs/reliability.md ("A node is gone for good") under load — remove its peer
    (`$JS.API.SERVER.REMOVE` from the system account), start a new node on a new host under
    a new name with an empty store. Every stream and durable consumer is placed on the new
    peer again (3 replicas, the lost one gone, the meta group too), nothing acknowledged is
    lost, and the new node's own copy of JOBS agrees with the others."""
    tone = write_tone(tmp_path / "tone.wav", seconds=0.3).read_bytes()
    s = hosts
    nc = await connect(s.settings, "fault-test")
    js = nc.jetstream()
    events = EventStore(nc, js, NAMES)
    system = await nats.connect(
        [n.url for n in s.cluster.nodes], user=SYSTEM_USER, password=SYSTEM_PASSWORD
    )
    try:
        async with httpx.AsyncClient(base_url=s.api.url, timeout=30) as client:
            kc = KeyedClient(client, tone, retry_for_s=60)
            with Load(kc, "replace") as load:
                await asyncio.sleep(0.5)
                # 1. kill -9, store gone, and the host with it.
                lost = s.cluster.node(await retrying(lambda: _leader(js)))
                lost.kill()
                lost.wipe()
                killed_at = time.monotonic()
                # 2. Once the two left have elected leaders for every stream (the lost node
                #    led JOBS), remove its peer: the meta leader answers (after an election
                #    of its own, if the lost node led the meta group too).
                await _until_led(js, lost.name)
                await retrying(lambda: _server_remove(system, lost.name))
                removed_at = time.monotonic()
                removed_s = removed_at - killed_at
                # 3. A new node, new host, new name, empty store, routes to the two left.
                new = s.cluster.replace(lost, s.lab.add_host("n4"))
                placed_s = await _until_placed(js, new.name, lost.name)
                meta = await _meta_peers(s.cluster)
                seqs_at_placed = await _converged(s.cluster, NAMES.stream)
                # 4. The new copy is used: the new node takes over as JOBS leader under load.
                await retrying(lambda: _step_down_to(nc, NAMES.stream, new.name))
                led_by = await retrying(lambda: _leader(js))
                await asyncio.sleep(1.0)
                await load.finish()
        accepted = [ids[0] for ids in kc.answers.values()]
        unfinished = await wait_terminal(events, accepted, timeout=90)
        jobs_seqs = await _converged(s.cluster, NAMES.stream)
        history = by_job(await read_stream(js))
        server_errors = sum(n for st, n in kc.statuses.items() if st >= 500 and st != 503)
        counts = audit(accepted, history, server_errors=server_errors)
        streams = [n async for n in _stream_names(js)]
        print(
            "\n"
            + counts.line(
                "node-replaced",
                removed=lost.name,
                new=new.name,
                longest_202_gap_s=round(kc.longest_gap_s(killed_at), 1),
                longest_202_gap_after_remove_s=round(kc.longest_gap_s(removed_at), 1),
                removed_after_s=round(removed_s, 1),
                placed_s=round(placed_s, 1),
                streams_on_new_peer=len(streams),
                meta_peers=",".join(sorted(meta)),
                jobs_leader_after=led_by,
                answered_503=kc.statuses[503],
                last_seq_at_placed=",".join(str(v) for v in seqs_at_placed.values()),
                jobs_last_seq=",".join(str(v) for v in jobs_seqs.values()),
            )
        )
        assert not unfinished, s.workers.logs()
        counts.assert_clean()
        assert counts.completed == len(accepted)
        assert set(meta) == {n.name for n in s.cluster.nodes}  # the lost one is out
        assert new.name in jobs_seqs and len(jobs_seqs) == 3
        assert led_by == new.name
    finally:
        await system.close()
        await nc.close()


async def _server_remove(system: Any, name: str) -> None:
    """`nats server raft peer-remove NAME`: the JetStream API request from the system
    account; an error answer (not a member, no such server) fails the test."""
    import json

    reply = await system.request(
        "$JS.API.SERVER.REMOVE", json.dumps({"peer": name}).encode(), timeout=2
    )
    answer = json.loads(reply.data)
    if answer.get("error"):
        raise AssertionError(f"peer-remove {name}: {answer['error']}")


async def _step_down_to(nc: Any, stream: str, name: str) -> None:
    """`nats stream cluster step-down STREAM --preferred NAME` (nats-server 2.11+)."""
    import json

    reply = await nc.request(
        f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}",
        json.dumps({"placement": {"preferred": name}}).encode(),
        timeout=2,
    )
    answer = json.loads(reply.data)
    if answer.get("error"):
        raise AssertionError(f"step-down {stream} to {name}: {answer['error']}")


async def _until_led(js: Any, lost: str, timeout: float = 60.0) -> None:
    """Until every stream answers its info from a leader other than `lost`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            leaders = [await _leader(js, name) async for name in _stream_names(js)]
            if leaders and lost not in leaders:
                return
        except Exception:  # an election under way
            pass
        assert time.monotonic() < deadline, f"streams without a leader after {timeout}s"
        await asyncio.sleep(0.25)


async def _until_placed(js: Any, new: str, lost: str, timeout: float = 60.0) -> float:
    """Seconds until every stream and durable consumer has three peers, `new` a current one
    and `lost` none of them."""
    started = time.monotonic()
    while True:
        try:
            if await _placed(js, new, lost):
                return time.monotonic() - started
        except Exception:  # an election under way
            pass
        assert time.monotonic() - started < timeout, f"{new} not placed after {timeout}s"
        await asyncio.sleep(0.25)


async def _placed(js: Any, new: str, lost: str) -> bool:
    def ok(cluster: Any) -> bool:
        peers = {cluster.leader: True} | {r.name: bool(r.current) for r in cluster.replicas or []}
        return len(peers) == 3 and peers.get(new, False) and lost not in peers

    for info in await js.streams_info():
        if not ok(info.cluster):
            return False
        for consumer in await js.consumers_info(info.config.name):
            if consumer.config.durable_name and not ok(consumer.cluster):
                return False
    return True


async def _meta_peers(cluster: NetCluster) -> set[str]:
    """The JetStream meta group's members, as a node of it reports them (/jsz)."""
    node = cluster.nodes[0]
    async with httpx.AsyncClient(timeout=2) as client:
        meta = (await client.get(f"{node.monitor}/jsz")).json()["meta_cluster"]
    # `replicas` are the members other than the node answering
    return {node.name, *(r["name"] for r in meta.get("replicas", []))}
