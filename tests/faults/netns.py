"""Simulated hosts for fault tests: one network namespace per host, all on one bridge.

`Lab` makes a "switch" namespace holding a bridge, and one namespace per host with its own
address on it (veth pairs). The test process itself (the root namespace) is a host too: a
veth from it into the bridge, at `.1`, so the test can reach every host, and every host it.
Processes run on a host through `ip netns exec`. `cut(host, peers)` partitions a host from
some peers with nftables drop rules in the host's namespace (both directions; traffic with
everyone else flows); `heal(host)` removes them. Needs root, `ip` (iproute2) and `nft`
(nftables): `Lab.available()` says why not, and the tests skip loudly.

Nothing here touches the root namespace but the one veth it adds (named `r<tag>`, removed on
close with everything else); the subnet is a random /24 in 10.200.0.0/13 not routed here.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from audioprep.shared.nats_cluster import CLUSTER_NAME, node_name
from audioprep.shared.nats_server import nats_server_binary

NATS_CLIENT_PORT = 4222
NATS_ROUTE_PORT = 6222
NATS_MONITOR_PORT = 8222


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


@dataclass
class Host:
    name: str
    netns: str
    address: str

    def prefix(self) -> list[str]:
        """Run a command on this host: `[*host.prefix(), argv...]`."""
        return ["ip", "netns", "exec", self.netns]


@dataclass
class Lab:
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    hosts: dict[str, Host] = field(default_factory=dict)
    subnet: ipaddress.IPv4Network = field(init=False)
    _cut: set[str] = field(default_factory=set)

    @staticmethod
    def available() -> str | None:
        """None when namespaces can be made here, else why not."""
        if os.geteuid() != 0:
            return "network namespaces need root"
        for tool in ("ip", "nft"):
            if shutil.which(tool) is None:
                return f"`{tool}` is missing (make system-deps installs iproute2 and nftables)"
        probe = f"ap-probe-{secrets.token_hex(3)}"
        made = _ip("netns", "add", probe, check=False)
        if made.returncode != 0:
            return f"`ip netns add` failed: {made.stderr.strip()}"
        _ip("netns", "del", probe, check=False)
        return None

    def __post_init__(self) -> None:
        used = _ip("-4", "route", "show").stdout
        for _ in range(50):
            second, third = secrets.randbelow(8), secrets.randbelow(256)
            net = ipaddress.IPv4Network(f"10.{200 + second}.{third}.0/24")
            if str(net.network_address).rsplit(".", 1)[0] + "." not in used:
                break
        self.subnet = net
        self.switch = f"ap-{self.tag}-sw"
        self.root_if = f"r{self.tag}"
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        # the test process's own leg into the bridge, at .1
        peer = f"s{self.tag}"
        _ip("link", "add", self.root_if, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", self.switch)
        _ip("-n", self.switch, "link", "set", peer, "master", "br0", "up")
        _ip("addr", "add", f"{self.address(1)}/24", "dev", self.root_if)
        _ip("link", "set", self.root_if, "up")

    def address(self, n: int) -> str:
        return str(self.subnet.network_address + n)

    def add_host(self, name: str) -> Host:
        n = 10 + len(self.hosts)
        netns = f"ap-{self.tag}-{name}"
        inside, outside = f"a{self.tag}{n}", f"b{self.tag}{n}"
        _ip("netns", "add", netns)
        _ip("link", "add", inside, "type", "veth", "peer", "name", outside)
        _ip("link", "set", inside, "netns", netns)
        _ip("-n", netns, "link", "set", inside, "name", "eth0")
        _ip("link", "set", outside, "netns", self.switch)
        _ip("-n", self.switch, "link", "set", outside, "master", "br0", "up")
        host = Host(name=name, netns=netns, address=self.address(n))
        _ip("-n", netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        self.hosts[name] = host
        return host

    def cut(self, host: Host, peers: list[Host]) -> None:
        """Drop every packet between `host` and `peers` (nftables, in `host`'s namespace)."""
        addresses = ", ".join(p.address for p in peers)
        ruleset = f"""table inet partition {{
    chain input {{
        type filter hook input priority 0;
        ip saddr {{ {addresses} }} drop
    }}
    chain output {{
        type filter hook output priority 0;
        ip daddr {{ {addresses} }} drop
    }}
}}
"""
        subprocess.run(
            [*host.prefix(), "nft", "-f", "-"],
            input=ruleset,
            text=True,
            check=True,
            capture_output=True,
        )
        self._cut.add(host.name)

    def heal(self, host: Host) -> None:
        subprocess.run(
            [*host.prefix(), "nft", "delete", "table", "inet", "partition"],
            check=False,
            capture_output=True,
        )
        self._cut.discard(host.name)

    def close(self) -> None:
        for host in self.hosts.values():
            _ip("netns", "del", host.netns, check=False)
        _ip("link", "del", self.root_if, check=False)
        _ip("netns", "del", self.switch, check=False)


@contextlib.contextmanager
def lab() -> Iterator[Lab]:
    made = Lab()
    try:
        yield made
    finally:
        made.close()


def wait_for_tcp(address: str, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((address, port), timeout=0.3):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing on {address}:{port} after {timeout}s") from None
            time.sleep(0.05)


# ---- a NATS cluster whose nodes are hosts -------------------------------------------------------


# A system account, for the operator requests a cluster needs (`$JS.API.SERVER.REMOVE`: the
# peer-remove of docs/reliability.md). Clients without credentials (the services) still land in
# the global account, as without it.
SYSTEM_USER = "sys"
SYSTEM_PASSWORD = "sys-secret"


def netns_node_config(index: int, hosts: list[Host], routes_to: list[Host] | None = None) -> str:
    """nats-server config for node `index` listening on its host's address (the same shape as
    deploy/cluster/, which listens on loopback, plus a system account). Its routes go to
    `routes_to` (default: every host)."""
    me = hosts[index]
    routes = "\n".join(
        f"    nats-route://{h.address}:{NATS_ROUTE_PORT}" for h in (routes_to or hosts)
    )
    return f"""server_name: {node_name(index)}
listen: {me.address}:{NATS_CLIENT_PORT}
http: {me.address}:{NATS_MONITOR_PORT}
max_payload: 1MB
jetstream {{
  sync_interval: always
  max_memory_store: 64MB
  max_file_store: 2GB
}}
accounts {{
  SYS: {{ users: [{{ user: {SYSTEM_USER}, password: {SYSTEM_PASSWORD} }}] }}
}}
system_account: SYS
cluster {{
  name: {CLUSTER_NAME}
  listen: {me.address}:{NATS_ROUTE_PORT}
  routes: [
{routes}
  ]
}}
"""


class NetNode:
    """One nats-server on its own host; kill -9 it, wipe its store, start it again."""

    def __init__(
        self, index: int, hosts: list[Host], root: Path, routes_to: list[Host] | None = None
    ) -> None:
        self.index = index
        self.host = hosts[index]
        self.name = node_name(index)
        self.store = root / f"n{index + 1}"
        self.config = root / f"node{index + 1}.conf"
        self.config.write_text(netns_node_config(index, hosts, routes_to))
        self.log = root / f"node{index + 1}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host.address}:{NATS_CLIENT_PORT}"

    @property
    def monitor(self) -> str:
        return f"http://{self.host.address}:{NATS_MONITOR_PORT}"

    def start(self) -> NetNode:
        self.store.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    *self.host.prefix(),
                    nats_server_binary(),
                    "-c",
                    str(self.config),
                    "-js",
                    "-sd",
                    str(self.store),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for_tcp(self.host.address, NATS_CLIENT_PORT)
        return self

    def kill(self) -> None:
        """kill -9: no shutdown, no flush."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def wipe(self) -> None:
        shutil.rmtree(self.store, ignore_errors=True)


class NetCluster:
    def __init__(self, hosts: list[Host], root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.hosts = list(hosts)
        self.nodes = [NetNode(i, hosts, root) for i in range(len(hosts))]

    def replace(self, lost: NetNode, host: Host) -> NetNode:
        """A new node on `host` in place of `lost` (already dead): the next server name
        (`audioprep-n4`), an empty store, routes to the nodes still here; started."""
        self.nodes.remove(lost)
        self.hosts.append(host)
        index = len(self.hosts) - 1
        node = NetNode(index, self.hosts, self.root, [n.host for n in self.nodes] + [host])
        self.nodes.append(node)
        return node.start()

    @property
    def url(self) -> str:
        return ",".join(n.url for n in self.nodes)

    def start(self) -> NetCluster:
        for node in self.nodes:
            node.start()
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def node(self, name: str) -> NetNode:
        return next(n for n in self.nodes if n.name == name)


def python_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "audioprep.services.cli.main", *args]
