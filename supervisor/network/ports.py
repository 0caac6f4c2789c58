"""Published ports: docker's `-p` syntax, the host ports the daemon holds, stale UDP flows.

Three parts, each usable alone:

- `supervisor.network.portspec.parse_publish` (pure, a module of its own so that the CLI can
  import it alone) reads one `-p` value with the rules and the error words of docker's
  `nat.ParsePortSpec` (go-connections v0.4, the one docker 20.10 uses):
  `[ip:][hostPort[-end]:]containerPort[-end][/proto]`, `ip::containerPort`, `[ip]` brackets.
  A container range maps port for port onto a host range of the same length; a single container
  port with a host range asks for one free port of that range; no host port (or host port 0)
  asks for any free one. Stricter than docker where docker silently ignores text (`80-81-82`,
  `80/tcp/x`) or accepts what ctrd cannot serve: container port 0, an IPv6 host address (ctrd
  publishes on IPv4 only) and sctp (ctrd's firewall has no sctp rules) are refused.
- `PortReservations` holds one bound socket per published (proto, host ip, host port), as
  docker's port allocator and docker-proxy do: while the daemon holds the socket no other
  program can take the port, and a port that is taken fails the publish at once, with docker's
  words, before any container starts. The kernel is the only arbiter: a wildcard and a specific
  address on the same port conflict exactly when the kernel says so, between ctrd's own
  endpoints as well as against other programs.
- `flush_udp_conntrack` deletes the conntrack entries of a UDP host port when its publish goes
  away: UDP has no end, so a client that keeps sending keeps its old entry (and its old DNAT to
  a container that is gone) alive forever unless someone deletes it (docker does the same).

Sockets are opened close-on-exec (Python's default), so shims and runc never inherit them.
Nothing here touches the firewall: the DNAT rules are `supervisor.network.nft`'s.
"""

from __future__ import annotations

import errno
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address

from supervisor.errors import FailedPrecondition
from supervisor.network.portspec import PortRequest, Proto

# A UDP socket held only to reserve its port is never read: datagrams that reach it (none do
# once the DNAT rule is in place) are dropped once this small buffer is full.
_UDP_RCVBUF = 1


@dataclass(frozen=True)
class PortBinding:
    """A host port held for a container: `host_port` is the actual one (never 0)."""

    proto: Proto
    host_ip: IPv4Address | None
    host_port: int
    container_port: int


@dataclass(frozen=True)
class PortFailure:
    """A binding `PortReservations.restore` could not take back, and why (docker's words)."""

    binding: PortBinding
    reason: str


# --- reservations (bound sockets) ------------------------------------------------------------


def shown_ip(host_ip: IPv4Address | None) -> str:
    """The host address as docker shows it: 0.0.0.0 for every address."""
    return "0.0.0.0" if host_ip is None else str(host_ip)


@dataclass(frozen=True)
class _Held:
    binding: PortBinding
    sock: socket.socket


class PortReservations:
    """The host ports the daemon holds, per owner (an endpoint or a container, the caller's key).

    TCP sockets are bound and deliberately not listening. The DNAT rule turns every packet for
    a published port towards the container before it reaches local delivery, so the socket
    never sees traffic; its only job is to own the port. A listening socket would turn any
    connection that escapes the DNAT (before the rule is in place, or a path the rule does not
    cover) into a handshake that completes and then hangs in a backlog nobody accepts from;
    a bound-only socket answers it with a reset, as a closed port does. Bound without
    SO_REUSEADDR, it still keeps every other bind of the port out, listening or not, on the
    same address, the wildcard or a specific one (the kernel's own conflict rules).

    UDP sockets are bound the same way, with the smallest receive buffer (they are never read).

    Every method is synchronous, only does socket calls and is safe from any thread.
    """

    def __init__(self) -> None:
        self._held: dict[str, list[_Held]] = {}
        self._lock = threading.Lock()

    def reserve(self, owner: str, requests: Iterable[PortRequest]) -> list[PortBinding]:
        """Bind every request for `owner`, all or nothing, and return the actual bindings.

        A port that is taken (by another program or another owner) raises `FailedPrecondition`
        with docker's words, `Bind for 0.0.0.0:8080 failed: port is already allocated`, after
        closing whatever this call had bound.
        """
        bound: list[_Held] = []
        try:
            # one at a time, so that `bound` always has whatever is open to close
            for request in requests:
                bound.append(_reserve_one(request))  # noqa: PERF401
        except BaseException:
            for held in bound:
                held.sock.close()
            raise
        with self._lock:
            self._held.setdefault(owner, []).extend(bound)
        return [held.binding for held in bound]

    def restore(self, owner: str, bindings: Iterable[PortBinding]) -> list[PortFailure]:
        """Bind again, at daemon start, the exact ports the store recorded for `owner`.

        Not all or nothing: what can be held is held, and each port that someone else took
        meanwhile is returned as a failure instead of raised. Ports `owner` holds already are
        left as they are, so restoring twice is harmless.
        """
        failures: list[PortFailure] = []
        with self._lock:
            held = self._held.setdefault(owner, [])
            have = {_key(h.binding) for h in held}
            for binding in bindings:
                if _key(binding) in have:
                    continue
                try:
                    sock = _bind(binding.proto, binding.host_ip, binding.host_port)
                except FailedPrecondition as e:
                    failures.append(PortFailure(binding, e.detail))
                    continue
                held.append(_Held(binding, sock))
                have.add(_key(binding))
            if not held:
                del self._held[owner]
        return failures

    def release(self, owner: str) -> list[PortBinding]:
        """Close every port `owner` holds; returns what was released (nothing: no error)."""
        with self._lock:
            held = self._held.pop(owner, [])
        for h in held:
            h.sock.close()
        return [h.binding for h in held]

    def bindings(self, owner: str) -> list[PortBinding]:
        with self._lock:
            return [h.binding for h in self._held.get(owner, [])]

    def owners(self) -> list[str]:
        with self._lock:
            return sorted(self._held)

    def close(self) -> None:
        """Release every owner's ports (daemon shutdown)."""
        for owner in self.owners():
            self.release(owner)


