"""Pod networking through the real CNI plugins (bridge, host-local, portmap, loopback) on real
network namespaces (root): supervisor.network.cni.pod.CniPodNetwork as the sandboxes use it.

Each test has its own network (`tests.support.cri.make_pod_net`: a bridge `ctrdt<pid>c<n>`, a
10.40-79.x /24 clear of the host's routes and of #15's tests, host-local's state and libcni's
cache in the test's temporary dir), here with `ipMasq` on as containerd's CI config has it,
and its namespaces pinned in the temporary dir. At the end, whatever the test did: the pins
are removed, then what the plugins left is reported (veths, leases, portmap's and bridge's
iptables rules for this network's name) and removed with the bridge; portmap's shared chains
(CNI-HOSTPORT-*) stay when they were there before (other runtimes of the host use them), else
go once no pod has a port in them. portmap sets route_localnet on the test's bridge, which goes
with it; the host's ip_forward, which the bridge plugin turns on for a gateway, is put back.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from supervisor.cri.model import PodRef, PortMapping
from supervisor.metadata.db import Database
from supervisor.network import netlink
from supervisor.network.cni.invoke import orphans
from supervisor.network.cni.pod import CniPodNetwork
from supervisor.network.cni.store import AttachmentStore
from tests.support.cri import (
    CNI_BIN_DIRS,
    PodNet,
    has_shared_chains,
    make_pod_net,
    pod_net_leftovers,
    remove_pod_net,
    remove_shared_chains_if_unused,
)

pytestmark = pytest.mark.integration

BIN_DIRS = [d for d in CNI_BIN_DIRS if Path(d).is_dir()]
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen()
print("ready", flush=True)
while True:
    c, peer = s.accept()
    c.sendall(b"pong\\n")
    c.close()
"""


@dataclass
class Lab:
    base: Path
    net: PodNet
    pins: Path

    def pin(self, name: str) -> Path:
        pin = self.pins / name
        netlink.netns_create(pin)
        return pin

    def run(self, body: Callable[[CniPodNetwork, AttachmentStore], Awaitable[Any]]) -> Any:
        async def main() -> Any:
            db = await Database.open(self.base / "meta.db")
            try:
                network = CniPodNetwork(
                    db, str(self.net.conf_dir), BIN_DIRS, str(self.net.cache_dir)
                )
                return await body(network, AttachmentStore(db))
            finally:
                await db.close()

        return asyncio.run(main())

    def leases(self) -> list[str]:
        d = self.net.ipam_dir / self.net.name
        skip = ("lock", "last_reserved_ip")
        return (
            sorted(p.name for p in d.iterdir() if not p.name.startswith(skip)) if d.is_dir() else []
        )

    def rules(self) -> list[str]:
        """The nat rules carrying this network's name: portmap's (dnat name) and bridge's
        ipMasq ones (name)."""
        listed = subprocess.run(
            ["iptables", "-w", "-t", "nat", "-S"], capture_output=True, text=True
        )
        mark = f'name: \\"{self.net.name}\\"'
        return [line for line in listed.stdout.splitlines() if mark in line]

    def veths(self) -> list[str]:
        brif = Path(f"/sys/class/net/{self.net.bridge}/brif")
        return sorted(p.name for p in brif.iterdir()) if brif.is_dir() else []


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    forward = IP_FORWARD.read_text()
    had_shared = has_shared_chains()
    net = make_pod_net(tmp_path)
    conflist = net.conflist()
    bridge = conflist["plugins"][0]  # as containerd's CI config: bridge's nat rules too, and
    bridge["ipMasq"] = True  # a default route (the host's own address answers through it)
    bridge["ipam"]["routes"] = [{"dst": "0.0.0.0/0"}]
    (net.conf_dir / "10-ctrd-test.conflist").write_text(json.dumps(conflist))
    made = Lab(tmp_path, net, tmp_path / "pins")
    left: list[str] = []
    try:
        yield made
    finally:
        if made.pins.exists():
            for pin in made.pins.iterdir():
                netlink.netns_remove(pin)
            netlink.netns_release_dir(made.pins)
        left = pod_net_leftovers(net) + [f"rule: {r}" for r in made.rules()]
        for rule in made.rules():  # bridge's masquerade rules: portmap's go below
            args = shlex.split(rule)
            if "dnat name" in rule:
                continue
            subprocess.run(["iptables", "-w", "-t", "nat", "-D", *args[1:]], capture_output=True)
            target = args[args.index("-j") + 1]
            if target.startswith("CNI-") and not target.startswith("CNI-HOSTPORT"):
                subprocess.run(["iptables", "-w", "-t", "nat", "-F", target], capture_output=True)
                subprocess.run(["iptables", "-w", "-t", "nat", "-X", target], capture_output=True)
        remove_pod_net(net)
        if not had_shared:
            remove_shared_chains_if_unused()
        if IP_FORWARD.read_text() != forward:  # bridge's isGateway turns forwarding on
            IP_FORWARD.write_text(forward)
    assert made.rules() == []
    assert not Path(f"/sys/class/net/{net.bridge}").exists()
    assert left == [], "the plugins left (removed now): " + "; ".join(left)


