"""PortReservations with real sockets in the host's namespace, on 127.0.0.1 and 0.0.0.0.

Nothing is sent anywhere except one connection attempt to 127.0.0.1. Ports come from the
kernel's free ones (bound to 0, then closed) so parallel tests do not collide; every test
checks that it ends with as many open file descriptors as it started with.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from ipaddress import IPv4Address

import pytest

from supervisor.errors import FailedPrecondition
from supervisor.network.ports import PortBinding, PortReservations
from supervisor.network.portspec import PortRequest

LOOP = IPv4Address("127.0.0.1")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def reservations() -> Iterator[PortReservations]:
    before = open_fds()
    held = PortReservations()
    try:
        yield held
    finally:
        held.close()
        assert held.owners() == []
        assert open_fds() == before


def plain_socket(proto: str = "tcp") -> socket.socket:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    return socket.socket(socket.AF_INET, kind)


def free_ports(count: int = 1) -> int:
    """The first of `count` consecutive ports free for tcp and udp on every address."""
    for _ in range(50):
        with plain_socket() as s:
            s.bind(("0.0.0.0", 0))
            first = s.getsockname()[1]
        if first + count - 1 <= 65535 and all(
            can_bind(proto, "0.0.0.0", p)
            for p in range(first, first + count)
            for proto in ("tcp", "udp")
        ):
            return first
    raise AssertionError("no free ports")


def can_bind(proto: str, host: str, port: int, reuse: bool = False) -> bool:
    with plain_socket(proto) as s:
        if reuse:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


@contextlib.contextmanager
def taken(proto: str, host: str, port: int) -> Iterator[None]:
    """Another program's socket on host:port (listening, for tcp) for the duration."""
    with plain_socket(proto) as s:
        s.bind((host, port))
        if proto == "tcp":
            s.listen()
        yield


def test_a_taken_port_fails_in_docker_s_words_and_leaves_nothing_bound(
    reservations: PortReservations,
):
    port = free_ports(2)
    before = open_fds()
    with taken("tcp", "127.0.0.1", port + 1):
        requests = [
            PortRequest("tcp", LOOP, port, 80),
            PortRequest("udp", None, port, 53),
            PortRequest("tcp", LOOP, port + 1, 81),
        ]
        with pytest.raises(FailedPrecondition) as info:
            reservations.reserve("c1", requests)
        assert str(info.value) == f"Bind for 127.0.0.1:{port + 1} failed: port is already allocated"
    assert reservations.bindings("c1") == []
    assert reservations.owners() == []
    assert open_fds() == before
    # what the failed call had bound first is free again
    assert can_bind("tcp", "127.0.0.1", port)
    assert can_bind("udp", "0.0.0.0", port)


def test_the_wildcard_and_a_specific_address_exclude_each_other_as_the_kernel_says(
    reservations: PortReservations,
):
    port = free_ports()
    with taken("tcp", "127.0.0.1", port), pytest.raises(FailedPrecondition) as info:
        reservations.reserve("c1", [PortRequest("tcp", None, port, 80)])
    assert str(info.value) == f"Bind for 0.0.0.0:{port} failed: port is already allocated"

    reservations.reserve("c1", [PortRequest("tcp", None, port, 80)])
    with pytest.raises(FailedPrecondition, match=f"Bind for 127.0.0.1:{port} failed"):
        reservations.reserve("c2", [PortRequest("tcp", LOOP, port, 80)])
    # another program cannot take it either, even asking for address reuse
    assert not can_bind("tcp", "127.0.0.1", port, reuse=True)
    assert not can_bind("tcp", "0.0.0.0", port, reuse=True)
    # the same number over udp is another port
    assert can_bind("udp", "127.0.0.1", port)


def test_reservations_hold_tcp_and_udp_and_release_frees_them(
    reservations: PortReservations,
):
    port = free_ports()
    got = reservations.reserve(
        "c1", [PortRequest("tcp", None, port, 80), PortRequest("udp", LOOP, port, 53)]
    )
    assert got == [PortBinding("tcp", None, port, 80), PortBinding("udp", LOOP, port, 53)]
    assert reservations.bindings("c1") == got
    assert not can_bind("tcp", "0.0.0.0", port)
    assert not can_bind("udp", "127.0.0.1", port)
    assert not can_bind("udp", "0.0.0.0", port)

    assert reservations.release("c1") == got
    assert reservations.bindings("c1") == []
    assert can_bind("tcp", "0.0.0.0", port)
    assert can_bind("udp", "127.0.0.1", port)
    assert reservations.release("c1") == []  # releasing again is no error


