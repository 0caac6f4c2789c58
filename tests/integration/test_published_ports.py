"""Published ports end to end: busybox httpd in a container, fetched through ctrd's DNAT from the
host (127.0.0.1 and the host's own address) and from another container (hairpin), a taken port
refused before the task starts, and the ports' sockets and rules gone with the container."""

from __future__ import annotations

import ipaddress
import json
import socket
import sys
import urllib.request

from pyroute2 import IPRoute

from supervisor.network import nft
from tests.integration.test_network_labels import exec_in
from tests.integration.test_tasks import pull, run, wait_for

SERVE = (
    "mkdir -p /www && echo hello from $HOSTNAME > /www/index.html"
    " && exec busybox httpd -f -p 80 -h /www"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def host_address() -> str:
    """The host's own non-loopback IPv4 address: the source of its default route."""
    with IPRoute() as ipr:
        [route] = ipr.route("get", dst="192.0.2.1")  # TEST-NET-1: nothing is sent
        return str(route.get_attr("RTA_PREFSRC"))


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return answer.read().decode()


def wait_for_page(port: int, text: str) -> None:
    """Until httpd answers `text` through the port published on 127.0.0.1:`port`."""

    def up() -> bool:
        try:
            return fetch(f"http://127.0.0.1:{port}/") == text
        except OSError:
            return False

    wait_for(up)


def test_httpd_is_reached_through_both_published_ports_from_everywhere(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    loopback_port, any_port = free_port(), free_port()
    publish = f"127.0.0.1:{loopback_port}:80,{any_port}:80"
    run(ctrd, "-d", "--label", "ctrd.io/networks=bridge", "--label", f"ctrd.io/ports={publish}",
        "--env", "HOSTNAME=web", ref, "web", "sh", "-c", SERVE)  # fmt: skip

    wait_for_page(loopback_port, "hello from web\n")
    assert fetch(f"http://127.0.0.1:{any_port}/") == "hello from web\n"
    address = host_address()
    assert fetch(f"http://{address}:{any_port}/") == "hello from web\n"
    # the 127.0.0.1 publish is not on the host's other addresses
    try:
        fetch(f"http://{address}:{loopback_port}/")
        raise AssertionError("a port published on 127.0.0.1 answered on another address")
    except OSError:
        pass

    # another container, on the same bridge, through the host's address (hairpin)
    run(ctrd, "-d", "--label", "ctrd.io/networks=bridge", ref, "client", "sleep", "1000")
    got = exec_in(
        ctrd, "client", "busybox", "wget", "-q", "-O", "-", f"http://{address}:{any_port}/"
    )
    assert got == "hello from web\n"

    # a taken port fails the next task before it starts, and leaves nothing held
    taken = f"ctrd.io/ports={any_port}:80"
    done = run(ctrd, "--rm", "--label", "ctrd.io/networks=bridge", "--label", taken,
               ref, "late", "true", check=False)  # fmt: skip
    assert done.returncode != 0
    assert f"Bind for 0.0.0.0:{any_port} failed: port is already allocated" in done.stderr
    # the shim and bundle made while the ports were being taken are gone with the failure
    assert not [p for p in ctrd.state.rglob("late") if p.is_dir()]
    assert "late" not in ctrd.ctr("tasks", "ls", "-q").stdout.split()

    rules = json.dumps(nft.list_table(ctrd.nft_table))
    assert str(any_port) in rules
    for name in ("web", "client"):
        ctrd.ctr("tasks", "kill", "-s", "KILL", name)
        wait_for(lambda n=name: ctrd.ctr("tasks", "delete", n, check=False).returncode == 0)
    assert str(any_port) not in json.dumps(nft.list_table(ctrd.nft_table))
    for port in (loopback_port, any_port):  # the daemon's sockets are closed: bindable again
        with socket.socket() as s:
            s.bind(("0.0.0.0", port))


def test_ports_are_held_again_after_a_restart(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    port = free_port()
    run(ctrd, "-d", "--label", "ctrd.io/networks=bridge", "--label", f"ctrd.io/ports={port}:80",
        "--env", "HOSTNAME=again", ref, "again", "sh", "-c", SERVE)  # fmt: skip
    ctrd.restart()
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
            raise AssertionError("the restarted daemon does not hold the published port")
        except OSError:
            pass

    wait_for_page(port, "hello from again\n")
    ctrd.ctr("tasks", "kill", "-s", "KILL", "again")
    wait_for(lambda: ctrd.ctr("tasks", "delete", "again", check=False).returncode == 0)


def test_a_published_port_is_reached_from_another_host(ctrd, busybox_image, tmp_path):
    """Another host: a network namespace of the test's own behind a veth, on a /30 of its own,
    fetching through the host's address on that link (prerouting's DNAT, then forwarded)."""
    import os

    from supervisor.network import netlink
    from tests.integration.test_netlink import in_netns

    pid = os.getpid()
    link = ipaddress_for(pid)
    host_end, pin = f"vr{pid % 100000}", tmp_path / "ns" / "remote"
    ref = pull(ctrd, busybox_image)
    port = free_port()
    run(ctrd, "-d", "--label", "ctrd.io/networks=bridge", "--label", f"ctrd.io/ports={port}:80",
        "--env", "HOSTNAME=far", ref, "far", "sh", "-c", SERVE)  # fmt: skip
    wait_for_page(port, "hello from far\n")
    netlink.netns_create(pin)
    fd = os.open(pin, os.O_RDONLY)
    try:
        with IPRoute() as ipr:
            ipr.link("add", ifname=host_end, kind="veth",
                     peer={"ifname": "eth0", "net_ns_fd": fd})  # fmt: skip
            index = ipr.link_lookup(ifname=host_end)[0]
            ipr.addr("add", index=index, address=str(link[1]), prefixlen=30)
            ipr.link("set", index=index, state="up")
        for command in (("ip", "link", "set", "lo", "up"), ("ip", "link", "set", "eth0", "up"),
                        ("ip", "addr", "add", f"{link[2]}/30", "dev", "eth0")):  # fmt: skip
            assert in_netns(pin, "busybox", *command).returncode == 0
        url = f"http://{link[1]}:{port}/"
        fetcher = (
            f"import urllib.request as u; print(u.urlopen({url!r}, timeout=5).read().decode())"
        )
        got = in_netns(pin, sys.executable, "-c", fetcher)
        assert got.stdout == "hello from far\n\n", got.stderr
    finally:
        os.close(fd)
        netlink.detach_endpoint(host_end)
        netlink.netns_remove(pin)
        netlink.netns_release_dir(pin.parent)
    ctrd.ctr("tasks", "kill", "-s", "KILL", "far")
    wait_for(lambda: ctrd.ctr("tasks", "delete", "far", check=False).returncode == 0)


def ipaddress_for(pid: int) -> list[ipaddress.IPv4Address]:
    """A /30 of 10.0.0.0/8 for this test's link, clear of the host's routes."""
    from supervisor.network import netlink

    for attempt in range(64):
        n = (pid * 64 + attempt) % (1 << 14)
        subnet = ipaddress.ip_network(f"10.{200 + n // 4096}.{n // 16 % 256}.{n % 16 * 16}/30")
        if not any(subnet.overlaps(p) for p in netlink.host_taken_prefixes()):
            return list(subnet)
    raise AssertionError("no free /30 for the test's link")