def sandbox_id() -> str:
    return secrets.token_hex(32)


def pod(sandbox: str, name: str = "web") -> PodRef:
    return PodRef(sandbox, name, "default", f"uid-{name}")


def free_port() -> int:
    for _ in range(100):
        port = 20000 + secrets.randbelow(10000)
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port")


def host_address() -> str:
    """The host's own address on its default route (not loopback, not a test bridge)."""
    out = subprocess.run(
        ["ip", "-j", "-4", "route", "get", "192.0.2.200"], capture_output=True, text=True
    )
    routes = json.loads(out.stdout or "[]")
    assert routes, out.stdout + out.stderr
    assert routes[0].get("prefsrc"), out.stdout
    return str(routes[0]["prefsrc"])


def in_netns(pin: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", f"--net={pin}", *argv], capture_output=True, text=True, timeout=30
    )


def answer(host: str, port: int) -> str:
    try:
        with socket.create_connection((host, port), timeout=3) as s:
            return s.recv(100).decode()
    except OSError as e:
        return f"error: {e}"


def test_a_pod_gets_an_address_its_gateway_and_host_ports_and_del_gives_all_back(lab: Lab):
    a, b = sandbox_id(), sandbox_id()
    pin_a, pin_b = lab.pin("a"), lab.pin("b")
    port = free_port()
    subnet = lab.net.subnet.rsplit(".", 1)[0]

    async def setup(network: CniPodNetwork, store: AttachmentStore) -> Any:
        return await asyncio.gather(
            network.setup(pod(a), str(pin_a), [PortMapping("tcp", 8080, port)], None, {}),
            network.setup(pod(b, "db"), str(pin_b), [], None, {}),
        )

    addr_a, addr_b = lab.run(setup)
    assert addr_a.ip.startswith(subnet + ".")
    assert addr_b.ip.startswith(subnet + ".")
    assert addr_a.ip != addr_b.ip
    assert lab.leases() == sorted([addr_a.ip, addr_b.ip])
    lease = (lab.net.ipam_dir / lab.net.name / addr_a.ip).read_text()
    assert lease.split()[0] == a  # host-local's: the sandbox id, then the ifname
    assert len(lab.veths()) == 2
    assert in_netns(pin_a, "busybox", "ping", "-c", "1", "-W", "2", f"{subnet}.1").returncode == 0
    cached = json.loads((lab.net.cache_dir / "results" / f"{lab.net.name}-{a}-eth0").read_text())
    assert cached["kind"] == "cniCacheV1"
    assert cached["capabilityArgs"]["portMappings"][0]["hostPort"] == port

    server = subprocess.Popen(
        ["nsenter", f"--net={pin_a}", sys.executable, "-c", SERVER, "8080"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"
        assert answer("127.0.0.1", port) == "pong\n"  # portmap's SNAT and route_localnet
        assert answer(host_address(), port) == "pong\n"
        assert any(f"--dports {port}" in r for r in lab.rules())

        async def teardown(network: CniPodNetwork, store: AttachmentStore) -> Any:
            await network.teardown(a, str(pin_a))
            await network.teardown(b, str(pin_b))
            await network.teardown(a, str(pin_a))  # again: nothing left to do, no error
            return await store.sandboxes()

        assert lab.run(teardown) == []
        assert answer("127.0.0.1", port).startswith("error")
    finally:
        server.kill()
        server.communicate()
    assert lab.leases() == []
    assert lab.veths() == []
    assert lab.rules() == []
    assert list((lab.net.cache_dir / "results").iterdir()) == []


def test_del_with_the_namespace_gone_releases_the_address_and_the_rules(lab: Lab):
    sandbox = sandbox_id()
    pin = lab.pin("gone")

    async def setup(network: CniPodNetwork, store: AttachmentStore) -> Any:
        return await network.setup(
            pod(sandbox), str(pin), [PortMapping("tcp", 80, free_port())], None, {}
        )

    address = lab.run(setup)
    assert lab.leases() == [address.ip]
    assert lab.rules() != []
    netlink.netns_remove(pin)  # the pod's namespace died first (its pin unmounted, removed)

    async def teardown(network: CniPodNetwork, store: AttachmentStore) -> Any:
        await network.teardown(sandbox, str(pin))
        return await store.sandboxes()

    assert lab.run(teardown) == []
    assert lab.leases() == []
    assert lab.rules() == []


CRASHER = """
import asyncio, sys
from pathlib import Path
from supervisor.cri.model import PodRef, PortMapping
from supervisor.metadata.db import Database
from supervisor.network.cni.pod import CniPodNetwork

db_path, conf_dir, bin_dirs, cache, sandbox, pin, port = sys.argv[1:]

async def main():
    db = await Database.open(Path(db_path))
    network = CniPodNetwork(db, conf_dir, bin_dirs.split(":"), cache)
    pod = PodRef(sandbox, "crash", "default", "uid-crash")
    await network.setup(pod, pin, [PortMapping("tcp", 80, int(port))], None, {})

asyncio.run(main())
"""

# A plugin that stops in its ADD (the daemon is killed meanwhile), else is the real one; it
# writes its pid (its session's) first. Not killed, it would finish its ADD 60 s later.
STALL = """#!/bin/sh
[ "$CNI_COMMAND" = ADD ] && echo $$ > {mark}.tmp && mv {mark}.tmp {mark} && sleep 60
exec {real} "$@"
"""


@pytest.mark.parametrize(
    "stalls", ["bridge", "portmap"], ids=["before-any-add", "after-the-bridges-add"]
)
def test_a_daemon_killed_during_setup_is_repaired_by_reconcile(lab: Lab, stalls: str):
    sandbox = sandbox_id()
    pin = lab.pin("crash")
    wrappers = lab.base / "wrappers"
    wrappers.mkdir()
    mark = lab.base / "stalled"
    real = next(Path(d) / stalls for d in BIN_DIRS if (Path(d) / stalls).exists())
    (wrappers / stalls).write_text(STALL.format(mark=mark, real=real))
    (wrappers / stalls).chmod(0o755)
    child = subprocess.Popen(
        [
            sys.executable, "-c", CRASHER, str(lab.base / "meta.db"), str(lab.net.conf_dir),
            ":".join([str(wrappers), *BIN_DIRS]), str(lab.net.cache_dir), sandbox, str(pin),
            str(free_port()),
        ],
        start_new_session=True, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not mark.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        os.killpg(child.pid, signal.SIGKILL)  # the daemon and the plugin it runs
        _, errors = child.communicate()
    assert mark.exists(), errors
    stalled = int(mark.read_text())
    assert stalled in orphans(sandbox)  # the plugin outlived its daemon (loopback's may too)
    made = lab.leases()
    assert len(made) == (1 if stalls == "portmap" else 0)

    async def after_restart(network: CniPodNetwork, store: AttachmentStore) -> Any:
        recorded = [(a.ifname, a.result) for a in await store.of(sandbox)]
        await network.reconcile({sandbox_id()})  # another pod lives; this one does not
        return recorded, await store.sandboxes()

    recorded, left = lab.run(after_restart)
    assert orphans(sandbox) == []  # killed with its session before the DEL
    assert recorded == [("lo", ""), ("eth0", "")]  # recorded before, no result: killed first
    assert left == []
    assert lab.leases() == []
    assert lab.veths() == []
    assert lab.rules() == []
