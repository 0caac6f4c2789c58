"""docker's `-p` syntax (go-connections nat.ParsePortSpec, v0.4 as in docker 20.10), its error
words, and where ctrd is stricter than docker (IPv6 host addresses, sctp, container port 0,
text docker silently ignores)."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.errors import InvalidArgument
from supervisor.network.portspec import PortRequest, parse_publish

ip = IPv4Address
LOOP = ip("127.0.0.1")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("80", [PortRequest("tcp", None, 0, 80)]),
        ("80/tcp", [PortRequest("tcp", None, 0, 80)]),
        ("80/", [PortRequest("tcp", None, 0, 80)]),  # docker: an empty proto is tcp
        ("53/udp", [PortRequest("udp", None, 0, 53)]),
        ("53/UDP", [PortRequest("udp", None, 0, 53)]),  # docker lowercases the proto
        ("8080:80", [PortRequest("tcp", None, 8080, 80)]),
        ("0:80", [PortRequest("tcp", None, 0, 80)]),  # host port 0: pick one, as docker
        (":80", [PortRequest("tcp", None, 0, 80)]),
        ("::80", [PortRequest("tcp", None, 0, 80)]),
        ("127.0.0.1:8080:80", [PortRequest("tcp", LOOP, 8080, 80)]),
        ("127.0.0.1::80", [PortRequest("tcp", LOOP, 0, 80)]),
        ("127.0.0.1::80/udp", [PortRequest("udp", LOOP, 0, 80)]),
        ("[127.0.0.1]:8080:80", [PortRequest("tcp", LOOP, 8080, 80)]),
        ("0.0.0.0:8080:80", [PortRequest("tcp", None, 8080, 80)]),  # 0.0.0.0 is every address
        ("65535:1", [PortRequest("tcp", None, 65535, 1)]),
        ("080:080", [PortRequest("tcp", None, 80, 80)]),  # Go's ParseUint takes leading zeros
        (
            "80-82",
            [PortRequest("tcp", None, 0, port) for port in (80, 81, 82)],
        ),
        (
            "8000-8001:80-81/udp",
            [PortRequest("udp", None, 8000, 80), PortRequest("udp", None, 8001, 81)],
        ),
        (
            "10.0.0.1:8000-8001:80-81",
            [
                PortRequest("tcp", ip("10.0.0.1"), 8000, 80),
                PortRequest("tcp", ip("10.0.0.1"), 8001, 81),
            ],
        ),
        # one container port, a host range: one free port of that range
        ("8000-8010:80", [PortRequest("tcp", None, 8000, 80, host_port_end=8010)]),
        ("8000-8000:80", [PortRequest("tcp", None, 8000, 80)]),
        ("80-80", [PortRequest("tcp", None, 0, 80)]),
    ],
)
def test_valid_specs_give_docker_s_mappings(text: str, expected: list[PortRequest]):
    assert parse_publish(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # docker's own words
        ("", "No port specified: <empty>"),
        ("8080:", "No port specified: 8080:<empty>"),
        ("/udp", "No port specified: /udp<empty>"),
        ("x", "Invalid containerPort: x"),
        ("8080:x", "Invalid containerPort: x"),
        ("65536", "Invalid containerPort: 65536"),
        ("-1", "Invalid containerPort: -1"),
        ("+80", "Invalid containerPort: +80"),
        (" 80", "Invalid containerPort:  80"),
        ("81-80", "Invalid containerPort: 81-80"),
        ("80-", "Invalid containerPort: 80-"),
        ("x:80", "Invalid hostPort: x"),
        ("65536:80", "Invalid hostPort: 65536"),
        ("8001-8000:80", "Invalid hostPort: 8001-8000"),
        ("1.2.3:8080:80", "Invalid ip address: 1.2.3"),
        ("localhost:8080:80", "Invalid ip address: localhost"),
        ("01.2.3.4:8080:80", "Invalid ip address: 01.2.3.4"),
        ("80/icmp", "Invalid proto: icmp"),
        ("80/TCPX", "Invalid proto: TCPX"),
        (
            "8000-8002:80-81",
            "Invalid ranges specified for container and host Ports: 80-81 and 8000-8002",
        ),
        ("8000:80-81", "Invalid ranges specified for container and host Ports: 80-81 and 8000"),
        # stricter than docker
        ("0", "Invalid containerPort: 0"),
        ("8080:0", "Invalid containerPort: 0"),
        ("0-10:80", "Invalid hostPort: 0-10"),
        ("80-81-82", "Invalid containerPort: 80-81-82"),
        ("80/tcp/x", "Invalid proto: tcp/x"),
        ("80/sctp", "Invalid proto: sctp: ctrd does not publish sctp ports"),
        ("[::1]:8080:80", "Invalid ip address: ::1: ctrd publishes ports on IPv4"),
        ("::1:8080:80", "Invalid ip address: ::1: ctrd publishes ports on IPv4"),
        ("[::]::80", "Invalid ip address: ::: ctrd publishes ports on IPv4"),
    ],
)
def test_bad_specs_are_refused_in_docker_s_words(text: str, message: str):
    with pytest.raises(InvalidArgument) as info:
        parse_publish(text)
    assert str(info.value).startswith(message)


def test_the_ip_is_checked_before_the_ports_as_docker_does():
    with pytest.raises(InvalidArgument, match=r"^Invalid ip address: nope$"):
        parse_publish("nope:x:y")


def test_error_messages_are_docker_s_words_without_a_suffix():
    with pytest.raises(InvalidArgument) as info:
        parse_publish("8080:x")
    assert str(info.value) == "Invalid containerPort: x"


@given(st.text(alphabet="0123456789:-/.[]abctpu", max_size=24))
def test_the_parser_raises_nothing_but_invalid_argument(text: str):
    try:
        requests = parse_publish(text)
    except InvalidArgument:
        return
    for r in requests:
        assert r.proto in ("tcp", "udp")
        assert 1 <= r.container_port <= 65535
        assert 0 <= r.host_port <= 65535
        assert r.host_port_end == 0 or r.host_port < r.host_port_end <= 65535