def test_a_held_tcp_port_refuses_connections_instead_of_hanging(
    reservations: PortReservations,
):
    port = free_ports()
    reservations.reserve("c1", [PortRequest("tcp", LOOP, port, 80)])
    with plain_socket() as client:
        client.settimeout(5)
        with pytest.raises(ConnectionRefusedError):
            client.connect(("127.0.0.1", port))


def test_host_port_zero_lets_the_kernel_pick_and_holds_the_pick(
    reservations: PortReservations,
):
    got = reservations.reserve(
        "c1", [PortRequest("tcp", None, 0, 80), PortRequest("udp", None, 0, 80)]
    )
    assert [(b.proto, b.container_port) for b in got] == [("tcp", 80), ("udp", 80)]
    assert all(b.host_port > 0 for b in got)
    assert not can_bind("tcp", "0.0.0.0", got[0].host_port)
    assert not can_bind("udp", "0.0.0.0", got[1].host_port)


def test_a_host_range_gives_its_first_free_port_and_fails_when_all_are_taken(
    reservations: PortReservations,
):
    port = free_ports(3)
    in_range = PortRequest("tcp", None, port, 80, host_port_end=port + 2)
    with taken("tcp", "0.0.0.0", port):
        (first,) = reservations.reserve("c1", [in_range])
        assert first == PortBinding("tcp", None, port + 1, 80)
        (second,) = reservations.reserve("c2", [in_range])
        assert second.host_port == port + 2
        with pytest.raises(FailedPrecondition) as info:
            reservations.reserve("c3", [in_range])
    assert str(info.value) == f"Bind for 0.0.0.0:{port}-{port + 2} failed: all ports are allocated"
    assert reservations.owners() == ["c1", "c2"]


def test_one_call_is_all_or_nothing_even_against_itself(reservations: PortReservations):
    port = free_ports()
    with pytest.raises(FailedPrecondition, match="port is already allocated"):
        reservations.reserve(
            "c1", [PortRequest("tcp", None, port, 80), PortRequest("tcp", None, port, 81)]
        )
    assert reservations.bindings("c1") == []
    # a second call of the same owner adds to what it holds
    reservations.reserve("c1", [PortRequest("tcp", None, port, 80)])
    reservations.reserve("c1", [PortRequest("udp", None, port, 80)])
    assert [b.proto for b in reservations.bindings("c1")] == ["tcp", "udp"]


def test_restore_takes_back_what_it_can_and_reports_the_rest(reservations: PortReservations):
    port = free_ports(2)
    recorded = [
        PortBinding("tcp", None, port, 80),
        PortBinding("udp", LOOP, port, 53),
        PortBinding("tcp", LOOP, port + 1, 81),
    ]
    with taken("tcp", "127.0.0.1", port + 1):
        failures = reservations.restore("c1", recorded)
    assert [f.binding for f in failures] == [recorded[2]]
    assert failures[0].reason == f"Bind for 127.0.0.1:{port + 1} failed: port is already allocated"
    assert reservations.bindings("c1") == recorded[:2]
    assert not can_bind("tcp", "0.0.0.0", port)
    # restoring again keeps what is held and takes what has come free
    assert reservations.restore("c1", recorded) == []
    assert reservations.bindings("c1") == recorded
    # nothing held: nothing recorded for the owner
    reservations.release("c1")
    with taken("tcp", "127.0.0.1", port + 1):
        assert len(reservations.restore("c2", [recorded[2]])) == 1
    assert "c2" not in reservations.owners()


def test_an_address_the_host_does_not_have_is_refused(reservations: PortReservations):
    with pytest.raises(FailedPrecondition) as info:
        reservations.reserve("c1", [PortRequest("tcp", IPv4Address("192.0.2.1"), 8080, 80)])
    assert str(info.value) == "Bind for 192.0.2.1:8080 failed: Cannot assign requested address"
    assert reservations.owners() == []
