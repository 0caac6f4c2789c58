"""supervisor.network.dns against the real kernel (root): the resolver inside real namespaces.

Each test pins network namespaces in a temporary directory (netlink.netns_create), brings their
`lo` up, serves them with an EmbeddedDns on the test's own event loop, and asks 127.0.0.11:53
from a thread that has joined a namespace, with dnspython's blocking client over real UDP and
TCP. The upstream resolvers are small dnspython responders on 127.0.0.1 in the host's namespace,
on ports of their own (where no container could reach them: only the daemon's forwarding can).
The fixture unpins everything and asserts that no mount is left; the host's resolv.conf is never
read or written.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, TypeVar

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from pyroute2 import IPRoute

from supervisor.network import dns as edns
from supervisor.network import netlink

T = TypeVar("T")
TIMEOUT = 0.4  # the resolver's per-upstream timeout in these tests
BIG = 100  # records in big.test's answer: ~1.6 kB, more than 512

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

TABLE = {
    "web": [IPv4Address("172.18.0.2")],
    "www": [IPv4Address("172.18.0.2")],  # an alias of web
    "db": [IPv4Address("172.18.0.3"), IPv4Address("172.18.0.4")],
}


def lookup(name: str) -> Sequence[IPv4Address]:
    return TABLE.get(name, [])


# --- namespaces -------------------------------------------------------------------------------


def in_netns(pin: Path, work: Callable[[], T]) -> T:
    """Run `work` on a new thread that has joined the namespace at `pin` (and ends there)."""
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        fd = os.open(pin, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if _libc.setns(fd, 0x40000000) != 0:
                raise OSError(ctypes.get_errno(), "setns")
            result.append(work())
        except BaseException as e:
            failure.append(e)
        finally:
            os.close(fd)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def lo_up() -> None:
    with IPRoute() as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def mounts_under(directory: Path) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(str(directory))]


class Pins:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def make(self, name: str) -> Path:
        pin = self.directory / name
        netlink.netns_create(pin)
        in_netns(pin, lo_up)
        return pin


@pytest.fixture
def pins(tmp_path: Path) -> Iterator[Pins]:
    made = Pins(tmp_path / "netns")
    try:
        yield made
    finally:
        if made.directory.exists():
            for pin in made.directory.iterdir():
                netlink.netns_remove(pin)
            netlink.netns_release_dir(made.directory)
    assert mounts_under(tmp_path) == []


# --- a fake upstream resolver in the host's namespace ----------------------------------------


class FakeUpstream:
    """A resolver on 127.0.0.1:<port>, UDP and TCP, in the host's namespace.

    example.test A 192.0.2.1; other (single-label) A 192.0.2.7; big.test: BIG A records over
    TCP, an empty truncated answer over UDP; fail.test: SERVFAIL; anything else NXDOMAIN.
    `asked` records (protocol, name) of every query.
    """

    def __init__(self, servfail_all: bool = False) -> None:
        self.servfail_all = servfail_all
        self.asked: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self.udp, self.tcp = _udp_and_tcp_on_one_port()
        self.port = self.udp.getsockname()[1]
        self._threads = [
            threading.Thread(target=self._serve_udp, name="fake-udp"),
            threading.Thread(target=self._serve_tcp, name="fake-tcp"),
        ]
        for thread in self._threads:
            thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self.udp.close()
        self.tcp.close()

    def answer(self, wire: bytes, protocol: str) -> bytes:
        query = dns.message.from_wire(wire)
        question = query.question[0]
        name = question.name.to_text()
        self.asked.append((protocol, name))
        reply = dns.message.make_response(query, recursion_available=True)
        records = {"example.test.": ["192.0.2.1"], "other.": ["192.0.2.7"]}
        big = [f"198.51.100.{i}" for i in range(1, BIG + 1)]
        if self.servfail_all or name == "fail.test.":
            reply.set_rcode(dns.rcode.SERVFAIL)
        elif name == "big.test." and protocol == "udp":
            reply.flags |= dns.flags.TC
        elif name in records or name == "big.test.":
            texts = big if name == "big.test." else records[name]
            reply.answer.append(
                dns.rrset.from_text_list(name, 60, dns.rdataclass.IN, dns.rdatatype.A, texts)
            )
        else:
            reply.set_rcode(dns.rcode.NXDOMAIN)
        return reply.to_wire(max_size=65535)

    def _serve_udp(self) -> None:
        self.udp.settimeout(0.05)
        while not self._stop.is_set():
            try:
                wire, source = self.udp.recvfrom(65535)
            except TimeoutError:
                continue
            self.udp.sendto(self.answer(wire, "udp"), source)

    def _serve_tcp(self) -> None:
        self.tcp.settimeout(0.05)
        while not self._stop.is_set():
            try:
                conn, _ = self.tcp.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                while (head := _read(conn, 2)) is not None:
                    wire = _read(conn, int.from_bytes(head, "big"))
                    if wire is None:
                        break
                    out = self.answer(wire, "tcp")
                    conn.sendall(len(out).to_bytes(2, "big") + out)


def _read(conn: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _udp_and_tcp_on_one_port() -> tuple[socket.socket, socket.socket]:
    for _ in range(20):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            tcp.bind(("127.0.0.1", udp.getsockname()[1]))
        except OSError:
            udp.close()
            tcp.close()
            continue
        tcp.listen(8)
        return udp, tcp
    raise OSError("no port free for both UDP and TCP")


def silent_upstream() -> socket.socket:
    """A UDP socket that never answers (a resolver that times out); nothing on TCP there."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (UDP: port unreachable; TCP: refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- clients inside the namespace -------------------------------------------------------------


