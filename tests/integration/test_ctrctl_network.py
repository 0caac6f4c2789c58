"""`ctrctl run --network NAME`: containers on a ctrd bridge network, as docker's user runs them."""

from __future__ import annotations

import ipaddress
import json
import os
import socket

import pytest

from supervisor.network import netlink
from supervisor.network.manager import bridge_name, endpoint_key
from tests.integration.test_ctrctl import ctrctl
from tests.integration.test_network_manager import links
from tests.integration.test_published_ports import SERVE, fetch, free_port
from tests.integration.test_tasks import pull, wait_for


def test_run_on_a_named_network_pings_a_peer_and_a_missing_one_is_refused(make_ctrd, busybox_image):
    pid = os.getpid()
    daemon = make_ctrd()  # with an nftables table of its own (tests/conftest.py)
    daemon.start()
    subnet = ipaddress.ip_network(f"10.{150 + pid % 50}.{pid // 50 % 256}.0/24")
    assert not any(subnet.overlaps(p) for p in netlink.host_taken_prefixes())
    bridge = ""
    try:
        ref = pull(daemon, busybox_image)
        created = ctrctl(daemon, "network", "create", "--subnet", str(subnet), "front")
        assert created.returncode == 0, created.stderr
        [network] = json.loads(ctrctl(daemon, "network", "inspect", "front").stdout)
        bridge = bridge_name(network["Id"])
        started = ctrctl(daemon, "run", "-d", "--name", "a", "--network", "front", ref,
                         "sleep", "1000")  # fmt: skip
        assert started.returncode == 0, started.stderr + daemon.log()[-2000:]
        hosts = ctrctl(daemon, "exec", "a", "cat", "/etc/hosts").stdout
        [address] = [line.split()[0] for line in hosts.splitlines() if line.endswith("\ta")]
        assert ipaddress.ip_address(address) in subnet
        pinged = ctrctl(daemon, "run", "--rm", "--network", "front", ref,
                        "sh", "-c", f"ping -c1 -W2 {address}")  # fmt: skip
        assert pinged.returncode == 0, pinged.stdout + pinged.stderr
        assert "1 packets received" in pinged.stdout

        missing = ctrctl(daemon, "run", "--rm", "--network", "nowhere", ref, "true")
        assert missing.returncode == 125
        assert missing.stderr == "Error response from daemon: network nowhere not found\n"
        assert ctrctl(daemon, "create", "--network", "nowhere", ref).returncode == 125

        veth = netlink.host_ifname(endpoint_key("default", network["Id"], "a"))
        assert {veth, bridge} <= links()
        assert ctrctl(daemon, "rm", "-f", "a").returncode == 0
        wait_for(lambda: veth not in links())  # deleted with its namespace, or in the background
        removed = ctrctl(daemon, "network", "rm", "front")
        assert removed.returncode == 0, removed.stderr
        assert "front" not in ctrctl(daemon, "network", "ls").stdout
        assert bridge not in links()  # the record, the bridge and the table's rules go together
    finally:
        daemon.stop()
        if bridge:
            netlink.remove_bridge(bridge)


@pytest.fixture
def networked(make_ctrd):
    """A daemon with an nftables table of its own, and a /24 no host route overlaps."""
    pid = os.getpid()
    daemon = make_ctrd()  # its own table, removed with its bridges by its cleanup
    daemon.start()
    subnet = ipaddress.ip_network(f"10.{100 + pid % 50}.{pid // 50 % 256}.0/24")
    assert not any(subnet.overlaps(p) for p in netlink.host_taken_prefixes())
    return daemon, subnet  # make_ctrd stops it and removes its bridges and table


def resolves(daemon, container: str, name: str, cidr: str) -> bool:
    """Whether `name` resolves to the address of `cidr` through the container's embedded DNS."""
    asked = ctrctl(daemon, "exec", container, "busybox", "nslookup", name, "127.0.0.11")
    return asked.returncode == 0 and cidr.split("/")[0] in asked.stdout


def inspect(daemon, name):
    shown = ctrctl(daemon, "inspect", name)
    assert shown.returncode == 0, shown.stderr
    [info] = json.loads(shown.stdout)
    return info


