"""supervisor.network.netlink against the real kernel (root): bridges, namespace pins, veths.

Every test works on its own bridge `ctrdt<pid>`, a 10.2xx.yy.0/24 subnet derived from the pid
(checked against the host's prefixes), and pins in a temporary directory; the fixture removes
all of it and then asserts no link, pin or mount is left. Host interfaces are only read.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute

from supervisor.network import netlink

MTU = 1380  # below any uplink's, so the test sees ours and not a default


@dataclass(frozen=True)
class Lab:
    bridge: str
    subnet: ipaddress.IPv4Network
    pins: Path

    def ip(self, host: int) -> str:
        return str(self.subnet.network_address + host)

    def cidr(self, host: int) -> str:
        return f"{self.ip(host)}/{self.subnet.prefixlen}"


def links() -> set[str]:
    with IPRoute() as ipr:
        return {str(link.get("ifname")) for link in ipr.get_links()}


def mount_points_under(directory: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(str(directory))]


def in_netns(pin: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", f"--net={pin}", *argv], capture_output=True, text=True, timeout=30
    )


def pings(pin: Path, address: str) -> bool:
    return in_netns(pin, "busybox", "ping", "-c", "1", "-W", "2", address).returncode == 0


def netns_links(pin: Path) -> dict[str, Any]:
    out = in_netns(pin, "ip", "-j", "addr", "show")
    assert out.returncode == 0, out.stderr
    return {link["ifname"]: link for link in json.loads(out.stdout)}


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    pid = os.getpid()
    subnet = ipaddress.ip_network(f"10.{200 + pid % 50}.{pid // 50 % 256}.0/24")
    assert isinstance(subnet, ipaddress.IPv4Network)
    assert not any(subnet.overlaps(p) for p in netlink.host_taken_prefixes())
    made = Lab(bridge=f"ctrdt{pid}", subnet=subnet, pins=tmp_path / "netns")
    before = links()
    try:
        yield made
    finally:
        for name in links() - before:
            if name.startswith("veth"):
                netlink.detach_endpoint(name)
        netlink.remove_bridge(made.bridge)
        if made.pins.exists():
            for pin in made.pins.iterdir():
                netlink.netns_remove(pin)
            netlink.netns_release_dir(made.pins)
    assert links() == before
    assert mount_points_under(tmp_path) == []
    assert not made.pins.exists() or list(made.pins.iterdir()) == []


def attach(lab: Lab, name: str, host: int) -> tuple[Path, str]:
    """As the daemon does: the short way when the namespace was just made, else the long."""
    pin = lab.pins / name
    fresh = netlink.netns_create(pin)
    ifname = netlink.host_ifname(f"{name}-{os.getpid()}")
    netlink.attach_endpoint(
        lab.bridge, pin, ifname, f"02:00:0a:00:00:{host:02x}", lab.cidr(host), lab.ip(1), MTU,
        fresh=fresh,
    )  # fmt: skip
    return pin, ifname


def test_two_endpoints_on_a_bridge_reach_each_other_and_the_gateway(lab: Lab) -> None:
    netlink.ensure_bridge(lab.bridge, lab.cidr(1), MTU)
    a, _ = attach(lab, "a", 10)
    b, _ = attach(lab, "b", 11)

    assert pings(a, lab.ip(11))
    assert pings(b, lab.ip(10))
    assert pings(a, lab.ip(1))

    eth0 = netns_links(a)["eth0"]
    assert eth0["mtu"] == MTU
    assert eth0["address"] == "02:00:0a:00:00:0a"
    assert "UP" in eth0["flags"]
    assert {(i["local"], i["prefixlen"]) for i in eth0["addr_info"]} >= {(lab.ip(10), 24)}
    assert "UP" in netns_links(a)["lo"]["flags"]
    route = in_netns(a, "ip", "route", "show", "default").stdout
    assert f"via {lab.ip(1)} dev eth0" in route


def test_host_end_is_an_up_hairpin_port_of_the_bridge(lab: Lab) -> None:
    netlink.ensure_bridge(lab.bridge, lab.cidr(1), MTU)
    _, ifname = attach(lab, "a", 10)

    sys = Path("/sys/class/net") / ifname
    assert (sys / "master").resolve().name == lab.bridge
    assert (sys / "brport" / "hairpin_mode").read_text().strip() == "1"
    assert (sys / "operstate").read_text().strip() in {"up", "unknown"}
    assert int((sys / "mtu").read_text()) == MTU
    assert len(ifname.encode()) <= 15


def test_ensure_bridge_twice_converges_to_one_address_mtu_and_loose_rp_filter(lab: Lab) -> None:
    first = netlink.ensure_bridge(lab.bridge, lab.cidr(1), MTU)
    second = netlink.ensure_bridge(lab.bridge, lab.cidr(1), MTU)

    assert first == second
    sys = Path("/sys/class/net") / lab.bridge
    assert int((sys / "mtu").read_text()) == MTU
    assert Path(f"/proc/sys/net/ipv4/conf/{lab.bridge}/rp_filter").read_text().strip() == "2"
    with IPRoute() as ipr:
        addrs = [a.get("address") for a in ipr.get_addr(index=first, family=2)]
    assert addrs == [lab.ip(1)]
    assert lab.subnet in netlink.host_taken_prefixes()


def test_attach_twice_keeps_one_working_endpoint(lab: Lab) -> None:
    netlink.ensure_bridge(lab.bridge, lab.cidr(1), MTU)
    a, ifname = attach(lab, "a", 10)
    index = links_index(ifname)
    attach(lab, "a", 10)

    assert links_index(ifname) == index
    assert sorted(netns_links(a)) == ["eth0", "lo"]
    assert pings(a, lab.ip(1))


def test_attach_remakes_an_endpoint_whose_peer_is_missing(lab: Lab) -> None:
    netlink.ensure_bridge(lab.bridge, lab.cidr(1), MTU)
    pin = lab.pins / "a"
    netlink.netns_create(pin)
    ifname = netlink.host_ifname(f"a-{os.getpid()}")
    # What a crash can leave: a host end whose peer never reached the namespace.
    with IPRoute() as ipr:
        ipr.link("add", ifname=ifname, kind="veth", peer={"ifname": f"{ifname}p"})

    attach(lab, "a", 10)

    assert f"{ifname}p" not in links()
    assert pings(pin, lab.ip(1))


def test_attach_to_a_new_namespace_replaces_a_host_end_left_by_an_earlier_attempt(
    lab: Lab,
) -> None:
    netlink.ensure_bridge(lab.bridge, lab.cidr(1), MTU)
    ifname = netlink.host_ifname(f"a-{os.getpid()}")
    # A crash after the pair was made, whose namespace was then unpinned: here its peer is
    # left on the host, so that the test sees it go.
    with IPRoute() as ipr:
        ipr.link("add", ifname=ifname, kind="veth", peer={"ifname": f"{ifname}p"})

    pin, _ = attach(lab, "a", 10)

    assert f"{ifname}p" not in links()
    assert (Path("/sys/class/net") / ifname / "brport" / "hairpin_mode").read_text() == "1\n"
    assert pings(pin, lab.ip(1))


def test_a_second_network_is_eth1_without_a_second_default_route(lab: Lab) -> None:
    netlink.ensure_bridge(lab.bridge, lab.cidr(1), MTU)
    pin, _ = attach(lab, "a", 10)
    other = f"{lab.bridge}b"
    second = ipaddress.ip_network(f"{lab.subnet.network_address + 256}/24")
    assert not any(second.overlaps(p) for p in netlink.host_taken_prefixes())
    netlink.ensure_bridge(other, f"{second.network_address + 1}/24", MTU)
    try:
        peer = netlink.attach_endpoint(
            other, pin, netlink.host_ifname(f"a2-{os.getpid()}"), "02:00:0a:00:01:0a",
            f"{second.network_address + 10}/24", str(second.network_address + 1), MTU,
            default_route=False,
        )  # fmt: skip

        assert peer == "eth1"
        assert sorted(netns_links(pin)) == ["eth0", "eth1", "lo"]
        routes = in_netns(pin, "ip", "route", "show", "default").stdout.splitlines()
        assert routes == [f"default via {lab.ip(1)} dev eth0 proto static "]
        assert pings(pin, str(second.network_address + 1))
    finally:
        netlink.remove_bridge(other)


def test_netns_pins_are_idempotent_and_leave_nothing_when_removed(lab: Lab) -> None:
    pin = lab.pins / "a"
    ours = os.readlink("/proc/thread-self/ns/net")
    netlink.netns_create(pin)
    inode = os.stat(pin).st_ino
    netlink.netns_create(pin)

    assert os.stat(pin).st_ino == inode
    assert os.stat(pin).st_ino != os.stat("/proc/self/ns/net").st_ino
    assert os.readlink("/proc/thread-self/ns/net") == ours  # the calling thread did not move
    assert sorted(netns_links(pin)) == ["lo"]

    netlink.netns_remove(pin)
    netlink.netns_remove(pin)
    assert not pin.exists()
    assert mount_points_under(pin) == []


def test_uplink_mtu_is_the_default_route_links() -> None:
    out = subprocess.run(
        ["ip", "-j", "-4", "route", "show", "default"], capture_output=True, text=True, check=True
    )
    routes = json.loads(out.stdout)
    if not routes:
        assert netlink.uplink_mtu() == netlink.DEFAULT_MTU
        return
    dev = routes[0]["dev"]
    assert netlink.uplink_mtu() == int(Path(f"/sys/class/net/{dev}/mtu").read_text())


def test_host_taken_prefixes_hold_the_resolvers(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("search example\nnameserver 10.255.255.53\nnameserver fe80::1%eth0\n")

    taken = netlink.host_taken_prefixes(resolv)

    assert ipaddress.ip_network("10.255.255.53/32") in taken
    assert ipaddress.ip_network("fe80::1/128") in taken


def links_index(name: str) -> int:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
    assert len(found) == 1
    return int(found[0])
