"""ctrd's embedded DNS resolver: container names answered inside each container's network.

What it owns: for each networked container, a listener at 127.0.0.11:53, UDP and TCP, inside
that container's network namespace; the answers for the names ctrd knows (the caller's `lookup`)
and the forwarding of every other query to the host's resolvers.

Design:
- Per-container sockets, made in the container's namespace and served by the daemon's event
  loop. A socket belongs for its whole life to the network namespace of the thread that made
  it, so a short-lived thread joins the namespace (setns on the fd of its pin file), makes and
  binds the two sockets, and ends; the loop, in the host's namespace, then reads and writes
  them like any other. No process in the container, no iptables redirection, no route: the
  container reaches its resolver over its own `lo`, whatever its network's routes and firewall
  (`--internal` networks included), and only its own queries reach its listener, so `lookup`
  can be per container.
- 127.0.0.11, docker's address: inside 127.0.0.0/8, which every namespace's `lo` owns once it is
  up, so there is nothing to configure and no address taken from a network's subnet; images
  made for docker expect it there. Port 53 is bound directly (the daemon is root).
- Forwarded from the host's namespace: a query for a name `lookup` does not know (single-label
  ones too, as docker does) is sent from a socket the loop makes in the host's namespace to the
  resolvers of the host's /etc/resolv.conf, read at each query. Loopback resolvers
  (systemd-resolved's 127.0.0.53, a local dnsmasq) are kept: the container could never reach
  them itself, the daemon can. UDP first, TCP again when the answer is truncated (TCP at once
  for a client that asked over TCP); the next resolver on a timeout, an error, SERVFAIL or
  REFUSED; SERVFAIL when none answers. The query's id and question are kept, and the answer
  goes to the address the query came from, cut to header and question with TC set when it is
  larger than the client's UDP payload (the client then asks again over TCP).
- Local answers: A for a known name (TTL 600, as docker's records), its addresses in a new
  order each time (dnspython shuffles an rrset as it renders it: round robin between the
  containers behind an alias, as docker shuffles); AAAA for a known name is NOERROR with no
  records (the name exists; it has no IPv6 address); PTR from the optional `reverse`.
  Everything else is forwarded.

Invariants: every socket, connection and task of a listener is closed or cancelled, and
waited for, by `stop` (all listeners' by `close`); a failed `serve` leaves nothing open; the
threads that join namespaces make the sockets there, end, and run nothing else. Nothing on
the event loop blocks but reading resolv.conf (a small local file) and `lookup`, which is
synchronous and must be cheap (an in-memory table).

Limits:
- The resolver lives in the daemon: while ctrd is down (a restart), names stop resolving in
  running containers until the daemon serves their namespaces again. docker's embedded DNS has
  the same property (it lives in dockerd).
- A namespace is served once, under one key: two keys for the same pin would fight over the
  port (the second gets EADDRINUSE).
- At most MAX_IN_FLIGHT queries are answered at once per container (forwards wait on the
  network); more get SERVFAIL at once. A TCP client idle for TCP_IDLE seconds is disconnected.
- IPv4 records only.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable, Coroutine, Sequence
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, cast

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.reversename
import dns.rrset
import structlog

from supervisor.network.netns import run_in

Lookup = Callable[[str], Sequence[IPv4Address]]
"""A name (lowercase, no trailing dot) -> its addresses; [] when the name is not ctrd's."""
Reverse = Callable[[IPv4Address], str | None]
"""An address -> the name a PTR query for it answers (no trailing dot); None when not ctrd's."""
Upstream = str | tuple[str, int]
"""A resolver: "1.2.3.4", "1.2.3.4:5353", "::1", "[::1]:5353", or a (host, port) pair."""
Upstreams = Callable[[], Sequence[Upstream]]