def _key(binding: PortBinding) -> tuple[str, IPv4Address | None, int]:
    return binding.proto, binding.host_ip, binding.host_port


def _reserve_one(request: PortRequest) -> _Held:
    if request.host_port_end > request.host_port:
        return _reserve_in_range(request)
    sock = _bind(request.proto, request.host_ip, request.host_port)
    return _Held(_binding(request, sock.getsockname()[1]), sock)


def _reserve_in_range(request: PortRequest) -> _Held:
    """The first free port of the request's range, tried in order."""
    for port in range(request.host_port, request.host_port_end + 1):
        try:
            sock = _bind(request.proto, request.host_ip, port)
        except _PortTaken:
            continue
        return _Held(_binding(request, port), sock)
    where = f"{shown_ip(request.host_ip)}:{request.host_port}-{request.host_port_end}"
    raise FailedPrecondition(f"Bind for {where} failed: all ports are allocated", plain=True)


def _binding(request: PortRequest, port: int) -> PortBinding:
    return PortBinding(request.proto, request.host_ip, port, request.container_port)


class _PortTaken(FailedPrecondition):
    """The address is in use: docker's "port is already allocated"."""


def _bind(proto: Proto, host_ip: IPv4Address | None, port: int) -> socket.socket:
    """A socket of `proto` bound to `host_ip:port` (port 0: the kernel picks a free one)."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(socket.AF_INET, kind)
    try:
        if proto == "udp":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _UDP_RCVBUF)
        sock.bind((shown_ip(host_ip), port))
    except OSError as e:
        sock.close()
        raise _bind_error(host_ip, port, e) from None
    except BaseException:
        sock.close()
        raise
    return sock


def _bind_error(host_ip: IPv4Address | None, port: int, e: OSError) -> FailedPrecondition:
    if port == 0:
        where = f"{shown_ip(host_ip)}:0"
        if e.errno == errno.EADDRINUSE:
            return FailedPrecondition(
                f"Bind for {where} failed: all ports are allocated", plain=True
            )
        return FailedPrecondition(f"Bind for {where} failed: {e.strerror}", plain=True)
    where = f"{shown_ip(host_ip)}:{port}"
    if e.errno == errno.EADDRINUSE:
        return _PortTaken(f"Bind for {where} failed: port is already allocated", plain=True)
    # EADDRNOTAVAIL (an address this host does not have), EACCES, EMFILE...
    return FailedPrecondition(f"Bind for {where} failed: {e.strerror}", plain=True)


# --- conntrack --------------------------------------------------------------------------------


def flush_udp_conntrack(host_port: int, host_ip: IPv4Address | None = None) -> int:
    """Delete the UDP conntrack entries whose original destination is `host_port` (on `host_ip`
    when given); returns how many went. Blocking: run it on a worker thread.

    Works on the conntrack table of the calling thread's network namespace. An entry that
    disappears between the dump and the delete (it expired) is not an error.
    """
    # imported here: parsing and reserving must not load netlink (Tasks.Create reads labels)
    from pyroute2 import Conntrack
    from pyroute2.netlink.exceptions import NetlinkError
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

    wanted = NFCTAttrTuple(
        proto=socket.IPPROTO_UDP,
        dport=host_port,
        daddr=None if host_ip is None else str(host_ip),
    )
    deleted = 0
    with Conntrack() as ct:
        # the kernel filters the dump (5.8+); the check below keeps older kernels right too
        entries = list(ct.dump_entries(tuple_orig=wanted))
        for entry in entries:
            if not _matches(entry.tuple_orig, host_port, host_ip):
                continue
            try:
                ct.entry("del", tuple_orig=entry.tuple_orig)
            except NetlinkError as e:
                if e.code != errno.ENOENT:
                    raise
                continue
            deleted += 1
    return deleted


def _matches(tuple_orig: object, host_port: int, host_ip: IPv4Address | None) -> bool:
    proto = getattr(tuple_orig, "proto", None)
    dport = getattr(tuple_orig, "dport", None)
    daddr = getattr(tuple_orig, "daddr", None)
    if proto != socket.IPPROTO_UDP or dport != host_port:
        return False
    return host_ip is None or daddr == str(host_ip)