def ask_udp(pin: Path, name: str, rdtype: str = "A", **kw: Any) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, **kw)
    return in_netns(pin, lambda: dns.query.udp(q, edns.LISTEN_ADDRESS, timeout=5))


def ask_tcp(pin: Path, name: str, rdtype: str = "A") -> dns.message.Message:
    q = dns.message.make_query(name, rdtype)
    return in_netns(pin, lambda: dns.query.tcp(q, edns.LISTEN_ADDRESS, timeout=5))


def addresses(reply: dns.message.Message) -> list[str]:
    return [rd.to_text() for rrset in reply.answer for rd in rrset]


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


# --- tests ------------------------------------------------------------------------------------


def test_known_names_and_aliases_answer_over_udp_and_tcp_inside_the_namespace(
    pins: Pins,
) -> None:
    pin = pins.make("a")

    async def scenario() -> None:
        resolver = edns.EmbeddedDns(upstreams=list, timeout=TIMEOUT)
        try:
            await resolver.serve("a", pin, lookup)
            web = await asyncio.to_thread(ask_udp, pin, "web")
            alias = await asyncio.to_thread(ask_udp, pin, "WWW.")
            db = await asyncio.to_thread(ask_tcp, pin, "db")
            aaaa = await asyncio.to_thread(ask_udp, pin, "web", "AAAA")
        finally:
            await resolver.close()

        assert addresses(web) == ["172.18.0.2"]
        assert web.answer[0].ttl == edns.TTL
        assert addresses(alias) == ["172.18.0.2"]
        assert sorted(addresses(db)) == ["172.18.0.3", "172.18.0.4"]
        assert aaaa.rcode() == dns.rcode.NOERROR
        assert aaaa.answer == []

    run(scenario)


def test_several_queries_share_one_tcp_connection(pins: Pins) -> None:
    pin = pins.make("a")

    def two_on_one_connection() -> list[dns.message.Message]:
        with socket.create_connection((edns.LISTEN_ADDRESS, edns.DNS_PORT), timeout=5) as s:
            return [
                dns.query.tcp(dns.message.make_query(name, "A"), "", timeout=5, sock=s)
                for name in ("web", "db")
            ]

    async def scenario() -> None:
        resolver = edns.EmbeddedDns(upstreams=list, timeout=TIMEOUT)
        try:
            await resolver.serve("a", pin, lookup)
            web, db = await asyncio.to_thread(in_netns, pin, two_on_one_connection)
        finally:
            await resolver.close()

        assert addresses(web) == ["172.18.0.2"]
        assert sorted(addresses(db)) == ["172.18.0.3", "172.18.0.4"]

    run(scenario)