def test_run_flags_reach_the_container_and_inspect_port_and_ps_show_its_network(
    networked, busybox_image
):
    daemon, subnet = networked
    ref = pull(daemon, busybox_image)
    assert ctrctl(daemon, "network", "create", "--subnet", str(subnet), "front").returncode == 0
    fixed = str(subnet.network_address + 10)
    started = ctrctl(
        daemon, "run", "-d", "--name", "a", "--network", "front", "--ip", fixed,
        "--network-alias", "web", "--dns", "192.0.2.53", "--dns-search", "example.com",
        "--dns-option", "ndots:3", "--add-host", "db:10.9.9.9", "--expose", "7000/udp",
        ref, "sleep", "1000",
    )  # fmt: skip
    assert started.returncode == 0, started.stderr + daemon.log()[-2000:]

    info = inspect(daemon, "a")
    labels = info["labels"]
    assert labels["ctrd.io/networks"] == "front"
    assert labels["ctrd.io/ip"] == fixed
    assert labels["ctrd.io/network-aliases"] == "web"
    settings = info["NetworkSettings"]
    front = settings["Networks"]["front"]
    assert front["IPAddress"] == fixed
    assert front["IPPrefixLen"] == 24
    assert front["Gateway"] == str(subnet.network_address + 1)
    assert front["IPAMConfig"] == {"IPv4Address": fixed}
    assert "web" in front["Aliases"]
    assert settings["IPAddress"] == ""  # docker fills the top level for the bridge only
    assert settings["Ports"] == {"7000/udp": None}

    resolv = ctrctl(daemon, "exec", "a", "cat", "/etc/resolv.conf").stdout
    assert "# ExtServers: [192.0.2.53]" in resolv.splitlines()  # the embedded DNS forwards
    assert "search example.com" in resolv.splitlines()
    assert "options ndots:3" in resolv.splitlines()
    hosts = ctrctl(daemon, "exec", "a", "cat", "/etc/hosts").stdout
    assert ["10.9.9.9", "db"] in [line.split() for line in hosts.splitlines()]

    assert ctrctl(daemon, "port", "a").stdout == ""
    unpublished = ctrctl(daemon, "port", "a", "7000/udp")
    assert (unpublished.returncode, unpublished.stderr) == (
        1, "Error: No public port '7000/udp' published for a\n",
    )  # fmt: skip
    missing = ctrctl(daemon, "port", "nothing")
    assert (missing.returncode, missing.stderr) == (1, "Error: No such container: nothing\n")
    header, row = ctrctl(daemon, "ps").stdout.splitlines()
    assert header.split()[-2:] == ["PORTS", "NAMES"]
    assert row.split()[-2:] == ["7000/udp", "a"]  # exposed, not published: docker's cell

    # stopped: no endpoint, so no ports (as docker's), but the network it is given stays
    assert ctrctl(daemon, "stop", "-t", "0", "a").returncode == 0
    stopped = inspect(daemon, "a")["NetworkSettings"]
    assert stopped["Ports"] == {}
    assert stopped["Networks"]["front"]["IPAddress"] == ""
    assert ctrctl(daemon, "rm", "a").returncode == 0


