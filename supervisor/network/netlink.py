"""The kernel side of ctrd's bridge networks: bridges, namespace pins and veth endpoints.

A thin I/O shell over netlink (pyroute2, in-process, no `ip` command) and a few /proc files.
A start's requests go through `_Rtnl` (pyroute2's messages on a plain socket, ~7x cheaper a
call than its `IPRoute`); the rest through `IPRoute`.
Every function blocks: the daemon calls them on a worker thread (`asyncio.to_thread`), never on
the event loop. Each is idempotent where the kernel lets it be, so that a retry after a crash
converges on the same state: creating what exists is not an error, removing what is gone is not
an error.

Invariants kept here:
- the calling thread never changes network namespace. Work inside a container's namespace runs
  on a short-lived thread that joins it (setns) and opens its netlink socket there
  (`_in_netns`); pyroute2's `IPRoute(netns=path)` is not used: it forks a helper, and a fork of
  the daemon (gRPC's threads running) died with SIGSEGV. The one `unshare` (in
  `pin_new_namespaces`: a network namespace for ctrd's networks, a pod's net, ipc and uts for
  the CRI) likewise runs on a thread of its own that exits with the namespaces pinned.
- a namespace pin is a bind mount of an nsfs file onto a file in a directory that is a shared
  mount of itself (iproute2's layout for /run/netns, under ctrd's own state dir), so that an
  unmount reaches copies made in other mount namespaces.
- host interface names are at most 15 bytes (IFNAMSIZ).

Left to the caller: `net.ipv4.ip_forward` (a host-wide switch the daemon turns on once, when the
first network that routes out is created), firewall rules, IPAM.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import ipaddress
import os
import socket
import struct
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NLMSG_ERROR
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_GETLINK, RTM_NEWADDR, RTM_NEWLINK, RTM_NEWROUTE
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from supervisor.network import netns

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
T = TypeVar("T")

IFNAMSIZ = 15
CONTAINER_IFNAME = "eth0"
DEFAULT_MTU = 1500
RESOLV_CONF = Path("/etc/resolv.conf")

_CLONE_NEWNET = 0x40000000
_CLONE_FLAGS = {"net": _CLONE_NEWNET, "ipc": 0x08000000, "uts": 0x04000000}
_MS_BIND = 4096
_MS_REC = 16384
_MS_SHARED = 1 << 20
_MNT_DETACH = 2
_SCOPE_LINK = 253
_MAIN_TABLE = 254
_BRPORT_HAIRPIN = 1
_IFF_UP = 1
_LOOPBACK_INDEX = 1  # the kernel gives every namespace's `lo` index 1
_RTPROT_STATIC = 4
_RT_SCOPE_UNIVERSE = 0
_RTN_UNICAST = 1
_RECV_BUFFER = 65536

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def host_ifname(endpoint_id: str) -> str:
    """The host end's name for an endpoint: `veth` + 7 hex of a hash of its id (11 bytes).

    Derived, not random, so a retry after a crash finds the link the first attempt made.
    """
    return "veth" + hashlib.sha256(endpoint_id.encode()).hexdigest()[:7]


# --- bridges ---------------------------------------------------------------------------------


def ensure_bridge(name: str, gateway_cidr: str, mtu: int) -> int:
    """Create (or find) bridge `name` with address `gateway_cidr` and `mtu`, up; its index.

    rp_filter on the bridge is set loose (2): strict filtering drops the asymmetric traffic of
    containers on several networks.
    """
    _check_ifname(name)
    gateway = ipaddress.ip_interface(gateway_cidr)
    with IPRoute() as ipr:
        index = _lookup(ipr, name)
        if index is None:
            _tolerate(errno.EEXIST, ipr.link, "add", ifname=name, kind="bridge")
            index = _require(ipr, name)
        _address_up(ipr, index, gateway, mtu)
    _write_sysctl(f"/proc/sys/net/ipv4/conf/{name}/rp_filter", "2")
    return index


def remove_bridge(name: str) -> None:
    """Delete bridge `name`; nothing to do when it does not exist. Its ports are released."""
    with IPRoute() as ipr:
        index = _lookup(ipr, name)
        if index is not None:
            _tolerate(errno.ENODEV, ipr.link, "del", index=index)


# --- namespace pins --------------------------------------------------------------------------


def netns_create(path: str | Path) -> bool:
    """Make a new network namespace pinned at `path` (a file under ctrd's state dir); True
    when it was made, False when one was pinned there already (nothing is done then).

    A file left by an interrupted attempt is reused.
    """
    pin = Path(path)
    ensure_shared_dir(pin.parent)
    if is_pinned(pin):
        return False
    pin_new_namespaces({"net": pin})
    return True


def pin_new_namespaces(pins: Mapping[str, Path], inside: Callable[[], None] | None = None) -> None:
    """Make one new namespace of each kind in `pins` ("net", "ipc", "uts") and pin each at its
    path, as CRI-O's pinns does; `inside` runs first, in the new namespaces and nowhere else
    (a pod's sysctls, its hostname). The pins' directories should be shared mounts
    (`ensure_shared_dir`). Nothing is pinned when `inside` fails; when a bind mount fails,
    those made before it stay for the caller to remove (`netns_remove` unpins any kind).
    """
    flags = 0
    for kind in pins:
        flags |= _CLONE_FLAGS[kind]
    for pin in pins.values():
        pin.touch(mode=0o444, exist_ok=True)
    failure: list[BaseException] = []
    worker = threading.Thread(
        target=_unshare_and_pin, args=(flags, pins, inside, failure), name="ns-pin"
    )
    worker.start()
    worker.join()
    if failure:
        raise failure[0]


def netns_remove(path: str | Path) -> None:
    """Unpin the namespace at `path` (lazy unmount) and delete the file; a missing pin is fine.

    The namespace itself dies with its last user (container processes, open fds).
    """
    pin = Path(path)
    while is_pinned(pin):
        if _libc.umount2(os.fsencode(pin), _MNT_DETACH) != 0:
            _raise_errno("umount", pin)
    pin.unlink(missing_ok=True)


def netns_release_dir(directory: str | Path) -> None:
    """Undo the shared self-bind-mount `netns_create` put on `directory` (pins must be gone)."""
    target = os.path.realpath(directory)
    failed = _libc.umount2(os.fsencode(target), _MNT_DETACH) != 0
    if failed and ctypes.get_errno() != errno.EINVAL:  # EINVAL: not a mount point (any more)
        _raise_errno("umount", Path(target))


def _unshare_and_pin(
    flags: int,
    pins: Mapping[str, Path],
    inside: Callable[[], None] | None,
    failure: list[BaseException],
) -> None:
    """Runs on its own thread, which ends in the new namespaces; nothing else runs there.
    (unshare of net, ipc and uts changes the calling thread only: the daemon's other threads
    never see them.)"""
    try:
        if _libc.unshare(flags) != 0:
            _raise_errno(f"unshare({flags:#x})", next(iter(pins.values())))
        if inside is not None:
            inside()
        task = f"/proc/self/task/{threading.get_native_id()}/ns"
        for kind, pin in pins.items():
            source = os.fsencode(f"{task}/{kind}")
            if _libc.mount(source, os.fsencode(pin), b"none", _MS_BIND, None) != 0:
                _raise_errno("bind mount", pin)
    except BaseException as e:
        failure.append(e)


def ensure_shared_dir(directory: Path) -> None:
    """Make `directory` a shared mount (a bind mount of itself first when it is not a mount
    point), as iproute2 does for /run/netns: an unmount of a pin under it then reaches the
    copies other mount namespaces made."""
    directory.mkdir(mode=0o711, parents=True, exist_ok=True)
    target = os.path.realpath(directory).encode()
    if _libc.mount(b"none", target, b"none", _MS_SHARED | _MS_REC, None) == 0:
        return
    # EINVAL: not a mount point yet. Make it one (a bind mount of itself), then share it.
    if _libc.mount(target, target, b"none", _MS_BIND | _MS_REC, None) != 0:
        _raise_errno("bind mount", directory)
    if _libc.mount(b"none", target, b"none", _MS_SHARED | _MS_REC, None) != 0:
        _raise_errno("make shared", directory)


def is_pinned(pin: Path) -> bool:
    """Whether `pin` has a namespace mounted on it: its file is then nsfs's, on another device
    than its directory (one stat each, not a read of the whole mount table)."""
    try:
        return os.stat(pin).st_dev != os.stat(pin.parent).st_dev
    except FileNotFoundError:
        return False


def _mount_points() -> set[str]:
    points = set()
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            points.add(_unescape_mountinfo(line.split(" ", 5)[4]))
    return points


def _unescape_mountinfo(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash in paths as \\ooo octal escapes."""
    parts = field.split("\\")
    return parts[0] + "".join(chr(int(part[:3], 8)) + part[3:] for part in parts[1:])


# --- endpoints -------------------------------------------------------------------------------


def attach_endpoint(
    bridge: str,
    netns_path: str | Path,
    host_ifname: str,
    mac: str,
    address_cidr: str,
    gateway: str,
    mtu: int,
    default_route: bool = True,
    fresh: bool = False,
) -> str:
    """Plug the namespace at `netns_path` into `bridge`: a veth whose peer is its `eth<N>`.

    The pair is made in one netlink call with the peer created inside the namespace under its
    final name (no move, no rename): the lowest `eth<N>` free there (eth0 for a first network).
    Inside, the peer is known by its MAC (derived per endpoint by the caller), so a retry finds
    it whatever its number. Host end: MTU, enslaved, hairpin on, up. Inside: `lo` up, the
    peer's MTU and MAC, the address, up, and with `default_route` the default route via
    `gateway` unless the namespace has one already. A half-made endpoint from an earlier
    attempt is finished or, when its two ends do not match, remade. Returns the peer's name.

    `fresh` (the caller just made the namespace: nothing of an earlier attempt can be inside)
    takes the short way, ~3 ms: the host end made enslaved and up in the same call as the
    pair, seven requests in all on plain sockets (`_Rtnl`). A host end left by an earlier
    attempt, whose peer died with its namespace, is deleted first.
    """
    _check_ifname(host_ifname)
    address = ipaddress.ip_interface(address_cidr)
    route = gateway if default_route else None
    nsfd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if fresh:
            _plug_fresh(bridge, nsfd, host_ifname, mac, mtu)
            return _in_netns(nsfd, lambda: _configure_fresh(address, route))
        with IPRoute() as host:
            bridge_index = _require(host, bridge)
            _ensure_pair(host, nsfd, host_ifname, mac, mtu, fresh)
            index = _require(host, host_ifname)
            host.link("set", index=index, mtu=mtu, master=bridge_index)
            host.brport("set", index=index, mode=_BRPORT_HAIRPIN)
            host.link("set", index=index, state="up")
        return _in_netns(nsfd, lambda: _with_ipr(_configure_inside, mac, address, route, mtu))
    finally:
        os.close(nsfd)


def _plug_fresh(bridge: str, nsfd: int, host_ifname: str, mac: str, mtu: int) -> None:
    with _Rtnl() as host:
        bridge_index = host.index(bridge)
        if bridge_index is None:
            raise OSError(errno.ENODEV, f"no link {bridge!r}")
        try:
            host.add_veth(host_ifname, mtu, bridge_index, CONTAINER_IFNAME, nsfd, mac)
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise
            detach_endpoint(host_ifname)  # an earlier attempt's; its peer went with its netns
            host.add_veth(host_ifname, mtu, bridge_index, CONTAINER_IFNAME, nsfd, mac)
        index = host.index(host_ifname)
        if index is None:
            raise OSError(errno.ENODEV, f"no link {host_ifname!r} after making it")
        host.hairpin(index)


def _configure_fresh(
    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface, gateway: str | None
) -> str:
    """Inside a namespace just made, whose one veth is `eth0`: lo and eth0 up, the address,
    the default route."""
    with _Rtnl() as inside:
        inside.up(_LOOPBACK_INDEX)
        eth = inside.index(CONTAINER_IFNAME)
        if eth is None:
            raise OSError(errno.ENODEV, f"no {CONTAINER_IFNAME} in the namespace just made")
        inside.up(eth)
        inside.add_address(eth, address)
        if gateway is not None:
            inside.add_default_route(gateway, eth)
    return CONTAINER_IFNAME


def _with_ipr(work: Callable[..., T], *args: Any) -> T:
    """`work(ipr, *args)` with an `IPRoute` opened where the calling thread is."""
    with IPRoute() as ipr:
        return work(ipr, *args)


def _in_netns(nsfd: int, work: Callable[[], T]) -> T:
    """Run `work` inside the namespace `nsfd`, on a thread of its own: sockets it opens belong
    to that namespace.

    The thread joins the namespace (setns), so no helper process is forked: pyroute2's
    `IPRoute(netns=...)` forks one, and a fork of a daemon with gRPC's threads running died
    with SIGSEGV. The thread ends in that namespace.
    """
    return netns.run_in_fd(nsfd, work, "netns-work")


def detach_endpoint(host_ifname: str) -> None:
    """Delete the host end of an endpoint (the kernel deletes its peer); gone already is fine."""
    with IPRoute() as ipr:
        index = _lookup(ipr, host_ifname)
        if index is not None:
            _tolerate(errno.ENODEV, ipr.link, "del", index=index)


def _ensure_pair(
    host: IPRoute, nsfd: int, host_ifname: str, mac: str, mtu: int, fresh: bool = False
) -> None:
    host_index = _lookup(host, host_ifname)
    peer_index: int | None
    if fresh:
        peer_index, peer_name = None, "eth0"
    else:
        peer_index, peer_name = _in_netns(nsfd, lambda: _with_ipr(_peer, mac))
    if host_index is not None and peer_index is not None:
        return
    # One end without the other belongs to some other attempt: deleting it deletes its pair.
    if host_index is not None:
        _tolerate(errno.ENODEV, host.link, "del", index=host_index)
    if peer_index is not None:
        _in_netns(nsfd, lambda: _with_ipr(_delete_link, peer_index))
    host.link(
        "add",
        ifname=host_ifname,
        kind="veth",
        mtu=mtu,
        peer={"ifname": peer_name, "net_ns_fd": nsfd, "mtu": mtu, "address": mac},
    )


def _delete_link(ipr: IPRoute, index: int) -> None:
    _tolerate(errno.ENODEV, ipr.link, "del", index=index)


def _address_up(
    ipr: IPRoute,
    index: int,
    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface,
    mtu: int,
) -> None:
    """Link `index` with `mtu`, `address` (already there is fine) and up."""
    ipr.link("set", index=index, mtu=mtu)
    _tolerate(
        errno.EEXIST,
        ipr.addr,
        "add",
        index=index,
        address=str(address.ip),
        prefixlen=address.network.prefixlen,
    )
    ipr.link("set", index=index, state="up")


def _peer(inside: IPRoute, mac: str) -> tuple[int | None, str]:
    """The link inside with `mac` (index, name); else (None, the lowest free `eth<N>`)."""
    names = set()
    for link in inside.get_links():
        name = str(link.get("ifname"))
        if str(link.get("address", "")).lower() == mac.lower() and name.startswith("eth"):
            return int(link["index"]), name
        names.add(name)
    number = 0
    while f"eth{number}" in names:
        number += 1
    return None, f"eth{number}"


def _configure_inside(
    inside: IPRoute,
    mac: str,
    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface,
    gateway: str | None,
    mtu: int,
) -> str:
    lo = _require(inside, "lo")
    inside.link("set", index=lo, state="up")
    eth, name = _peer(inside, mac)
    if eth is None:
        raise OSError(errno.ENODEV, f"no link with MAC {mac} in the namespace")
    _address_up(inside, eth, address, mtu)
    if gateway is not None:  # added, not replaced: a default route already there is kept
        _tolerate(errno.EEXIST, inside.route, "add", dst="default", gateway=gateway, oif=eth)
    return name


# --- requests on a plain socket --------------------------------------------------------------


class _Rtnl:
    """A plain NETLINK_ROUTE socket that sends pyroute2's messages (its encoders, its decoders)
    one at a time and waits for each answer: the calls a start makes.

    pyroute2 0.9's `IPRoute` runs every request through an event loop of its own: ~0.5 ms to
    open one and 0.35-0.6 ms a call, against ~0.07 ms here; the dozen calls of an endpoint made
    a start ~9 ms slower. Rarer work (retries after a crash, reconcile, dumps) keeps `IPRoute`.
    Failures raise pyroute2's `NetlinkError` with the kernel's errno, as `IPRoute` does.
    """

    def __init__(self) -> None:
        self._sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE
        )
        self._sock.bind((0, 0))
        self._seq = 0

    def __enter__(self) -> _Rtnl:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._sock.close()

    def _ask(self, msg: Any, kind: int, flags: int = NLM_F_ACK) -> bytes:
        """Send `msg` as a `kind` request; the answer (an ack, or the object asked for)."""
        self._seq += 1
        msg["header"]["type"] = kind
        msg["header"]["flags"] = NLM_F_REQUEST | flags
        msg["header"]["sequence_number"] = self._seq
        msg.encode()
        self._sock.send(msg.data)
        while True:
            data = self._sock.recv(_RECV_BUFFER)
            answer_kind, _flags, seq = struct.unpack_from("=HHI", data, 4)
            if seq != self._seq:
                continue  # an answer to an earlier request that was given up on
            if answer_kind == NLMSG_ERROR:
                (code,) = struct.unpack_from("=i", data, 16)
                if code:
                    raise NetlinkError(-code, os.strerror(-code))
            return data

    def index(self, name: str) -> int | None:
        """The index of link `name`, None when there is none (ENODEV)."""
        msg = ifinfmsg()
        msg["attrs"] = [["IFLA_IFNAME", name]]
        try:
            answer = self._ask(msg, RTM_GETLINK, flags=0)
        except NetlinkError as e:
            if e.code == errno.ENODEV:
                return None
            raise
        (index,) = struct.unpack_from("=i", answer, 20)  # nlmsghdr, then ifinfomsg's index
        return int(index)

    def add_veth(
        self, name: str, mtu: int, master: int, peer: str, peer_netns: int, peer_mac: str
    ) -> None:
        """A veth pair: `name` here, enslaved to `master` and up; `peer` (down: a veth's peer
        cannot be brought up before the pair exists) made inside the namespace `peer_netns`."""
        peer_msg = {
            "attrs": [
                ["IFLA_IFNAME", peer],
                ["IFLA_NET_NS_FD", peer_netns],
                ["IFLA_MTU", mtu],
                ["IFLA_ADDRESS", peer_mac],
            ]
        }
        info = {"attrs": [["VETH_INFO_PEER", peer_msg]]}
        msg = ifinfmsg()
        msg["flags"] = msg["change"] = _IFF_UP
        msg["attrs"] = [
            ["IFLA_IFNAME", name],
            ["IFLA_MTU", mtu],
            ["IFLA_MASTER", master],
            ["IFLA_LINKINFO", {"attrs": [["IFLA_INFO_KIND", "veth"], ["IFLA_INFO_DATA", info]]}],
        ]
        self._ask(msg, RTM_NEWLINK, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)

    def hairpin(self, index: int) -> None:
        """Bridge port `index` may send a frame back out the port it came in by."""
        port = {"attrs": [["IFLA_BRPORT_MODE", _BRPORT_HAIRPIN]]}
        info = [["IFLA_INFO_SLAVE_KIND", "bridge"], ["IFLA_INFO_SLAVE_DATA", port]]
        msg = ifinfmsg()
        msg["index"] = index
        msg["attrs"] = [["IFLA_LINKINFO", {"attrs": info}]]
        self._ask(msg, RTM_NEWLINK)

    def up(self, index: int, mtu: int | None = None) -> None:
        msg = ifinfmsg()
        msg["index"] = index
        msg["flags"] = msg["change"] = _IFF_UP
        if mtu is not None:
            msg["attrs"] = [["IFLA_MTU", mtu]]
        self._ask(msg, RTM_NEWLINK)

    def add_address(
        self, index: int, address: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    ) -> None:
        msg = ifaddrmsg()
        msg["family"] = socket.AF_INET if address.version == 4 else socket.AF_INET6
        msg["prefixlen"] = address.network.prefixlen
        msg["index"] = index
        msg["attrs"] = [["IFA_LOCAL", str(address.ip)], ["IFA_ADDRESS", str(address.ip)]]
        self._ask(msg, RTM_NEWADDR, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)

    def add_default_route(self, gateway: str, oif: int) -> None:
        """A default route via `gateway` out of link `oif`; EEXIST when one is there."""
        msg = rtmsg()
        msg["family"] = (
            socket.AF_INET if ipaddress.ip_address(gateway).version == 4 else (socket.AF_INET6)
        )
        msg["table"] = _MAIN_TABLE
        msg["proto"] = _RTPROT_STATIC
        msg["scope"] = _RT_SCOPE_UNIVERSE
        msg["type"] = _RTN_UNICAST
        msg["attrs"] = [["RTA_TABLE", _MAIN_TABLE], ["RTA_GATEWAY", gateway], ["RTA_OIF", oif]]
        self._ask(msg, RTM_NEWROUTE, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL)


# --- host facts ------------------------------------------------------------------------------


def uplink_mtu() -> int:
    """The MTU of the link the host's IPv4 default route leaves by (the best metric); 1500."""
    with IPRoute() as ipr:
        defaults = [
            r
            for r in ipr.get_routes(family=socket.AF_INET, table=_MAIN_TABLE)
            if r["dst_len"] == 0 and r.get("oif") is not None
        ]
        if not defaults:
            return DEFAULT_MTU
        best = min(defaults, key=lambda r: r.get("priority") or 0)
        links = ipr.get_links(best.get("oif"))
        mtu = links[0].get("mtu") if links else None
    return int(mtu) if mtu else DEFAULT_MTU


def host_taken_prefixes(resolv_conf: Path = RESOLV_CONF) -> list[Network]:
    """Prefixes a new network must not overlap: on-link routes and the resolvers' addresses.

    Routes: the main table's link-scope routes with a destination (the subnets of the host's own
    interfaces), IPv4 and IPv6; routes through a gateway (VPN splits) are not counted, as in
    Docker 23+. Resolvers: each `nameserver` of `resolv_conf` as a /32 or /128.
    """
    taken: list[Network] = []
    with IPRoute() as ipr:
        for family in (socket.AF_INET, socket.AF_INET6):
            for route in ipr.get_routes(family=family, table=_MAIN_TABLE):
                if route["dst_len"] == 0 or route["scope"] != _SCOPE_LINK:
                    continue
                dst = route.get("dst")
                if dst:
                    taken.append(ipaddress.ip_network(f"{dst}/{route['dst_len']}", strict=False))
    try:
        text = resolv_conf.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        text = ""
    taken.extend(resolvers_in(text))
    return taken


def resolvers_in(resolv_conf_text: str) -> list[Network]:
    """The `nameserver` addresses of a resolv.conf as host networks; bad lines are skipped."""
    found: list[Network] = []
    for line in resolv_conf_text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                found.append(ipaddress.ip_network(words[1].split("%")[0]))
            except ValueError:
                continue
    return found


# --- helpers ---------------------------------------------------------------------------------


def _check_ifname(name: str) -> None:
    if not name or len(name.encode()) > IFNAMSIZ or any(c == "/" or c.isspace() for c in name):
        raise ValueError(f"bad interface name {name!r} (1-{IFNAMSIZ} bytes, no '/' or space)")


def _lookup(ipr: IPRoute, name: str) -> int | None:
    """The link's index, asked by name (one RTM_GETLINK: a dump of every link, as
    `link_lookup` does, grows with the host's veths, 500 containers' worth)."""
    try:
        found = ipr.link("get", ifname=name)
    except NetlinkError as e:
        if e.code == errno.ENODEV:
            return None
        raise
    return int(found[0]["index"])


def _require(ipr: IPRoute, name: str) -> int:
    index = _lookup(ipr, name)
    if index is None:
        raise OSError(errno.ENODEV, f"no link {name!r}")
    return index


def _tolerate(code: int, call: Any, *args: Any, **kwargs: Any) -> None:
    """Run a netlink call, treating NetlinkError `code` (EEXIST, ENODEV) as done."""
    try:
        call(*args, **kwargs)
    except NetlinkError as e:
        if e.code != code:
            raise


def _write_sysctl(path: str, value: str) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(value)


def _raise_errno(what: str, path: Path) -> None:
    code = ctypes.get_errno()
    raise OSError(code, f"{what}: {os.strerror(code)}", os.fspath(path))
