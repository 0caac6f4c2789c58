"""The pure parts of supervisor.network.netlink: interface names and the host files it parses."""

from __future__ import annotations

import ipaddress

import pytest

from supervisor.network import netlink


def test_host_ifname_is_stable_short_and_differs_per_endpoint() -> None:
    name = netlink.host_ifname("endpoint-1")

    assert name == netlink.host_ifname("endpoint-1")
    assert name != netlink.host_ifname("endpoint-2")
    assert name.startswith("veth")
    assert len(name.encode()) <= netlink.IFNAMSIZ
    assert int(name[4:], 16) >= 0


@pytest.mark.parametrize("name", ["", "a" * 16, "a/b", "a b", " ab"])
def test_bad_interface_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="bad interface name"):
        netlink._check_ifname(name)


def test_resolvers_are_host_prefixes_and_bad_lines_are_skipped() -> None:
    text = (
        "# comment\nsearch lan\nnameserver 192.168.1.1\nnameserver fe80::1%eth0\n"
        "nameserver not-an-ip\nnameserver\noptions ndots:0\n"
    )

    assert netlink.resolvers_in(text) == [
        ipaddress.ip_network("192.168.1.1/32"),
        ipaddress.ip_network("fe80::1/128"),
    ]


def test_mountinfo_paths_are_unescaped() -> None:
    assert netlink._unescape_mountinfo(r"/tmp/a\040b\134c") == "/tmp/a b\\c"
    assert netlink._unescape_mountinfo("/run/netns") == "/run/netns"
