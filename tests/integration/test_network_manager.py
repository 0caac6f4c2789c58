"""NetworkManager against the real kernel (root): two namespaces on a bridge, then nothing left.

Each test uses a temporary metadata database, a pid-named nft table (`ctrdt<pid>`), a
10.1xx.yy.0/24 subnet derived from the pid and checked against the host's prefixes, and pins in
a temporary state dir. `finally` removes the test's table, bridge, veths and pins whatever
happened; the tests then assert none of them is left.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from pyroute2 import IPRoute

from supervisor.metadata.db import Database
from supervisor.network import netlink, nft
from supervisor.network.manager import (
    NetworkManager,
    bridge_name,
    endpoint_key,
    render_hosts,
    render_resolv,
    spec_with_network,
)
from supervisor.network.store import NetworkRequest, SqliteNetworkStore
from tests.integration.test_tasks import wait_for

NS = "default"
t = asyncio.to_thread  # pyroute2's sync sockets must not run on the event loop's thread


def links() -> set[str]:
    with IPRoute() as ipr:
        return {str(link.get("ifname")) for link in ipr.get_links()}


def mounts_under(directory: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(str(directory))]


def foreign_veth_on(bridge: str, name: str = "", peer: str = "") -> None:
    """A veth pair not made by ctrd (by default named unlike ctrd's), one end on `bridge`."""
    pid = os.getpid()
    name, peer = name or f"vo{pid}", peer or f"vp{pid}"
    with IPRoute() as ipr:
        ipr.link("add", ifname=name, kind="veth", peer=peer)
        foreign = ipr.link_lookup(ifname=name)[0]
        ipr.link("set", index=foreign, master=ipr.link_lookup(ifname=bridge)[0])


def read(path: str) -> str:
    return Path(path).read_text()


def pings(pin: Path, address: str) -> bool:
    argv = ["nsenter", f"--net={pin}", "/bin/busybox", "ping", "-c", "1", "-W", "2", address]
    return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0


def pid_subnet() -> str:
    pid = os.getpid()
    subnet = ipaddress.ip_network(f"10.{150 + pid % 50}.{pid // 50 % 256}.0/24")
    assert not any(subnet.overlaps(p) for p in netlink.host_taken_prefixes())
    return str(subnet)


@asynccontextmanager
async def lab(tmp_path: Path) -> AsyncIterator[tuple[NetworkManager, SqliteNetworkStore, str]]:
    pid = os.getpid()
    table = f"ctrdt{pid}"
    net_id = f"ctrdtest{pid}"
    db = await Database.open(tmp_path / "meta.db")
    manager = NetworkManager(db, tmp_path / "state", table)
    store = SqliteNetworkStore(db, NS)
    subnet = await asyncio.to_thread(pid_subnet)
    await store.create(NetworkRequest(net_id, "front", subnet=subnet))
    before = await asyncio.to_thread(links)
    try:
        yield manager, store, table
    finally:
        await asyncio.to_thread(clean_up, before, net_id, table, tmp_path / "state" / "netns" / NS)
        await db.close()


def clean_up(before: set[str], net_id: str, table: str, pins: Path) -> None:
    for name in links() - before:
        if name.startswith("veth"):
            netlink.detach_endpoint(name)
    netlink.remove_bridge(bridge_name(net_id))
    nft.delete(table)
    if pins.is_dir():
        for pin in pins.iterdir():
            netlink.netns_remove(pin)
        netlink.netns_release_dir(pins)


def test_render_hosts_lists_localhost_then_own_addresses():
    text = render_hosts("web", [ipaddress.IPv4Address("10.1.0.2")])
    lines = text.splitlines()
    assert lines[0] == "127.0.0.1\tlocalhost"
    assert lines[-1] == "10.1.0.2\tweb"
    assert text.endswith("\n")


def test_render_resolv_drops_loopback_and_ipv6_resolvers_keeps_search():
    host = "nameserver 127.0.0.53\nnameserver 1.1.1.1\nnameserver ::1\nsearch example.org\n"
    text = render_resolv(host)
    assert "nameserver 1.1.1.1" in text
    assert "127.0.0.53" not in text
    assert "::1" not in text
    assert "search example.org" in text
    # nothing reachable left: docker's fallback resolvers
    only_stub = render_resolv("nameserver 127.0.0.53\noptions edns0\n")
    assert "nameserver 8.8.8.8" in only_stub
    assert "options edns0" in only_stub


def test_connect_pings_between_containers_then_release_leaves_nothing(tmp_path: Path):
    async def scenario() -> None:
        async with lab(tmp_path) as (manager, store, table):
            a = await manager.connect(NS, "ctr-a", "front")
            b = await manager.connect(NS, "ctr-b", "front", aliases=["bee"])
            bridge = bridge_name(a.network.id)
            assert bridge in (await t(links))
            assert await t(read, f"/proc/sys/net/ipv4/conf/{bridge}/route_localnet") == "1\n"
            assert await t(read, "/proc/sys/net/ipv4/ip_forward") == "1\n"
            assert await t(nft.table_exists, table)
            assert a.netns == tmp_path / "state" / "netns" / NS / "ctr-a"
            assert await t(pings, a.netns, str(b.endpoint.address))
            assert await t(pings, b.netns, str(a.endpoint.address))
            assert await t(pings, a.netns, str(a.network.config.gateway))

            hosts, resolv = await manager.hosts_and_resolv(NS, "ctr-a", "alpha")
            assert f"{a.endpoint.address}\talpha" in hosts.read_text().splitlines()
            assert "127.0.0.1\tlocalhost" in hosts.read_text()
            assert resolv.read_text().startswith("# Based on host file")

            await manager.disconnect(NS, "ctr-b", "front")
            assert not (await t(pings, a.netns, str(b.endpoint.address)))
            host_b = netlink.host_ifname(endpoint_key(NS, a.network.id, "ctr-b"))
            assert host_b not in (await t(links))
            await manager.release(NS, "ctr-a")
            await manager.release(NS, "ctr-b")
            assert await store.endpoints() == []
            host_a = netlink.host_ifname(endpoint_key(NS, a.network.id, "ctr-a"))
            assert host_a not in (await t(links))
            assert not (tmp_path / "state" / "netns" / NS / "ctr-a").exists()
            assert not hosts.exists()
            assert mounts_under(tmp_path) == []
            await manager.remove_network(NS, "front")
            assert bridge not in (await t(links))
            assert not (await t(nft.table_exists, table))

    asyncio.run(scenario())


def test_reconcile_removes_ctrd_leftovers_and_keeps_live_endpoints(tmp_path: Path):
    async def scenario() -> None:
        async with lab(tmp_path) as (manager, store, table):
            live = await manager.connect(NS, "live", "front")
            orphan = await manager.connect(NS, "orphan", "front")
            gone = await manager.connect(NS, "gone", "front")
            orphan_link = netlink.host_ifname(endpoint_key(NS, live.network.id, "orphan"))
            # crash 1: the orphan's row vanished, its veth and pin stayed
            await store.detach("front", "orphan")
            # crash 2: the gone container's namespace pin vanished, its row and veth stayed
            await t(netlink.netns_remove, gone.netns)
            # someone flushed the firewall
            await t(nft.delete, table)
            # another program's veth on our bridge with a name ctrd would never derive
            await t(foreign_veth_on, bridge_name(live.network.id))
            try:
                report = await manager.reconcile()
                assert report.links_removed == (orphan_link,)
                assert report.pins_removed == (str(orphan.netns),)
                assert report.endpoints_released == (endpoint_key(NS, live.network.id, "gone"),)
                assert orphan_link not in (await t(links))
                assert f"vo{os.getpid()}" in (await t(links))
                gone_link = netlink.host_ifname(endpoint_key(NS, live.network.id, "gone"))
                assert gone_link not in (await t(links))
                assert [e.container for e in await store.endpoints()] == ["live"]
                assert await t(nft.table_exists, table)
                assert await t(pings, live.netns, str(live.network.config.gateway))
            finally:
                await t(netlink.detach_endpoint, f"vo{os.getpid()}")
            await manager.release(NS, "live")
            assert mounts_under(tmp_path) == []

    asyncio.run(scenario())


def test_ctr_run_with_the_networks_label_joins_the_network(make_ctrd, busybox_image, tmp_path):
    """The real ctr: `--label ctrd.io/networks=front` puts the task on the bridge, with its
    own /etc/hosts; the task's delete releases its veth, pin and lease."""
    from supervisor.api.ctrd.services.networks.v1 import networks_pb2 as pb
    from supervisor.api.ctrd.services.networks.v1 import networks_pb2_grpc as pb_grpc
    from tests.conftest import ns_metadata

    pid = os.getpid()
    daemon = make_ctrd()
    table = daemon.nft_table  # its own (tests/conftest.py)
    daemon.start()
    subnet = ipaddress.ip_network(f"10.{100 + pid % 50}.{pid // 50 % 256}.0/24")
    assert not any(subnet.overlaps(p) for p in netlink.host_taken_prefixes())
    stub = daemon.stub(pb_grpc.NetworksStub)
    network = stub.Create(
        pb.CreateNetworkRequest(name="front", subnet=str(subnet)), metadata=ns_metadata()
    ).network
    bridge = bridge_name(network.id)
    fifo = daemon.fifo_dir()
    try:
        daemon.ctr("images", "pull", "--plain-http", busybox_image.ref)
        label = ("--label", "ctrd.io/networks=front")
        daemon.ctr(
            "run", "--fifo-dir", fifo, "-d", *label, busybox_image.ref, "c1", "sleep", "1000"
        )
        first = str(subnet.network_address + 2)
        out = daemon.ctr(
            "run", "--rm", "--fifo-dir", fifo, *label, busybox_image.ref, "c2",
            "sh", "-c", f"cat /etc/hosts; ping -c 1 -W 2 {first}",
        )  # fmt: skip
        assert f"{subnet.network_address + 3}\tc2" in out.stdout.splitlines()
        assert "1 packets received" in out.stdout
        assert bridge in links()
        assert nft.table_exists(table)
        pin = daemon.state / "netns" / "default" / "c1"
        assert pin.exists()
        # a second task for c1 is refused in containerd's words and leaves c1's network alone
        again = daemon.ctr("tasks", "start", "--fifo-dir", fifo, "c1", check=False)
        assert "already exists" in again.stderr
        assert netlink.host_ifname(endpoint_key("default", network.id, "c1")) in links()
        assert pin.exists()
        # restart: a ctrd-shaped veth nobody claims is removed, the flushed table comes back,
        # the running c1 keeps its link and pin
        stale = f"veth{pid:07x}"[-11:]
        foreign_veth_on(bridge, stale, f"vq{pid}")
        nft.delete(table)
        daemon.restart()
        assert stale not in links()
        assert nft.table_exists(table)
        assert netlink.host_ifname(endpoint_key("default", network.id, "c1")) in links()
        assert pin.exists()
        assert "network_reconciled" in daemon.log()
        daemon.ctr("tasks", "kill", "-s", "KILL", "c1")
        daemon.ctr("tasks", "rm", "-f", "c1")
        assert not pin.exists()
        gone = {netlink.host_ifname(endpoint_key("default", network.id, c)) for c in ("c1", "c2")}
        wait_for(lambda: not gone & links())  # the kernel's or a background deletion
        daemon.ctr("containers", "rm", "c1")
    finally:
        daemon.stop()
        netlink.detach_endpoint(f"veth{pid:07x}"[-11:])
        netlink.remove_bridge(bridge)
        nft.delete(table)


def test_bridge_names_fit_ifnamsiz_and_follow_dockers_for_hex_ids():
    assert bridge_name("0123456789abcdef" * 4) == "br-0123456789ab"
    other = bridge_name("front-net")
    assert len(other) == 15
    assert other.startswith("br-")
    assert other != bridge_name("front-net2")


def test_spec_with_network_names_the_pin_and_mounts_the_generated_files():
    spec = {
        "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}]},
        "mounts": [{"destination": "/proc", "type": "proc"}],
    }
    out = spec_with_network(spec, Path("/s/netns/c1"), Path("/s/h"), Path("/s/r"))
    assert out["linux"]["namespaces"] == [
        {"type": "pid"},
        {"type": "network", "path": "/s/netns/c1"},
    ]
    by_destination = {m["destination"]: m for m in out["mounts"]}
    assert by_destination["/etc/hosts"]["source"] == "/s/h"
    assert by_destination["/etc/resolv.conf"]["source"] == "/s/r"
    assert "/proc" in by_destination
    assert spec["linux"]["namespaces"][1] == {"type": "network"}  # the input is not changed


def test_the_planned_spec_is_the_one_prepare_task_gives(tmp_path: Path):
    """Tasks.Create writes the bundle from `plan_task` while `prepare_task` plumbs: the two
    must name the same namespace and files, or runc would join a namespace nobody made."""
    spec = json.dumps(
        {"hostname": "h", "linux": {"namespaces": [{"type": "network"}]}, "mounts": []}
    ).encode()

    async def scenario() -> None:
        async with lab(tmp_path) as (manager, _store, _table):
            for labels in (
                {"ctrd.io/networks": "front"},
                {"ctrd.io/networks": "front", "ctrd.io/ports": "127.0.0.1::80"},
            ):
                planned = manager.plan_task(NS, "ctr-p", labels, spec)
                assert planned is not None
                assert await manager.prepare_task(NS, "ctr-p", labels, spec) == planned
                await manager.release(NS, "ctr-p")
            assert manager.plan_task(NS, "ctr-p", {}, spec) is None
            shared = {"ctrd.io/network-container": "other"}
            assert manager.plan_task(NS, "ctr-p", shared, spec) is None

    asyncio.run(scenario())


def test_ready_comes_when_runc_create_can_go_and_the_links_after(tmp_path: Path):
    """`prepare_task(ready=...)`: resolved once the lease, the pin and the two files are there
    (what `runc create` needs), before the links; the links are there when it returns (what the
    start waits for)."""
    spec = json.dumps(
        {"hostname": "h", "linux": {"namespaces": [{"type": "network"}]}, "mounts": []}
    ).encode()

    async def scenario() -> None:
        async with lab(tmp_path) as (manager, store, _table):
            labels = {"ctrd.io/networks": "front", "ctrd.io/ports": "127.0.0.1::80"}
            seen: dict[str, object] = {}
            ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def look() -> None:
                pin = manager.pin_path(NS, "ctr-r")
                etc = manager.etc_dir(NS, "ctr-r")
                seen["pinned"] = netlink.is_pinned(pin)
                seen["hosts"] = (etc / "hosts").read_text()
                seen["resolv"] = (etc / "resolv.conf").exists()

            async def at_ready() -> None:
                await ready
                look()  # at once, before the plumbing's coroutine goes on
                (endpoint,) = await store.endpoints(container="ctr-r")
                seen["address"] = str(endpoint.address)

            watcher = asyncio.create_task(at_ready())
            await manager.prepare_task(NS, "ctr-r", labels, spec, ready=ready)
            await watcher
            assert seen["pinned"] is True
            assert seen["resolv"] is True
            assert f"{seen['address']}\th" in str(seen["hosts"]), seen
            pin = manager.pin_path(NS, "ctr-r")
            inside = await asyncio.to_thread(
                subprocess.run,
                ["nsenter", f"--net={pin}", "/bin/busybox", "ip", "-4", "-o", "addr"],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            eth0 = [line.split()[3] for line in inside.stdout.splitlines() if " eth0 " in line]
            assert eth0 == [f"{seen['address']}/24"], inside.stdout
            await manager.release(NS, "ctr-r")
            await manager.settle()

    asyncio.run(scenario())