LISTEN_ADDRESS = "127.0.0.11"
DNS_PORT = 53
TTL = 600
DEFAULT_TIMEOUT = 2.0  # per resolver; a glibc client waits 5 s before it asks again
MAX_IN_FLIGHT = 100  # per container, as docker's limit on concurrent external queries
TCP_IDLE = 10.0
TCP_BACKLOG = 64
RESOLV_CONF = Path("/etc/resolv.conf")
LOCAL_DEFAULT = "127.0.0.1"  # resolv.conf(5): no nameserver line means the local machine's

_UDP_MIN = 512
_TCP_MAX = 65535
_NEXT_RESOLVER = (dns.rcode.SERVFAIL, dns.rcode.REFUSED)
_REVERSE_V4 = dns.name.from_text("in-addr.arpa.")

log = structlog.get_logger("ctrd.dns")


# --- upstreams (pure but for reading the file) -----------------------------------------------


def upstreams_in(resolv_conf_text: str) -> list[str]:
    """The `nameserver` addresses of a resolv.conf, in order, loopback ones kept.

    Lines that are not an IP address are skipped; with none left, the local machine's resolver
    (127.0.0.1), as resolv.conf(5) and glibc have it.
    """
    found: list[str] = []
    for line in resolv_conf_text.splitlines():
        words = line.split()
        if len(words) < 2 or words[0] != "nameserver":
            continue
        try:
            ipaddress.ip_address(words[1].split("%")[0])
        except ValueError:
            continue
        found.append(words[1])
    return found or [LOCAL_DEFAULT]


def host_upstreams(resolv_conf: Path = RESOLV_CONF) -> list[str]:
    """The host's resolvers now (`upstreams_in` of `resolv_conf`; no file: 127.0.0.1)."""
    try:
        text = resolv_conf.read_text(encoding="utf-8", errors="replace")
    except OSError:  # missing or unreadable: glibc then asks the local machine too
        text = ""
    return upstreams_in(text)


def upstream_address(upstream: Upstream) -> tuple[str, int]:
    """(host, port) of a resolver: an address, `v4:port`, `[v6]:port`, or a pair; ValueError."""
    if isinstance(upstream, tuple):
        host, port = upstream
    elif upstream.startswith("["):
        host, sep, rest = upstream[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"bad resolver {upstream!r}")
        port = int(rest[1:]) if rest else DNS_PORT
    elif upstream.count(":") == 1:
        host, _, port_text = upstream.partition(":")
        port = int(port_text)
    else:
        host, port = upstream, DNS_PORT
    ipaddress.ip_address(host.split("%")[0])
    if not 0 < port < 65536:
        raise ValueError(f"bad port in resolver {upstream!r}")
    return host, port


# --- answers (pure) ---------------------------------------------------------------------------


def parse_query(wire: bytes) -> dns.message.Message | bytes | None:
    """A query from a client; or the wire of the error to answer at once; or None: drop it.

    Not a query (QR set), or too short to carry an id: dropped. Unparsable, several questions:
    FORMERR. An opcode other than QUERY: NOTIMP.
    """
    try:
        query = dns.message.from_wire(wire)
    except dns.exception.DNSException:
        return _header_error(wire, dns.rcode.FORMERR)
    if query.flags & dns.flags.QR:
        return None
    if query.opcode() != dns.opcode.QUERY:
        return _header_error(wire, dns.rcode.NOTIMP)
    if len(query.question) != 1:
        return _header_error(wire, dns.rcode.FORMERR)
    return query


def _header_error(wire: bytes, rcode: dns.rcode.Rcode) -> bytes | None:
    if len(wire) < 12 or wire[2] & 0x80:
        return None
    flags = int.from_bytes(wire[2:4], "big")
    reply = dns.message.Message(id=int.from_bytes(wire[:2], "big"))
    reply.flags = dns.flags.QR | dns.flags.RA | (flags & dns.flags.RD)
    reply.set_opcode(dns.opcode.from_flags(flags))
    reply.set_rcode(rcode)
    return reply.to_wire()