def test_the_default_network_is_the_bridge_and_container_mode_shares_it(networked, busybox_image):
    daemon, _ = networked
    ref = pull(daemon, busybox_image)
    started = ctrctl(daemon, "run", "-d", "--name", "b", ref, "sleep", "1000")
    assert started.returncode == 0, started.stderr + daemon.log()[-2000:]
    info = inspect(daemon, "b")
    assert info["labels"]["ctrd.io/networks"] == "bridge"
    settings = info["NetworkSettings"]
    assert list(settings["Networks"]) == ["bridge"]
    bridge = settings["Networks"]["bridge"]
    assert settings["IPAddress"] == bridge["IPAddress"] != ""
    assert settings["MacAddress"] == bridge["MacAddress"] != ""
    assert settings["Gateway"] == bridge["Gateway"] != ""
    mac = ctrctl(daemon, "exec", "b", "cat", "/sys/class/net/eth0/address").stdout.strip()
    assert mac == bridge["MacAddress"]

    shared = ctrctl(daemon, "run", "--rm", "--network", "container:b", ref,
                    "sh", "-c", "cat /sys/class/net/eth0/address; hostname")  # fmt: skip
    assert shared.returncode == 0, shared.stderr + daemon.log()[-2000:]
    assert shared.stdout.split() == [mac, started.stdout.strip()[:12]]  # b's hostname, too

    for flags, words in (
        (("--hostname", "x"), "conflicting options: hostname and the network mode"),
        (("-p", "80"), "conflicting options: port publishing and the container type network mode"),
        (("--dns", "1.1.1.1"), "conflicting options: dns and the network mode"),
    ):
        refused = ctrctl(daemon, "run", "--rm", "--network", "container:b", *flags, ref, "true")
        assert (refused.returncode, refused.stderr) == (125, f"ctrctl: {words}\n")
    missing = ctrctl(daemon, "run", "--rm", "--network", "container:zz", ref, "true")
    assert (missing.returncode, missing.stderr) == (125, "ctrctl: No such container: zz\n")
    for flags, words in (
        (("--ip", "10.0.0.3"), "user specified IP address is supported on user defined networks"
                               " only"),
        (("-p", "80/icmp"), "Invalid proto: icmp"),
        (("--add-host", "db"), 'invalid argument "db" for "--add-host" flag: bad format for'
                               ' add-host: "db"'),
    ):  # fmt: skip
        refused = ctrctl(daemon, "run", "--rm", *flags, ref, "true")
        assert (refused.returncode, refused.stderr) == (125, f"ctrctl: {words}\n")
    host = ctrctl(daemon, "run", "--rm", "--network", "host", "-p", "80:80", ref, "true")
    assert host.returncode == 0, host.stderr
    assert host.stderr == "WARNING: Published ports are discarded when using host network mode\n"
    assert ctrctl(daemon, "ps", "-aq").stdout.split() == ["b"]  # nothing else was made
    assert ctrctl(daemon, "rm", "-f", "b").returncode == 0


def test_network_connect_and_disconnect_by_container_name(networked, busybox_image):
    daemon, subnet = networked
    ref = pull(daemon, busybox_image)
    assert ctrctl(daemon, "network", "create", "--subnet", str(subnet), "back").returncode == 0
    assert ctrctl(daemon, "__names", "networks").stdout == "back\n"  # shell completion's
    created = ctrctl(daemon, "create", "--name", "c", "--network", "none", ref, "sleep", "1000")
    assert created.returncode == 0, created.stderr

    joined = ctrctl(daemon, "network", "connect", "--alias", "cee", "back", "c")
    assert (joined.returncode, joined.stderr) == (0, "")
    assert inspect(daemon, "c")["labels"]["ctrd.io/networks"] == "back"  # joined at start
    assert ctrctl(daemon, "start", "c").returncode == 0
    [network] = json.loads(ctrctl(daemon, "network", "inspect", "back").stdout)
    [(cid, member)] = network["Containers"].items()
    assert member["Name"] == "c"
    assert ipaddress.ip_interface(member["IPv4Address"]).ip in subnet
    inside = ctrctl(daemon, "exec", "c", "cat", "/sys/class/net/eth0/address").stdout.strip()
    assert inside == inspect(daemon, "c")["NetworkSettings"]["Networks"]["back"]["MacAddress"]
    # the alias given at connect is the container's on that network, and stays over a restart
    assert inspect(daemon, "c")["labels"]["ctrd.io/network-aliases.back"] == "cee"
    assert resolves(daemon, "c", "cee", member["IPv4Address"])
    assert ctrctl(daemon, "stop", "-t", "0", "c").returncode == 0
    assert ctrctl(daemon, "start", "c").returncode == 0
    [network] = json.loads(ctrctl(daemon, "network", "inspect", "back").stdout)
    assert resolves(daemon, "c", "cee", network["Containers"][cid]["IPv4Address"])

    for args, words in (
        (("connect", "nowhere", "c"), "network nowhere not found"),
        (("connect", "back", "zz"), "No such container: zz"),
        (("connect", "--ip", "10.0.0.300", "back", "c"), "invalid IPv4 address: 10.0.0.300"),
    ):
        refused = ctrctl(daemon, "network", *args)
        assert (refused.returncode, refused.stderr) == (1, f"Error response from daemon: {words}\n")

    left = ctrctl(daemon, "network", "disconnect", "back", "c")
    assert (left.returncode, left.stderr) == (0, "")
    assert "ctrd.io/network-aliases.back" not in inspect(daemon, "c")["labels"]
    [network] = json.loads(ctrctl(daemon, "network", "inspect", "back").stdout)
    assert network["Containers"] == {}
    again = ctrctl(daemon, "network", "disconnect", "-f", "back", "c")
    assert (again.returncode, again.stderr) == (
        1, f"Error response from daemon: container {cid} is not connected to network back\n",
    )  # fmt: skip
    assert ctrctl(daemon, "rm", "-f", "c").returncode == 0