def test_unknown_names_are_forwarded_to_a_loopback_resolver_of_the_host(pins: Pins) -> None:
    pin = pins.make("a")
    upstream = FakeUpstream()

    async def scenario() -> None:
        resolver = edns.EmbeddedDns(upstreams=lambda: [upstream.address], timeout=TIMEOUT)
        try:
            await resolver.serve("a", pin, lookup)
            q = dns.message.make_query("example.test", "A")
            forwarded = await asyncio.to_thread(
                in_netns, pin, lambda: dns.query.udp(q, edns.LISTEN_ADDRESS, timeout=5)
            )
            single = await asyncio.to_thread(ask_udp, pin, "other")
            missing = await asyncio.to_thread(ask_tcp, pin, "nowhere.test")
            mx = await asyncio.to_thread(ask_udp, pin, "web", "MX")
        finally:
            await resolver.close()

        assert forwarded.id == q.id
        assert forwarded.question == q.question
        assert addresses(forwarded) == ["192.0.2.1"]
        assert addresses(single) == ["192.0.2.7"]
        assert missing.rcode() == dns.rcode.NXDOMAIN
        assert mx.rcode() == dns.rcode.NXDOMAIN  # not a type answered locally: the host's word
        assert upstream.asked == [
            ("udp", "example.test."),
            ("udp", "other."),
            ("tcp", "nowhere.test."),  # the client asked over TCP: forwarded over TCP
            ("udp", "web."),
        ]

    try:
        # The container cannot reach 127.0.0.1 of the host itself: only forwarding can.
        with pytest.raises(dns.exception.Timeout):
            in_netns(
                pin,
                lambda: dns.query.udp(
                    dns.message.make_query("example.test", "A"), "127.0.0.1", 0.3, upstream.port
                ),
            )
        run(scenario)
    finally:
        upstream.close()


def test_a_truncated_upstream_answer_is_asked_again_over_tcp(pins: Pins) -> None:
    pin = pins.make("a")
    upstream = FakeUpstream()

    async def scenario() -> None:
        resolver = edns.EmbeddedDns(upstreams=lambda: [upstream.address], timeout=TIMEOUT)
        try:
            await resolver.serve("a", pin, lookup)
            large = await asyncio.to_thread(ask_udp, pin, "big.test", use_edns=0, payload=4096)
            small = await asyncio.to_thread(ask_udp, pin, "big.test")
            tcp = await asyncio.to_thread(ask_tcp, pin, "big.test")
        finally:
            await resolver.close()

        assert len(addresses(large)) == BIG
        assert not large.flags & dns.flags.TC
        # A client taking 512 bytes gets TC and its question, and asks again over TCP.
        assert small.flags & dns.flags.TC
        assert small.answer == []
        assert len(addresses(tcp)) == BIG
        assert upstream.asked[:2] == [("udp", "big.test."), ("tcp", "big.test.")]

    try:
        run(scenario)
    finally:
        upstream.close()


def test_a_dead_or_failing_upstream_gives_way_to_the_next(pins: Pins) -> None:
    pin = pins.make("a")
    silent = silent_upstream()
    failing = FakeUpstream(servfail_all=True)
    upstream = FakeUpstream()
    order = [
        ("127.0.0.1", silent.getsockname()[1]),
        f"127.0.0.1:{closed_port()}",
        failing.address,
        upstream.address,
    ]

    async def scenario() -> None:
        resolver = edns.EmbeddedDns(upstreams=lambda: order, timeout=TIMEOUT)
        try:
            await resolver.serve("a", pin, lookup)
            started = time.monotonic()
            reply = await asyncio.to_thread(ask_udp, pin, "example.test")
            took = time.monotonic() - started
        finally:
            await resolver.close()

        assert addresses(reply) == ["192.0.2.1"]
        assert failing.asked == [("udp", "example.test.")]
        assert upstream.asked == [("udp", "example.test.")]
        assert took < 4 * TIMEOUT  # the dead ones cost their timeouts, not the client's 5 s

    try:
        run(scenario)
    finally:
        silent.close()
        failing.close()
        upstream.close()


def test_no_upstream_answering_is_servfail_and_the_upstreams_are_read_at_each_query(
    pins: Pins,
) -> None:
    pin = pins.make("a")
    silent = silent_upstream()
    upstream = FakeUpstream()
    current: list[edns.Upstream] = [("127.0.0.1", silent.getsockname()[1])]

    async def scenario() -> None:
        resolver = edns.EmbeddedDns(upstreams=lambda: current, timeout=TIMEOUT)
        try:
            await resolver.serve("a", pin, lookup)
            q = dns.message.make_query("example.test", "A")
            failed = await asyncio.to_thread(
                in_netns, pin, lambda: dns.query.udp(q, edns.LISTEN_ADDRESS, timeout=5)
            )
            failed_tcp = await asyncio.to_thread(ask_tcp, pin, "example.test")
            current[:] = [upstream.address]  # resolv.conf changed on the host
            later = await asyncio.to_thread(ask_udp, pin, "example.test")
            current[:] = []
            none = await asyncio.to_thread(ask_udp, pin, "example.test")
        finally:
            await resolver.close()

        assert failed.rcode() == dns.rcode.SERVFAIL
        assert failed.id == q.id
        assert failed.question == q.question
        assert failed_tcp.rcode() == dns.rcode.SERVFAIL
        assert addresses(later) == ["192.0.2.1"]
        assert none.rcode() == dns.rcode.SERVFAIL

    try:
        run(scenario)
    finally:
        silent.close()
        upstream.close()