def local_answer(
    query: dns.message.Message, lookup: Lookup, reverse: Reverse | None = None
) -> dns.message.Message | None:
    """The answer ctrd gives itself to `query` (one question), or None: forward it.

    A for a name `lookup` knows: its addresses, TTL 600. AAAA for such a name: NOERROR, no
    records. PTR for an address `reverse` names: that name.
    """
    question = query.question[0]
    if question.rdclass != dns.rdataclass.IN:
        return None
    if question.rdtype == dns.rdatatype.PTR:
        return _ptr_answer(query, reverse) if reverse is not None else None
    if question.rdtype not in (dns.rdatatype.A, dns.rdatatype.AAAA):
        return None
    name = lookup_name(question.name)
    addresses = lookup(name) if name else []
    if not addresses:
        return None
    reply = dns.message.make_response(query, recursion_available=True)
    if question.rdtype == dns.rdatatype.A:
        texts = [str(a) for a in addresses]
        reply.answer.append(
            dns.rrset.from_text_list(question.name, TTL, dns.rdataclass.IN, "A", texts)
        )
    return reply


def lookup_name(name: dns.name.Name) -> str:
    """The name as `lookup` takes it: lowercase, no trailing dot ('' for the root)."""
    if name == dns.name.root:
        return ""
    return name.to_text(omit_final_dot=True).lower()


def _ptr_answer(query: dns.message.Message, reverse: Reverse) -> dns.message.Message | None:
    qname = query.question[0].name
    if not qname.is_subdomain(_REVERSE_V4) or len(qname) != 7:  # 4 octets, in-addr, arpa, root
        return None
    try:
        address = ipaddress.ip_address(dns.reversename.to_address(qname))
    except (dns.exception.DNSException, ValueError):
        return None
    if not isinstance(address, IPv4Address):
        return None
    target = reverse(address)
    if not target:
        return None
    reply = dns.message.make_response(query, recursion_available=True)
    ptr = dns.name.from_text(target.rstrip(".") + ".")
    reply.answer.append(dns.rrset.from_text(qname, TTL, dns.rdataclass.IN, "PTR", ptr.to_text()))
    return reply


def error_answer(query: dns.message.Message, rcode: dns.rcode.Rcode) -> dns.message.Message:
    reply = dns.message.make_response(query, recursion_available=True)
    reply.set_rcode(rcode)
    return reply


def udp_limit(query: dns.message.Message) -> int:
    """The largest answer a UDP client takes: its EDNS payload, else 512."""
    return max(_UDP_MIN, min(query.payload, _TCP_MAX)) if query.edns >= 0 else _UDP_MIN


def render(reply: dns.message.Message, query: dns.message.Message, tcp: bool) -> bytes:
    """`reply` as wire for this client; over UDP cut to header and question with TC when large."""
    limit = _TCP_MAX if tcp else udp_limit(query)
    try:
        return reply.to_wire(max_size=limit)
    except dns.exception.TooBig:
        cut = error_answer(query, reply.rcode())
        cut.flags = reply.flags | dns.flags.TC
        return cut.to_wire(max_size=limit)


# --- forwarding --------------------------------------------------------------------------------


class Forwarder:
    """Asks the host's resolvers, in order, from the host's network namespace."""

    def __init__(self, upstreams: Upstreams, timeout: float) -> None:
        self._upstreams = upstreams
        self._timeout = timeout

    async def resolve(self, query: dns.message.Message, tcp: bool) -> dns.message.Message:
        for upstream in self._upstreams():
            try:
                host, port = upstream_address(upstream)
                reply = await self._ask(query, host, port, tcp)
            except (dns.exception.DNSException, OSError, EOFError, ValueError) as e:
                log.debug("dns_upstream_failed", upstream=str(upstream), error=repr(e))
                continue
            if reply.rcode() in _NEXT_RESOLVER:
                continue
            return reply
        return error_answer(query, dns.rcode.SERVFAIL)

    async def _ask(
        self, query: dns.message.Message, host: str, port: int, tcp: bool
    ) -> dns.message.Message:
        if not tcp:
            try:
                return await dns.asyncquery.udp(
                    query,
                    host,
                    timeout=self._timeout,
                    port=port,
                    ignore_unexpected=True,
                    raise_on_truncation=True,
                )
            except dns.message.Truncated:
                pass
        return await dns.asyncquery.tcp(query, host, timeout=self._timeout, port=port)


