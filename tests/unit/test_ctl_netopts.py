"""ctrctl run/create's network flags: docker's checks and words, and the labels they become."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ctl.netopts import (
    NetworkFlags,
    image_exposed,
    labels,
    parse_expose,
    standard_publish,
    validate,
)

NGINX = {"ExposedPorts": {"80/tcp": {}, "443/tcp": {}}}


def test_no_network_flag_joins_the_default_bridge_network():
    """... and inspect's HostConfig says `default`, as docker's does (ctrctl.network-mode)."""
    wanted = {"ctrd.io/networks": "bridge", "ctrctl.network-mode": "default"}
    assert labels(NetworkFlags(), {}) == wanted
    assert labels(NetworkFlags(network="default"), {}) == wanted
    assert labels(NetworkFlags(network="bridge"), {})["ctrctl.network-mode"] == "bridge"


@pytest.mark.parametrize("mode", ["host", "none"])
def test_host_and_none_are_modes_without_a_network_label(mode):
    assert "ctrd.io/networks" not in labels(NetworkFlags(network=mode), {})


def test_every_flag_becomes_its_label_comma_joined():
    flags = NetworkFlags(
        network="front", publish=["8080:80", "127.0.0.1::53/udp"], ip="10.1.2.3",
        aliases=["web", "www"], dns=["1.1.1.1", " 8.8.8.8"], dns_search=["example.com."],
        dns_options=["ndots:2"], extra_hosts=["db:10.0.0.9", "v6:::1"],
    )  # fmt: skip
    assert labels(flags, {}) == {
        "ctrd.io/networks": "front",
        "ctrd.io/ports": "8080:80,127.0.0.1::53/udp",
        "ctrd.io/ip": "10.1.2.3",
        "ctrd.io/network-aliases": "web,www",
        "ctrd.io/dns": "1.1.1.1,8.8.8.8",
        "ctrd.io/dns-search": "example.com",
        "ctrd.io/dns-options": "ndots:2",
        "ctrd.io/extra-hosts": "db:10.0.0.9,v6:::1",
        "ctrctl.exposed-ports": "80/tcp,53/udp",
        "ctrctl.network-mode": "front",
        "ctrctl.publish": "8080:80,127.0.0.1::53/udp",  # as given, for inspect's HostConfig
    }


def test_publish_all_publishes_every_exposed_port_not_already_published():
    flags = NetworkFlags(publish=["8443:443"], publish_all=True, expose=["9000-9001/udp"])
    found = labels(flags, NGINX)
    assert found["ctrd.io/ports"] == "8443:443,80/tcp,9000/udp,9001/udp"
    assert (found["ctrctl.publish"], found["ctrctl.publish-all"]) == ("8443:443", "true")
    assert found["ctrctl.exposed-ports"] == "80/tcp,443/tcp,9000/udp,9001/udp"


def test_exposed_ports_alone_publish_nothing():
    found = labels(NetworkFlags(expose=["7000"]), NGINX)
    assert "ctrd.io/ports" not in found
    assert found["ctrctl.exposed-ports"] == "80/tcp,443/tcp,7000/tcp"


def test_the_long_publish_syntax_is_converted_as_the_cli_does():
    assert standard_publish("published=8080,target=80") == "8080:80/tcp"
    assert standard_publish("target=53,published=5353,protocol=udp") == "5353:53/udp"
    assert labels(NetworkFlags(publish=["target=80"]), {})["ctrd.io/ports"] == ":80/tcp"
    with pytest.raises(ValueError, match=r"^invalid publish opts format \(should be name=value"
                       r" but got 'x'\)$"):  # fmt: skip
        standard_publish("target=80,x")


def test_host_networking_drops_published_ports_with_dockers_warning():
    flags = NetworkFlags(network="host", publish=["80:80"])
    assert validate(flags) == [
        "WARNING: Published ports are discarded when using host network mode"
    ]
    assert "ctrd.io/ports" not in labels(flags, {})
    assert validate(NetworkFlags(network="none", publish=["80:80"])) == []
    assert "ctrd.io/ports" not in labels(NetworkFlags(network="none", publish=["80"]), {})


def test_container_mode_labels_only_the_shared_container():
    flags = NetworkFlags(network="container:web")
    assert validate(flags) == []
    assert labels(flags, NGINX, "ab" * 32) == {
        "ctrd.io/network-container": "ab" * 32,
        "ctrctl.network-mode": "container:" + "ab" * 32,
    }


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (NetworkFlags(hostname="h"), "conflicting options: hostname and the network mode"),
        (NetworkFlags(dns=["1.1.1.1"]), "conflicting options: dns and the network mode"),
        (NetworkFlags(extra_hosts=["a:1.2.3.4"]),
         "conflicting options: custom host-to-IP mapping and the network mode"),
        (NetworkFlags(publish=["80"]),
         "conflicting options: port publishing and the container type network mode"),
        (NetworkFlags(publish_all=True),
         "conflicting options: port publishing and the container type network mode"),
        (NetworkFlags(expose=["80"]),
         "conflicting options: port exposing and the container type network mode"),
        (NetworkFlags(hostname="h", publish=["80"]),  # runconfig's order: hostname first
         "conflicting options: hostname and the network mode"),
    ],
)  # fmt: skip
def test_container_mode_conflicts_are_refused_in_dockers_words(flags, words):
    with pytest.raises(ValueError, match=f"^{words}$"):
        validate(NetworkFlags(**{**flags.__dict__, "network": "container:web"}))


def test_container_mode_needs_a_container():
    with pytest.raises(
        ValueError, match=r"^Invalid network mode: invalid container format container:<name\|id>$"
    ):
        validate(NetworkFlags(network="container:"))


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (NetworkFlags(network="front", ip="10.0.0.300"), "invalid IPv4 address: 10.0.0.300"),
        (NetworkFlags(network="front", ip="fe80::1"), "invalid IPv4 address: fe80::1"),
        (NetworkFlags(ip="10.0.0.3"),
         "user specified IP address is supported on user defined networks only"),
        (NetworkFlags(network="host", ip="10.0.0.3"),
         "user specified IP address is supported on user defined networks only"),
        (NetworkFlags(aliases=["a"]),
         "network-scoped alias is supported only for containers in user defined networks"),
        (NetworkFlags(extra_hosts=["nocolon"]),
         'invalid argument "nocolon" for "--add-host" flag: bad format for add-host: "nocolon"'),
        (NetworkFlags(extra_hosts=["db:10.0.0"]),
         'invalid argument "db:10.0.0" for "--add-host" flag:'
         ' invalid IP address in add-host: "10.0.0"'),
        (NetworkFlags(dns=["dns.example"]),
         'invalid argument "dns.example" for "--dns" flag: dns.example is not an ip address'),
        (NetworkFlags(dns_search=["-bad-"]),
         'invalid argument "-bad-" for "--dns-search" flag: -bad- is not a valid domain'),
        (NetworkFlags(expose=["80:80"]), "invalid port format for --expose: 80:80"),
    ],
)  # fmt: skip
def test_bad_values_are_refused_in_dockers_words(flags, words):
    with pytest.raises(ValueError, match=re.escape(words)) as refused:
        validate(flags)
    assert str(refused.value) == words


def test_add_host_takes_ipv6_and_the_host_gateway():
    assert validate(NetworkFlags(extra_hosts=["a:::1", "b:host-gateway"])) == []


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("8080:", "No port specified: 8080:<empty>"),
        ("x:80", "Invalid hostPort: x"),
        ("80-79", "Invalid containerPort: 80-79"),
        ("1.2.3:80:80", "Invalid ip address: 1.2.3"),
        ("80/icmp", "Invalid proto: icmp"),
        ("80/sctp", "Invalid proto: sctp: ctrd does not publish sctp ports"),
    ],
)  # fmt: skip
def test_bad_publish_values_are_refused_before_anything_is_made(text, words):
    with pytest.raises(ValueError, match=re.escape(words)) as refused:
        validate(NetworkFlags(publish=[text]))
    assert str(refused.value) == words


def test_expose_and_the_images_exposed_ports():
    assert parse_expose("7000-7002/udp") == ["7000/udp", "7001/udp", "7002/udp"]
    assert image_exposed({"ExposedPorts": {"53/UDP": {}, "80": {}, "bad/tcp": {}}}) == [
        "53/udp", "80/tcp",
    ]  # fmt: skip
    assert image_exposed({"ExposedPorts": None}) == []


@given(st.text(max_size=30))
def test_expose_parsing_raises_only_value_errors(text):
    try:
        ports = parse_expose(text)
    except ValueError:
        return
    assert all(0 <= int(p.split("/")[0]) <= 0xFFFF for p in ports)


def test_expose_errors_are_the_clis():
    with pytest.raises(ValueError, match=r"^invalid range format for --expose: x") as refused:
        parse_expose("x")
    assert str(refused.value) == (
        'invalid range format for --expose: x, error: strconv.ParseUint: parsing "x": invalid'
        " syntax"
    )