def test_each_namespace_answers_from_its_own_table(pins: Pins) -> None:
    a, b = pins.make("a"), pins.make("b")

    def table(address: str) -> edns.Lookup:
        return lambda name: [IPv4Address(address)] if name == "peer" else []

    async def scenario() -> None:
        resolver = edns.EmbeddedDns(upstreams=list, timeout=TIMEOUT)
        try:
            await resolver.serve("a", a, table("10.0.0.1"))
            await resolver.serve("b", b, table("10.0.0.2"))
            from_a = await asyncio.to_thread(ask_udp, a, "peer")
            from_b = await asyncio.to_thread(ask_udp, b, "peer")
            await resolver.serve("a", a, table("10.0.0.3"))  # served again: the new table
            again = await asyncio.to_thread(ask_udp, a, "peer")
            assert resolver.serving() == ["a", "b"]
        finally:
            await resolver.close()

        assert addresses(from_a) == ["10.0.0.1"]
        assert addresses(from_b) == ["10.0.0.2"]
        assert addresses(again) == ["10.0.0.3"]
        assert resolver.serving() == []

    run(scenario)


def test_stop_leaves_nothing_listening_and_no_fd_open(pins: Pins) -> None:
    pin = pins.make("a")

    def nothing_listens() -> None:
        with pytest.raises(dns.exception.Timeout):
            dns.query.udp(dns.message.make_query("web", "A"), edns.LISTEN_ADDRESS, timeout=0.5)
        with pytest.raises(ConnectionRefusedError):
            dns.query.tcp(dns.message.make_query("web", "A"), edns.LISTEN_ADDRESS, timeout=2)

    def idle_tcp_client() -> socket.socket:
        return socket.create_connection((edns.LISTEN_ADDRESS, edns.DNS_PORT), timeout=5)

    async def scenario() -> None:
        resolver = edns.EmbeddedDns(upstreams=list, timeout=TIMEOUT)
        before = open_fds()
        await resolver.serve("a", pin, lookup)
        serving = open_fds()
        await resolver.serve("a", pin, lookup)  # idempotent: no second pair of sockets
        assert open_fds() == serving
        assert addresses(await asyncio.to_thread(ask_tcp, pin, "web")) == ["172.18.0.2"]
        client = await asyncio.to_thread(in_netns, pin, idle_tcp_client)  # still connected
        try:
            await asyncio.sleep(0.1)
            started = time.monotonic()
            await resolver.stop("a")
            assert time.monotonic() - started < 1  # the idle client does not hold it
            await resolver.stop("a")
            assert open_fds() == before + 1  # the client's own socket only
        finally:
            client.close()
        assert open_fds() == before
        await asyncio.to_thread(in_netns, pin, nothing_listens)
        await resolver.close()

    run(scenario)


def test_a_port_taken_in_the_namespace_fails_serve_and_leaks_nothing(pins: Pins) -> None:
    pin = pins.make("a")

    def take_tcp_53() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((edns.LISTEN_ADDRESS, edns.DNS_PORT))
        sock.listen(1)
        return sock

    async def scenario() -> None:
        resolver = edns.EmbeddedDns(upstreams=list, timeout=TIMEOUT)
        before = open_fds()
        with pytest.raises(OSError, match="Address already in use"):
            await resolver.serve("a", pin, lookup)  # the UDP socket was made: it is closed
        assert open_fds() == before
        assert resolver.serving() == []

    taken = in_netns(pin, take_tcp_53)
    try:
        run(scenario)
    finally:
        taken.close()


def test_serving_a_missing_pin_is_an_error() -> None:
    async def scenario() -> None:
        resolver = edns.EmbeddedDns(upstreams=list, timeout=TIMEOUT)
        with pytest.raises(FileNotFoundError):
            await resolver.serve("gone", Path("/nonexistent/netns/gone"), lookup)
        assert resolver.serving() == []

    run(scenario)