# --- the listeners ---------------------------------------------------------------------------


class _Listener(asyncio.DatagramProtocol):
    """One container's resolver: its two sockets and the tasks answering on them."""

    def __init__(
        self, pin: Path, lookup: Lookup, reverse: Reverse | None, forwarder: Forwarder
    ) -> None:
        self.pin = pin
        self.lookup = lookup
        self.reverse = reverse
        self._forwarder = forwarder
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._udp_lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def start(self, udp: socket.socket, tcp: socket.socket) -> None:
        """Serve the two sockets; on failure they are closed."""
        loop = asyncio.get_running_loop()
        try:
            await loop.create_datagram_endpoint(lambda: self, sock=udp)
        except BaseException:
            udp.close()
            tcp.close()
            raise
        try:
            self._tcp = await asyncio.start_server(self._serve_tcp, sock=tcp)
        except BaseException:
            tcp.close()
            await self.close()
            raise

    async def close(self) -> None:
        """Close both sockets and every connection, cancel what is in flight; wait for all."""
        if self._udp is not None:
            self._udp.abort()
        if self._tcp is not None:
            self._tcp.close()
        for writer in list(self._writers):
            writer.transport.abort()  # a client that reads nothing must not hold the close
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._tcp is not None:
            await self._tcp.wait_closed()
        if self._udp is not None:
            await self._udp_lost  # the socket is closed once the transport says it is lost

    # UDP (asyncio.DatagramProtocol)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's selector transport for datagrams does not derive from DatagramTransport
        # (Python 3.11), though it is one.
        self._udp = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if len(self._tasks) < MAX_IN_FLIGHT:
            self._spawn(self._answer_datagram(data, addr))
        elif self._udp is not None:
            wire = _busy(data)
            if wire is not None:
                self._udp.sendto(wire, addr)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._udp_lost.done():
            self._udp_lost.set_result(None)

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error for an answer to a client gone: nothing to do

    async def _answer_datagram(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        wire = await self._answer(data, tcp=False)
        if wire is not None and self._udp is not None and not self._udp.is_closing():
            self._udp.sendto(wire, addr)

    # TCP: two-byte length frames, several queries per connection, answered in order

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None or len(self._tasks) >= MAX_IN_FLIGHT:
            writer.close()
            return
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            while True:
                async with asyncio.timeout(TCP_IDLE):
                    size = int.from_bytes(await reader.readexactly(2), "big")
                    data = await reader.readexactly(size)
                wire = await self._answer(data, tcp=True)
                if wire is None:
                    break
                writer.write(len(wire).to_bytes(2, "big") + wire)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)
            await _closed(writer)

    # both

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, data: bytes, tcp: bool) -> bytes | None:
        """The wire to send back for `data`, or None.

        Whatever fails, the client gets SERVFAIL: a bug in `lookup`, in the upstreams' callable
        or in dnspython must not leave it waiting out its timeout, nor end the listener.
        """
        parsed = parse_query(data)
        if not isinstance(parsed, dns.message.Message):
            return parsed
        try:
            reply = local_answer(parsed, self.lookup, self.reverse)
            if reply is None:
                reply = await self._forwarder.resolve(parsed, tcp)
            return render(reply, parsed, tcp)
        except Exception as e:
            log.warning("dns_answer_failed", error=repr(e))
            return render(error_answer(parsed, dns.rcode.SERVFAIL), parsed, tcp)


def _busy(data: bytes) -> bytes | None:
    """The answer to a query that comes when too many are in flight: SERVFAIL, at once."""
    parsed = parse_query(data)
    if not isinstance(parsed, dns.message.Message):
        return parsed
    return render(error_answer(parsed, dns.rcode.SERVFAIL), parsed, tcp=False)