def test_published_ports_serve_and_show_in_port_ps_and_inspect(networked, busybox_image):
    daemon, _ = networked
    ref = pull(daemon, busybox_image)
    loopback_port, any_port = free_port(), free_port()
    started = ctrctl(
        daemon, "run", "-d", "--name", "web", "--hostname", "web",
        "-p", f"127.0.0.1:{loopback_port}:80", "-p", f"published={any_port},target=80",
        "--expose", "443", ref, "sh", "-c", SERVE,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr + daemon.log()[-2000:]
    wait_for(lambda: serves(f"http://127.0.0.1:{loopback_port}/", "hello from web\n"))
    assert fetch(f"http://127.0.0.1:{any_port}/") == "hello from web\n"

    lines = ctrctl(daemon, "port", "web").stdout.splitlines()
    assert sorted(lines) == [f"80/tcp -> 0.0.0.0:{any_port}",
                             f"80/tcp -> 127.0.0.1:{loopback_port}"]  # fmt: skip
    assert sorted(ctrctl(daemon, "port", "web", "80/tcp").stdout.split()) == [
        f"0.0.0.0:{any_port}", f"127.0.0.1:{loopback_port}",
    ]  # fmt: skip
    [row] = json.loads(ctrctl(daemon, "ps", "--format", "json").stdout)
    assert row["ports"] == (
        f"443/tcp, 0.0.0.0:{any_port}->80/tcp, 127.0.0.1:{loopback_port}->80/tcp"
    )
    assert f"0.0.0.0:{any_port}->80/tcp" in ctrctl(daemon, "ps").stdout
    ports = inspect(daemon, "web")["NetworkSettings"]["Ports"]
    assert ports["443/tcp"] is None
    assert sorted(ports["80/tcp"], key=lambda b: b["HostIp"]) == [
        {"HostIp": "0.0.0.0", "HostPort": str(any_port)},
        {"HostIp": "127.0.0.1", "HostPort": str(loopback_port)},
    ]

    # -P publishes the exposed ports on host ports the daemon picks
    auto = ctrctl(daemon, "run", "-d", "--name", "auto", "--hostname", "auto", "-P",
                  "--expose", "80", ref, "sh", "-c", SERVE)  # fmt: skip
    assert auto.returncode == 0, auto.stderr + daemon.log()[-2000:]
    [frontend] = ctrctl(daemon, "port", "auto", "80").stdout.split()
    host_ip, _, host_port = frontend.rpartition(":")
    assert host_ip == "0.0.0.0"
    assert int(host_port) > 0
    wait_for(lambda: serves(f"http://127.0.0.1:{host_port}/", "hello from auto\n"))

    for name in ("web", "auto"):
        assert ctrctl(daemon, "rm", "-f", name).returncode == 0
    for port in (loopback_port, any_port, int(host_port)):  # released with the containers
        with socket.socket() as s:
            s.bind(("0.0.0.0", port))


def serves(url: str, text: str) -> bool:
    try:
        return fetch(url) == text
    except OSError:
        return False


def test_containers_find_each_other_by_name_alias_and_short_id(networked, busybox_image):
    daemon, subnet = networked
    ref = pull(daemon, busybox_image)
    assert ctrctl(daemon, "network", "create", "--subnet", str(subnet), "front").returncode == 0
    started = ctrctl(daemon, "run", "-d", "--name", "a", "--network", "front",
                     "--network-alias", "www", ref, "sleep", "1000")  # fmt: skip
    assert started.returncode == 0, started.stderr + daemon.log()[-2000:]
    address = inspect(daemon, "a")["NetworkSettings"]["Networks"]["front"]["IPAddress"]
    unnamed = ctrctl(daemon, "run", "-d", "--network", "front", ref, "sleep", "1000")
    short_id = unnamed.stdout.strip()[:12]
    for name in ("a", "www", short_id):
        pinged = ctrctl(daemon, "run", "--rm", "--network", "front", ref,
                        "sh", "-c", f"ping -c1 -W2 {name}")  # fmt: skip
        assert pinged.returncode == 0, pinged.stdout + pinged.stderr
    pinged = ctrctl(daemon, "run", "--rm", "--network", "front", ref, "sh", "-c", "ping -c1 www")
    assert pinged.stdout.startswith(f"PING www ({address})")
    # not from another network (the default bridge)
    other = ctrctl(daemon, "run", "--rm", ref, "sh", "-c", "ping -c1 -W2 www")
    assert other.returncode != 0
    assert "bad address 'www'" in other.stdout + other.stderr
    for cid in ("a", unnamed.stdout.strip()):
        assert ctrctl(daemon, "rm", "-f", cid).returncode == 0


def test_network_and_volume_events_as_docker_emits_them(ctrd, busybox_image):
    """`/networks/*` and `/volumes/*` events (docker's network and volume events), in the order
    a container's life makes them: the network and volume made, the container connected and
    its volume mounted at its task's create, disconnected and unmounted at its delete (docker's
    order), then both removed."""
    import time

    from tests.integration.test_network_manager import pid_subnet

    ref = pull(ctrd, busybox_image)
    since = f"{time.time():.3f}"
    made = ctrctl(ctrd, "network", "create", "--subnet", pid_subnet(), "evnet")
    assert made.returncode == 0, made.stderr
    assert ctrctl(ctrd, "volume", "create", "evvol").returncode == 0
    run = ctrctl(ctrd, "run", "-d", "--name", "ev", "--network", "evnet", "-v", "evvol:/data:ro",
                 ref, "sleep", "1000")  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert ctrctl(ctrd, "rm", "-f", "ev").returncode == 0
    assert ctrctl(ctrd, "network", "rm", "evnet").returncode == 0
    assert ctrctl(ctrd, "volume", "rm", "evvol").returncode == 0
    shown = ctrctl(ctrd, "events", "--since", since, "--until", f"{time.time():.3f}")
    assert shown.returncode == 0, shown.stderr
    ours = [
        (line.split()[2], json.loads(line.split(maxsplit=3)[3]))
        for line in shown.stdout.splitlines()
        if line.split()[2].startswith(("/networks/", "/volumes/"))
    ]
    assert [topic for topic, _ in ours] == [
        "/networks/create", "/volumes/create", "/volumes/mount", "/networks/connect",
        "/networks/disconnect", "/volumes/unmount", "/networks/delete", "/volumes/delete",
    ], shown.stdout  # fmt: skip
    events = dict(ours)
    assert events["/networks/create"]["name"] == "evnet"
    assert events["/networks/create"]["driver"] == "bridge"
    assert events["/networks/connect"]["containerId"] == "ev"
    assert events["/networks/connect"]["networkName"] == "evnet"
    assert events["/networks/disconnect"]["containerId"] == "ev"
    assert events["/volumes/create"] == {"name": "evvol", "driver": "local"}
    assert events["/volumes/mount"]["containerId"] == "ev"
    assert events["/volumes/mount"]["destination"] == "/data"
    assert not events["/volumes/mount"].get("readWrite")  # :ro
    assert events["/volumes/unmount"] == {"name": "evvol", "containerId": "ev"}
    # docker's `--filter type=network`
    until = f"{time.time():.3f}"
    only = ctrctl(ctrd, "events", "--since", since, "--until", until, "--filter", "type=network")
    assert only.returncode == 0, only.stderr
    topics = [line.split()[2] for line in only.stdout.splitlines()]
    assert topics == [
        "/networks/create", "/networks/connect", "/networks/disconnect", "/networks/delete"
    ], only.stdout  # fmt: skip