def test_ptr_for_a_known_address_over_the_wire(pins: Pins) -> None:
    pin = pins.make("a")
    names = {IPv4Address("172.18.0.2"): "web.front"}

    async def scenario() -> None:
        resolver = edns.EmbeddedDns(upstreams=list, timeout=TIMEOUT)
        try:
            await resolver.serve("a", pin, lookup, names.get)
            reply = await asyncio.to_thread(ask_udp, pin, "2.0.18.172.in-addr.arpa", "PTR")
        finally:
            await resolver.close()

        assert addresses(reply) == ["web.front."]

    run(scenario)


def test_a_slow_forward_holds_no_other_query_and_too_many_get_servfail_at_once(
    pins: Pins, monkeypatch: pytest.MonkeyPatch
) -> None:
    pin = pins.make("a")
    silent = silent_upstream()
    monkeypatch.setattr(edns, "MAX_IN_FLIGHT", 2)

    def queries() -> tuple[dns.message.Message, dns.message.Message, int]:
        slow = dns.message.make_query("example.test", "A")
        local = dns.message.make_query("web", "A")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(1.5)
            s.sendto(slow.to_wire(), (edns.LISTEN_ADDRESS, edns.DNS_PORT))
            s.sendto(local.to_wire(), (edns.LISTEN_ADDRESS, edns.DNS_PORT))
            first = dns.message.from_wire(s.recv(65535))
            # Two slow ones in flight now, the limit here: the next query is refused at once.
            s.sendto(slow.to_wire(), (edns.LISTEN_ADDRESS, edns.DNS_PORT))
            time.sleep(0.1)
            s.sendto(local.to_wire(), (edns.LISTEN_ADDRESS, edns.DNS_PORT))
            busy = dns.message.from_wire(s.recv(65535))
        return first, busy, local.id

    async def scenario() -> None:
        resolver = edns.EmbeddedDns(
            upstreams=lambda: [("127.0.0.1", silent.getsockname()[1])], timeout=3
        )
        try:
            await resolver.serve("a", pin, lookup)
            first, busy, local_id = await asyncio.to_thread(in_netns, pin, queries)
        finally:
            await resolver.close()  # cancels the forwards still waiting on the silent one

        assert (first.id, first.rcode(), addresses(first)) == (local_id, 0, ["172.18.0.2"])
        assert (busy.id, busy.rcode(), busy.answer) == (local_id, dns.rcode.SERVFAIL, [])

    try:
        run(scenario)
    finally:
        silent.close()


def test_a_failing_lookup_or_upstream_list_is_servfail_and_the_listener_goes_on(
    pins: Pins,
) -> None:
    pin = pins.make("a")

    def broken_lookup(name: str) -> Sequence[IPv4Address]:
        if name == "boom":
            raise RuntimeError("table bug")
        return lookup(name)

    def broken_upstreams() -> Sequence[edns.Upstream]:
        raise PermissionError("resolv.conf")

    async def scenario() -> None:
        resolver = edns.EmbeddedDns(upstreams=broken_upstreams, timeout=TIMEOUT)
        try:
            await resolver.serve("a", pin, broken_lookup)
            boom = await asyncio.to_thread(ask_udp, pin, "boom")
            forwarded = await asyncio.to_thread(ask_tcp, pin, "example.test")
            web = await asyncio.to_thread(ask_udp, pin, "web")
        finally:
            await resolver.close()

        assert boom.rcode() == dns.rcode.SERVFAIL
        assert forwarded.rcode() == dns.rcode.SERVFAIL
        assert addresses(web) == ["172.18.0.2"]

    run(scenario)


def test_serving_a_key_from_another_pin_moves_its_listener(pins: Pins) -> None:
    a, b = pins.make("a"), pins.make("b")

    def silent_here() -> None:
        with pytest.raises(dns.exception.Timeout):
            dns.query.udp(dns.message.make_query("web", "A"), edns.LISTEN_ADDRESS, timeout=0.5)

    async def scenario() -> None:
        resolver = edns.EmbeddedDns(upstreams=list, timeout=TIMEOUT)
        try:
            await resolver.serve("c", a, lookup)
            before = open_fds()
            await resolver.serve("c", b, lookup)  # the container's namespace was made again
            assert open_fds() == before
            web = await asyncio.to_thread(ask_udp, b, "web")
            await asyncio.to_thread(in_netns, a, silent_here)
        finally:
            await resolver.close()

        assert addresses(web) == ["172.18.0.2"]

    run(scenario)