async def _closed(writer: asyncio.StreamWriter) -> None:
    """Close a client's connection and wait until its socket is; a stuck one is aborted."""
    writer.close()
    try:
        async with asyncio.timeout(TCP_IDLE):
            await writer.wait_closed()
    except TimeoutError:
        writer.transport.abort()
    except OSError:
        pass


class EmbeddedDns:
    """The daemon's resolvers, one per served key (a container), each in its own namespace."""

    def __init__(
        self, upstreams: Upstreams = host_upstreams, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self._forwarder = Forwarder(upstreams, timeout)
        self._listeners: dict[str, _Listener] = {}
        self._lock = asyncio.Lock()

    def serving(self) -> list[str]:
        """The keys served now."""
        return sorted(self._listeners)

    async def serve(
        self, key: str, pin: Path, lookup: Lookup, reverse: Reverse | None = None
    ) -> None:
        """Answer at 127.0.0.11:53 inside the namespace pinned at `pin`.

        Its `lo` must be up for queries to arrive (netlink.attach_endpoint brings it up); while
        it is down, whether the bind fails depends on the kernel (6.18 binds, and a client's
        send fails with ENETUNREACH), so no error here is no proof that `lo` is up.

        Idempotent per key: served already from the same pin, only `lookup` and `reverse` are
        replaced; from another pin, the old listener is stopped first. OSError when the
        sockets cannot be made (no such pin, the port taken); nothing is left open then.
        """
        async with self._lock:
            current = self._listeners.get(key)
            if current is not None and current.pin == pin:
                current.lookup, current.reverse = lookup, reverse
                return
            if current is not None:
                del self._listeners[key]
                await current.close()
            udp, tcp = await _sockets_in(pin)
            listener = _Listener(pin, lookup, reverse, self._forwarder)
            await listener.start(udp, tcp)
            self._listeners[key] = listener

    async def stop(self, key: str) -> None:
        """Close the listener of `key` and everything it had open; not served: nothing."""
        async with self._lock:
            listener = self._listeners.pop(key, None)
            if listener is not None:
                await listener.close()

    async def close(self) -> None:
        """Stop every listener."""
        async with self._lock:
            listeners = list(self._listeners.values())
            self._listeners.clear()
            for listener in listeners:
                await listener.close()


# --- sockets inside a namespace --------------------------------------------------------------


async def _sockets_in(pin: Path) -> tuple[socket.socket, socket.socket]:
    """The UDP and TCP sockets bound to 127.0.0.11:53 in the namespace pinned at `pin`.

    Made on a thread of their own (`open_sockets_in`); when the caller is cancelled meanwhile,
    the sockets the thread still makes are closed, not leaked.
    """
    made = asyncio.ensure_future(asyncio.to_thread(open_sockets_in, pin))
    try:
        return await asyncio.shield(made)
    except asyncio.CancelledError:
        made.add_done_callback(_close_made)
        raise


def _close_made(made: asyncio.Future[tuple[socket.socket, socket.socket]]) -> None:
    if not made.cancelled() and made.exception() is None:
        for sock in made.result():
            sock.close()


def open_sockets_in(
    pin: Path, address: str = LISTEN_ADDRESS, port: int = DNS_PORT
) -> tuple[socket.socket, socket.socket]:
    """Blocking: bound, non-blocking UDP and listening TCP sockets in `pin`'s namespace.

    A new thread joins the namespace, makes them and ends there; the caller's thread never
    changes namespace (a pool thread that did would take the namespace to its next work).
    """

    def make() -> tuple[socket.socket, socket.socket]:
        udp = _bound(socket.SOCK_DGRAM, address, port)
        try:
            return udp, _bound(socket.SOCK_STREAM, address, port)
        except BaseException:
            udp.close()
            raise

    return run_in(pin, make, name="dns-netns")


def _bound(kind: int, address: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, kind)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(TCP_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
