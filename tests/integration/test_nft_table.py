"""ctrd's nftables table in the real kernel: applied, listed back, replaced atomically, deleted,
and a published port reached from the host (127.0.0.1 included) through kernel DNAT.

Every test uses a table named after its pid so it cannot clash with ctrd's or anyone's, removes
it in a `finally`, and checks that the host's other tables are the same before and after.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest
import structlog

from supervisor.network import nft, nftshape
from tests.conftest import REPO

PID = os.getpid()
TABLE = f"ctrdtest_{PID}"
NET = nft.Network("t", f"ctrdt{PID % 100000}", IPv4Network(f"10.252.{PID % 250}.0/24"))
CTR = NET.subnet[2]


def publish(host_port: int, container_port: int, host_ip: str | None = None) -> nft.Publish:
    ip = IPv4Address(host_ip) if host_ip is not None else None
    return nft.Publish(NET.name, "tcp", ip, host_port, CTR, container_port)


def rules(listing: dict[str, Any], chain: str) -> list[dict[str, Any]]:
    return [
        item["rule"]
        for item in listing["nftables"]
        if "rule" in item and item["rule"]["chain"] == chain
    ]


def others() -> frozenset[tuple[str, str]]:
    """The host's tables but those of daemons other test processes start meanwhile (conftest
    names them `ctrdt<pid>_<n>`): they come and go on their own."""
    return frozenset(t for t in nft.list_tables() if not re.match(r"ctrdt\d+_\d+$", t[1]))


@pytest.fixture
def table() -> Iterator[str]:
    before = others()
    assert ("inet", TABLE) not in before
    try:
        yield TABLE
    finally:
        nft.delete(TABLE)
        assert others() == before


def test_applied_table_lists_back_with_every_rendered_rule(table: str) -> None:
    ruleset = nft.Ruleset((NET,), (publish(18080, 80),), table=table)
    nft.apply(ruleset)
    listing = nft.list_table(table)
    for chain in nft.chains(ruleset):
        assert len(rules(listing, chain.name)) == len(chain.rules), chain.name
    assert nft.table_exists(table)
    # what the daemon expects to read back, known from the model alone
    assert nft.fingerprint(table) == nft.shape(ruleset)
    assert nft.shape(nft.Ruleset(table=table)) is None


def elements(listing: dict[str, Any], name: str) -> list[Any]:
    """The elements of one map of a JSON listing, each [key, data] as nft prints them."""
    (found,) = [i["map"] for i in listing["nftables"] if i.get("map", {}).get("name") == name]
    return list(found.get("elem", []))


def test_applying_a_new_version_replaces_the_table_whole_without_duplicates(table: str) -> None:
    first = nft.Ruleset((NET,), (publish(18080, 80), publish(18081, 81)), table=table)
    second = nft.Ruleset((NET,), (publish(18090, 90, "127.0.0.1"),), table=table)
    nft.apply(first)
    nft.apply(first)
    assert len(elements(nft.list_table(table), nft.PUBLISH_ANY)) == 2
    nft.apply(second)
    listing = nft.list_table(table)
    assert elements(listing, nft.PUBLISH_ANY) == []
    (dnat,) = elements(listing, nft.PUBLISH_ADDR)
    assert "18090" in str(dnat)
    assert "18080" not in str(listing)
    total = sum(len(c.rules) for c in nft.chains(second))
    assert len([i for i in listing["nftables"] if "rule" in i]) == total


def handles(listing: dict[str, Any]) -> list[tuple[str, str, int]]:
    """The handle of the table, each map and each rule: a whole rewrite makes a new table."""
    return [
        (kind, item[kind].get("chain", item[kind]["name"] if kind == "map" else ""),
         item[kind]["handle"])
        for item in listing["nftables"]
        for kind in ("table", "map", "rule")
        if kind in item
    ]  # fmt: skip


def test_an_update_nft_refuses_falls_back_to_the_whole_table(table: str) -> None:
    before = nft.Ruleset((NET,), (publish(18080, 80), publish(18081, 81)), table=table)
    after = nft.Ruleset((NET,), (publish(18081, 81),), table=table)
    nft.apply(before)
    nft.run(f"flush map inet {table} {nft.PUBLISH_ANY}")  # someone else's doing
    with structlog.testing.capture_logs() as logs:
        assert not nft.apply(after, previous=before)  # 18080's element is not there to delete
    assert [e["event"] for e in logs] == ["firewall_update_refused"]
    (left,) = elements(nft.list_table(table), nft.PUBLISH_ANY)
    assert "18081" in str(left)


def test_an_unchanged_ruleset_with_a_previous_sends_nothing(table: str) -> None:
    ruleset = nft.Ruleset((NET,), (publish(18080, 80),), table=table)
    nft.apply(ruleset)
    nft.delete(table)
    assert nft.apply(ruleset, previous=ruleset)  # nothing to change: nft is not even asked
    assert not nft.table_exists(table)


def test_shape_counts_what_the_kernel_holds_and_sees_each_kind_of_flush(table: str) -> None:
    ruleset = nft.Ruleset((NET,), (publish(18080, 80), publish(18081, 81, "127.0.0.1")),
                          table=table)  # fmt: skip
    nft.apply(ruleset)
    rules = sum(len(c.rules) for c in nft.chains(ruleset))
    assert nftshape.shape(table, nft.MAPS) == nftshape.Shape(6, rules, 2, 2)
    nft.run(f"flush map inet {table} {nft.PUBLISH_ADDR}")
    assert nftshape.shape(table, nft.MAPS) == nftshape.Shape(6, rules, 2, 1)
    nft.run(f"flush chain inet {table} forward")
    assert nftshape.shape(table, nft.MAPS) == nftshape.Shape(6, rules - 5, 2, 1)
    nft.run(f"flush table inet {table}")  # rules go, chains and elements stay
    assert nftshape.shape(table, nft.MAPS) == nftshape.Shape(6, 0, 2, 1)
    nft.run(f"delete map inet {table} {nft.PUBLISH_ADDR}")  # no rule names it any more
    assert nftshape.shape(table, nft.MAPS) == nftshape.Shape(6, 0, 1, 1)
    assert nftshape.table_exists(table)
    nft.delete(table)
    assert nftshape.shape(table, nft.MAPS) is None
    assert not nftshape.table_exists(table)


def test_a_refused_script_leaves_the_previous_table_in_place(table: str) -> None:
    ruleset = nft.Ruleset((NET,), (publish(18080, 80),), table=table)
    nft.apply(ruleset)
    before = nft.list_table(table)
    broken = nft.render(ruleset).replace("masquerade", "masquerade nonsense", 1)
    with pytest.raises(nft.NftError):
        nft.run(broken)
    assert nft.list_table(table) == before


def test_a_deleted_table_is_seen_missing_and_comes_back_when_applied_again(table: str) -> None:
    ruleset = nft.Ruleset((NET,), table=table)
    nft.apply(ruleset)
    nft.delete(table)
    assert not nft.table_exists(table)
    nft.apply(ruleset)
    assert nft.table_exists(table)


# --- end to end: a netns behind a veth stands in for a container on a bridge ----------------

SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(8)
print("ready", flush=True)
for _ in range(int(sys.argv[2])):
    c, peer = s.accept()
    c.sendall(peer[0].encode())
    c.close()
"""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def container() -> Iterator[str]:
    """A netns `ctrdtns<pid>` with eth0 = CTR/24, its peer on the host named like a bridge
    (NET.bridge, the gateway address) with route_localnet=1; all of it removed after."""
    ns = f"ctrdtns{PID}"
    gateway = NET.subnet[1]
    ip("netns", "add", ns)
    try:
        ip("link", "add", NET.bridge, "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip("addr", "add", f"{gateway}/24", "dev", NET.bridge)
        ip("link", "set", NET.bridge, "up")
        ip("-n", ns, "addr", "add", f"{CTR}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "route", "add", "default", "via", str(gateway))
        # Our own interface, deleted after: nothing of the host's to restore.
        with open(f"/proc/sys/net/ipv4/conf/{NET.bridge}/route_localnet", "w") as f:
            f.write("1")
        yield ns
    finally:
        subprocess.run(["ip", "link", "del", NET.bridge], capture_output=True)
        ip("netns", "del", ns)


def ask(address: str, port: int) -> str:
    with socket.create_connection((address, port), timeout=5) as conn:
        return conn.recv(64).decode()


def test_published_port_is_reached_from_the_host_and_its_127_0_0_1(
    table: str, container: str
) -> None:
    host_port = 20000 + PID % 20000
    nft.apply(nft.Ruleset((NET,), (publish(host_port, 8000),), table=table))
    server = subprocess.Popen(
        ["ip", "netns", "exec", container, sys.executable, "-c", SERVER, "8000", "2"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"
        # The host's own address on the bridge: DNAT in output, source kept.
        assert ask(str(NET.subnet[1]), host_port) == str(NET.subnet[1])
        # 127.0.0.1: DNAT in output, routed out thanks to route_localnet, masqueraded to the
        # bridge address since the container cannot answer 127.0.0.1.
        assert ask("127.0.0.1", host_port) == str(NET.subnet[1])
        assert server.wait(timeout=5) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        if server.stdout is not None:
            server.stdout.close()


def test_one_publish_among_a_thousand_changes_as_elements_and_the_ports_answer(
    table: str, container: str
) -> None:
    host = str(NET.subnet[1])  # published on an address of the test's own: nothing else uses it
    many = tuple(publish(10000 + i, 8000, host) for i in range(1000))
    before = nft.Ruleset((NET,), many, table=table)
    after = nft.Ruleset((NET,), (*many[:500], *many[501:], publish(11000, 8000, host)),
                        table=table)  # fmt: skip
    nft.apply(before)
    first = nft.list_table(table)
    assert nft.apply(after, previous=before)
    second = nft.list_table(table)
    assert handles(second) == handles(first)  # the same table, maps and rules: elements only
    keys = [str(e[0]) for e in elements(second, nft.PUBLISH_ADDR)]
    assert len(keys) == 1000
    assert any("11000" in k for k in keys)
    assert not any("10500" in k for k in keys)
    server = subprocess.Popen(
        ["ip", "netns", "exec", container, sys.executable, "-c", SERVER, "8000", "3"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"
        assert ask(host, 11000) == host  # the one added
        assert ask(host, 10000) == host  # ones left alone, either side of the one removed
        assert ask(host, 10999) == host
        with pytest.raises(ConnectionRefusedError):
            ask(host, 10500)
        assert server.wait(timeout=5) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        if server.stdout is not None:
            server.stdout.close()
    # the control: without `previous`, the same table is written anew (new handles)
    assert not nft.apply(after)
    assert handles(nft.list_table(table)) != handles(second)


def test_without_the_table_the_published_port_is_not_there(container: str) -> None:
    """The DNAT above is ctrd's table's doing: without it nothing listens on the host port."""
    host_port = 20000 + PID % 20000
    with pytest.raises(ConnectionRefusedError):
        ask("127.0.0.1", host_port)


# --- end to end on real bridges: hairpin, neighbours, isolation between networks -------------

CLIENT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2) as c:
        print(c.recv(64).decode())
except OSError as e:
    print("error:" + type(e).__name__)
"""

NET_A = nft.Network("a", f"ctrdta{PID % 100000}", IPv4Network(f"10.253.{PID % 250}.0/24"))
NET_B = nft.Network("b", f"ctrdtb{PID % 100000}", IPv4Network(f"10.254.{PID % 250}.0/24"))


@contextlib.contextmanager
def bridge(net: nft.Network) -> Iterator[None]:
    ip("link", "add", net.bridge, "type", "bridge")
    try:
        ip("addr", "add", f"{net.subnet[1]}/24", "dev", net.bridge)
        ip("link", "set", net.bridge, "up")
        yield
    finally:
        subprocess.run(["ip", "link", "del", net.bridge], capture_output=True)


@contextlib.contextmanager
def endpoint(net: nft.Network, host: int) -> Iterator[str]:
    """A netns with eth0 = subnet[host] plugged into the network's bridge, hairpin on."""
    ns = f"ctrdt{net.name}{host}_{PID}"
    veth = f"ctrdv{net.name}{host}{PID % 100000}"
    ip("netns", "add", ns)
    try:
        ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip("link", "set", veth, "master", net.bridge, "up")
        with open(f"/sys/class/net/{veth}/brport/hairpin_mode", "w") as f:
            f.write("1")
        ip("-n", ns, "addr", "add", f"{net.subnet[host]}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        ip("-n", ns, "route", "add", "default", "via", str(net.subnet[1]))
        yield ns
    finally:
        subprocess.run(["ip", "link", "del", veth], capture_output=True)
        ip("netns", "del", ns)


def ask_from(ns: str, address: object, port: int) -> str:
    done = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", CLIENT, str(address), str(port)],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def test_containers_reach_published_ports_through_the_host_but_not_other_networks_directly(
    table: str,
) -> None:
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        assert f.read().strip() == "1", "the host does not forward: nothing to isolate"
    host_port = 21000 + PID % 20000
    a2 = NET_A.subnet[2]
    ruleset = nft.Ruleset(
        (NET_A, NET_B),
        (nft.Publish("a", "tcp", None, host_port, a2, 8000),),
        table=table,
    )
    with contextlib.ExitStack() as stack:
        stack.enter_context(bridge(NET_A))
        stack.enter_context(bridge(NET_B))
        ns_a2 = stack.enter_context(endpoint(NET_A, 2))
        ns_a3 = stack.enter_context(endpoint(NET_A, 3))
        ns_b2 = stack.enter_context(endpoint(NET_B, 2))
        nft.apply(ruleset)
        server = subprocess.Popen(
            ["ip", "netns", "exec", ns_a2, sys.executable, "-c", SERVER, "8000", "3"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            assert server.stdout.readline().strip() == "ready"
            gw_a = str(NET_A.subnet[1])
            # hairpin: a2 reaches itself through the published port, seen as the gateway
            assert ask_from(ns_a2, gw_a, host_port) == gw_a
            # a neighbour on the same bridge, through the published port
            assert ask_from(ns_a3, gw_a, host_port) == gw_a
            # another network: the published port yes (masqueraded out of b) ...
            assert ask_from(ns_b2, NET_B.subnet[1], host_port) == gw_a
            # ... but not the container directly
            assert ask_from(ns_b2, a2, 8000) == "error:TimeoutError"
            assert server.wait(timeout=5) == 0
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
            if server.stdout is not None:
                server.stdout.close()


FD_SCRIPT = """
import ipaddress, os, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
from supervisor.network import nft
if sys.argv[1] == "prepared":
    nft.prepare()
held = [os.open("/dev/null", os.O_RDONLY) for _ in range(1100)]
subnet = ipaddress.IPv4Network("10.98.0.0/24")
rs = nft.Ruleset((nft.Network("n1", "br-fdtest", subnet),), (), sys.argv[2])
nft.apply(rs)
nft.apply(rs)
nft.delete(sys.argv[2])
print("ok")
"""


def test_a_context_prepared_early_survives_a_thousand_open_files():
    """libnftables select()s on its socket: made past fd 1023, glibc aborts the process. The
    daemon prepares its one context at start, before its tasks' files (nft.prepare)."""
    table = f"ctrdfd{os.getpid()}"
    try:
        prepared = subprocess.run([sys.executable, "-c", FD_SCRIPT, "prepared", table],
                                  capture_output=True, text=True, cwd=REPO, timeout=60)  # fmt: skip
        assert (prepared.returncode, prepared.stdout) == (0, "ok\n"), prepared.stderr
        late = subprocess.run([sys.executable, "-c", FD_SCRIPT, "late", table],
                              capture_output=True, text=True, cwd=REPO, timeout=60)  # fmt: skip
        assert late.returncode == -signal.SIGABRT, late.stderr
        assert "FD_SETSIZE" in late.stderr
    finally:
        nft.delete(table)
