"""The kernel side of ctrd's bridge networks: bridges, namespace pins and veth endpoints.

A thin I/O shell over netlink (pyroute2, in-process, no `ip` command) and a few /proc files.
Every function blocks: the daemon calls them on a worker thread (`asyncio.to_thread`), never on
the event loop. Each is idempotent where the kernel lets it be, so that a retry after a crash
converges on the same state: creating what exists is not an error, removing what is gone is not
an error.

Invariants kept here:
- the calling thread never changes network namespace. Work inside a container's namespace runs
  on a short-lived thread that joins it (setns) and opens a plain netlink socket there
  (`_in_netns`); pyroute2's `IPRoute(netns=path)` is not used: it forks a helper, and a fork of
  the daemon (gRPC's threads running) died with SIGSEGV. The one `unshare(CLONE_NEWNET)` (in
  `netns_create`) likewise runs on a thread of its own that exits with the namespace pinned.
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
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
T = TypeVar("T")

IFNAMSIZ = 15
CONTAINER_IFNAME = "eth0"
DEFAULT_MTU = 1500
RESOLV_CONF = Path("/etc/resolv.conf")

_CLONE_NEWNET = 0x40000000
_MS_BIND = 4096
_MS_REC = 16384
_MS_SHARED = 1 << 20
_MNT_DETACH = 2
_SCOPE_LINK = 253
_MAIN_TABLE = 254
_BRPORT_HAIRPIN = 1

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
    _ensure_shared_dir(pin.parent)
    if is_pinned(pin):
        return False
    pin.touch(mode=0o444, exist_ok=True)
    failure: list[OSError] = []
    worker = threading.Thread(target=_unshare_and_pin, args=(pin, failure), name="netns-create")
    worker.start()
    worker.join()
    if failure:
        raise failure[0]
    return True


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


def _unshare_and_pin(pin: Path, failure: list[OSError]) -> None:
    """Runs on its own thread, which ends in the new namespace; nothing else runs there."""
    try:
        if _libc.unshare(_CLONE_NEWNET) != 0:
            _raise_errno("unshare(CLONE_NEWNET)", pin)
        source = f"/proc/self/task/{threading.get_native_id()}/ns/net"
        if _libc.mount(os.fsencode(source), os.fsencode(pin), b"none", _MS_BIND, None) != 0:
            _raise_errno("bind mount", pin)
    except OSError as e:
        failure.append(e)


def _ensure_shared_dir(directory: Path) -> None:
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
    """
    _check_ifname(host_ifname)
    address = ipaddress.ip_interface(address_cidr)
    nsfd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with IPRoute() as host:
            bridge_index = _require(host, bridge)
            _ensure_pair(host, nsfd, host_ifname, mac, mtu, fresh)
            index = _require(host, host_ifname)
            host.link("set", index=index, mtu=mtu, master=bridge_index)
            host.brport("set", index=index, mode=_BRPORT_HAIRPIN)
            host.link("set", index=index, state="up")
        route = gateway if default_route else None
        return _in_netns(nsfd, lambda inside: _configure_inside(inside, mac, address, route, mtu))
    finally:
        os.close(nsfd)


def _in_netns(nsfd: int, work: Callable[[IPRoute], T]) -> T:
    """Run `work` with a netlink socket inside the namespace `nsfd`, on a thread of its own.

    The thread joins the namespace (setns) and opens a plain socket there, so no helper
    process is forked: pyroute2's `IPRoute(netns=...)` forks one, and a fork of a daemon
    with gRPC's threads running died with SIGSEGV. The thread ends in that namespace.
    """
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            if _libc.setns(nsfd, _CLONE_NEWNET) != 0:
                code = ctypes.get_errno()
                raise OSError(code, f"setns: {os.strerror(code)}")
            with IPRoute() as inside:
                result.append(work(inside))
        except BaseException as e:  # handed to the caller's thread
            failure.append(e)

    worker = threading.Thread(target=run, name="netns-work")
    worker.start()
    worker.join()
    if failure:
        raise failure[0]
    return result[0]


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
        peer_index, peer_name = _in_netns(nsfd, lambda inside: _peer(inside, mac))
    if host_index is not None and peer_index is not None:
        return
    # One end without the other belongs to some other attempt: deleting it deletes its pair.
    if host_index is not None:
        _tolerate(errno.ENODEV, host.link, "del", index=host_index)
    if peer_index is not None:
        _in_netns(
            nsfd, lambda inside: _tolerate(errno.ENODEV, inside.link, "del", index=peer_index)
        )
    host.link(
        "add",
        ifname=host_ifname,
        kind="veth",
        mtu=mtu,
        peer={"ifname": peer_name, "net_ns_fd": nsfd, "mtu": mtu, "address": mac},
    )


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
