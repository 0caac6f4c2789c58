"""The data plane of ctrd's bridge networks: stored networks and endpoints made real in the kernel.

`NetworkManager` is what the daemon owns. It joins the three foundations: the durable store
(`SqliteNetworkStore`, the address leases), netlink (bridges, namespace pins, veths) and ctrd's
nftables table. Blocking kernel calls run on worker threads (`asyncio.to_thread`); the event loop
only waits.

Layout on disk (under the daemon's state dir):
- `netns/<namespace>/<container>`: the pin of a container's network namespace; its path is what
  the container's OCI spec names (`linux.namespaces` network `path`).
- `etc/<namespace>/<container>/hosts` and `resolv.conf`: files to bind-mount into the container.

Names derived, never random, so that a retry or a restart finds what an earlier attempt made:
- bridge: `br-` + 12 hex of the network id (the id itself when it is hex, as docker's `br-<id>`;
  a hash of it otherwise), 15 bytes;
- host end of a veth: `netlink.host_ifname("<namespace>/<network id>/<container>")`, `veth` + 7 hex;
- MAC: `02:` + 5 bytes of a hash of the same key (locally administered, unicast; stable across
  reconnects so neighbours' ARP caches stay valid).

Ordering kept for crashes: an address lease is recorded before anything is plumbed, and released
only after the veth is gone, so an address is never configured on two links. The nft table is
rebuilt whole from the store after every change (and deleted when no network is left).

Host-wide switch: `net.ipv4.ip_forward=1` is set the first time a bridge is ensured, as dockerd
does; without it nothing routes between a bridge and the uplink (or published ports). It is
never turned back off (other programs may rely on it by then).

Limit for now: one network per container (netlink names the peer `eth0` and gives it the default
route); a second `connect` of the same container is refused with FailedPrecondition.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import ipaddress
import json
import re
import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import structlog
from pyroute2 import IPRoute

from supervisor.errors import AlreadyExists, FailedPrecondition, NotFound
from supervisor.metadata.db import Database
from supervisor.network import dns, ipam, netlink, nft, ports
from supervisor.network.labels import NETWORKS_LABEL, NetworkSettings, label_networks
from supervisor.network.store import (
    Endpoint,
    Network,
    NetworkRequest,
    PublishedPort,
    SqliteNetworkStore,
    all_ports,
)
from supervisor.network.watch import FirewallWatch

log = structlog.get_logger()

IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"
HOST_RESOLV_CONF = Path("/etc/resolv.conf")
FALLBACK_RESOLVERS = ("8.8.8.8", "8.8.4.4")  # docker's, when the host has only loopback ones

RESTORE_WINDOW, RESTORE_BURST = 10.0, 3  # more rewrites than that in the window: contested
DEFAULT_NETWORK = "bridge"  # docker's default network, made per namespace on first use
DEFAULT_LABEL = "ctrd.io/default-network"
HasTask = Callable[[str, str], bool]  # (namespace, container id): whether a task exists
NetnsOf = Callable[[str], Awaitable[Path | None]]  # a container id -> its task's netns path

_HEX64 = re.compile(r"[0-9a-f]{64}")
EXT_SERVERS = "# ExtServers:"
_HEX12 = re.compile(r"^[0-9a-f]{12}")
_HOST_VETH = re.compile(r"^veth[0-9a-f]{7}$")  # netlink.host_ifname's pattern


@dataclass(frozen=True)
class Attachment:
    """What a container's spec needs after `connect`: its namespace pin, and the endpoint."""

    netns: Path
    endpoint: Endpoint
    network: Network


# --- derivations (pure) ---------------------------------------------------------------------


def bridge_name(network_id: str) -> str:
    """`br-` + 12 hex: the id's own first 12 when it is hex (docker's), else a hash of it."""
    if _HEX12.match(network_id):
        return "br-" + network_id[:12]
    return "br-" + hashlib.sha256(network_id.encode()).hexdigest()[:12]


def endpoint_key(ns: str, network_id: str, container: str) -> str:
    return f"{ns}/{network_id}/{container}"


def port_owner(ns: str, container_id: str) -> str:
    """Who holds a container's published host ports in `PortReservations`."""
    return f"{ns}/{container_id}"


def endpoint_names(container_id: str, name: str, aliases: Iterable[str]) -> tuple[str, ...]:
    """What an endpoint records as its aliases: the container's name (when it is not its id),
    then its network aliases, without repeats."""
    names = [name] if name and name != container_id else []
    names.extend(a for a in aliases if a not in names and a != container_id)
    return tuple(names)


def dns_names(container_id: str, aliases: Iterable[str]) -> set[str]:
    """The names an endpoint answers to: its container's id, the short id of a 64-hex id
    (docker's), and its recorded aliases (the name first); lowercase, as DNS compares."""
    names = {container_id.lower(), *(a.lower() for a in aliases)}
    if _HEX64.fullmatch(container_id):
        names.add(container_id[:12])
    return names


def _ext_servers(resolv: Path) -> list[str]:
    """The `--dns` servers a container's generated resolv.conf records (`# ExtServers:`)."""
    try:
        text = resolv.read_text(encoding="utf-8")
    except OSError:
        return []
    for line in text.splitlines():
        if line.startswith(EXT_SERVERS):
            return line[len(EXT_SERVERS) :].strip(" []").split()
    return []


def endpoint_mac(key: str) -> str:
    """A locally administered unicast MAC (`02:` first byte) derived from the endpoint's key."""
    digest = hashlib.sha256(key.encode()).digest()[:5]
    return ":".join(f"{b:02x}" for b in (0x02, *digest))


def firewall_network(n: Network) -> nft.Network:
    return nft.Network(
        name=n.id, bridge=bridge_name(n.id), subnet=n.config.subnet, internal=n.internal
    )


# --- /etc/hosts and resolv.conf (pure renderers) --------------------------------------------

_HOSTS_HEAD = (
    "127.0.0.1\tlocalhost",
    "::1\tlocalhost ip6-localhost ip6-loopback",
    "fe00::0\tip6-localnet",
    "ff00::0\tip6-mcastprefix",
    "ff02::1\tip6-allnodes",
    "ff02::2\tip6-allrouters",
)


def render_hosts(
    hostname: str, addresses: Iterable[IPv4Address], extra_hosts: Iterable[str] = ()
) -> str:
    """Docker's container /etc/hosts: localhost lines, the `--add-host NAME:IP` entries, then
    `<address> <hostname>` per endpoint."""
    extra = []
    for entry in extra_hosts:
        name, _, address = entry.partition(":")
        extra.append(f"{address}\t{name}")
    lines = [*_HOSTS_HEAD, *extra, *(f"{a}\t{hostname}" for a in addresses)]
    return "\n".join(lines) + "\n"


def render_resolv(
    host_text: str,
    source: str = str(HOST_RESOLV_CONF),
    servers: Sequence[str] = (),
    search: Sequence[str] = (),
    options: Sequence[str] = (),
    embedded: str | None = None,
) -> str:
    """A container's resolv.conf, by docker's rules.

    With the embedded resolver (`embedded`, its address): that one nameserver, the host's or
    the given search domains, and the host's or the given options plus `ndots:0`; the resolver
    forwards to the given servers, or the host's (loopback ones too).

    Without it: the given servers, else the host's without the ones a container cannot reach.
    Loopback nameservers (127.0.0.0/8, ::1: systemd-resolved's stub, a local dnsmasq) answer in
    the host's namespace only; IPv6 ones are dropped too (containers have no IPv6 here). When no
    nameserver is left, Google's two are used, as dockerd does. search/options lines are kept
    unless given.
    """
    host_search: list[str] = []
    host_options: list[str] = []
    host_servers: list[str] = []
    for line in host_text.splitlines():
        words = line.split()
        if words[:1] == ["nameserver"] and len(words) > 1 and _reachable_resolver(words[1]):
            host_servers.append(words[1])
        elif words[:1] == ["search"]:
            host_search = words[1:]
        elif words[:1] == ["options"]:
            host_options = words[1:]
    chosen_search = list(search) or host_search
    chosen_options = list(options) or host_options
    ext: list[str] = []
    if embedded is not None:
        nameservers = [embedded]
        if not any(o.startswith("ndots:") for o in chosen_options):
            chosen_options = [*chosen_options, "ndots:0"]
        if servers:  # where the embedded resolver forwards, read again at a restart
            ext = [f"{EXT_SERVERS} [{' '.join(servers)}]"]
    else:
        nameservers = list(servers) or host_servers or list(FALLBACK_RESOLVERS)
    lines = [f"# Based on host file: '{source}'"]
    lines.extend(f"nameserver {server}" for server in nameservers)
    if chosen_search and chosen_search != ["."]:
        lines.append("search " + " ".join(chosen_search))
    if chosen_options:
        lines.append("options " + " ".join(chosen_options))
    lines.extend(ext)
    return "\n".join(lines) + "\n"


def _reachable_resolver(text: str) -> bool:
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    return address.version == 4 and not address.is_loopback


def write_in_place(path: Path, text: str) -> None:
    """Rewrite `path` keeping its inode (a bind mount into a running container pins the inode)."""
    path.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as f:
        f.seek(0)
        f.truncate()
        f.write(text)


# --- tasks: a label asks for networks (pure) -----------------------------------------------


def spec_with_network(
    spec: dict[str, Any], netns: Path, hosts: Path | None = None, resolv: Path | None = None
) -> dict[str, Any]:
    """`spec` joined to the pinned namespace, with the generated hosts and resolv.conf mounted."""
    linux = dict(spec.get("linux") or {})
    namespaces = [n for n in linux.get("namespaces") or [] if n.get("type") != "network"]
    linux["namespaces"] = [*namespaces, {"type": "network", "path": str(netns)}]
    files = {"/etc/hosts": hosts, "/etc/resolv.conf": resolv}
    generated = {dest: source for dest, source in files.items() if source is not None}
    mounts = [m for m in spec.get("mounts") or [] if m.get("destination") not in generated]
    for destination, source in generated.items():
        mounts.append(
            {
                "destination": destination,
                "type": "bind",
                "source": str(source),
                "options": ["rbind", "rprivate", "rw"],
            }
        )
    return {**spec, "linux": linux, "mounts": mounts}


# --- kernel reads the foundations do not offer ----------------------------------------------


def _bridge_ports(bridges: set[str]) -> dict[str, str]:
    """Host links enslaved to one of `bridges`: {link name: bridge name}."""
    with IPRoute() as ipr:
        links = list(ipr.get_links())
        by_index = {int(link["index"]): str(link.get("ifname")) for link in links}
        ports = {}
        for link in links:
            master = link.get("master")
            if master is not None and by_index.get(int(master)) in bridges:
                ports[str(link.get("ifname"))] = by_index[int(master)]
    return ports


def _write_sysctl(path: str, value: str) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(value)


def _ensure_bridge(n: Network, mtu: int) -> None:
    bridge = bridge_name(n.id)
    netlink.ensure_bridge(bridge, f"{n.config.gateway}/{n.config.subnet.prefixlen}", mtu)
    # 127.0.0.1 publishing: DNATed loopback traffic may leave by this bridge (nft's notes)
    _write_sysctl(f"/proc/sys/net/ipv4/conf/{bridge}/route_localnet", "1")


def _named_by_containers(conn: sqlite3.Connection, ns: str, n: Network) -> bool:
    """Whether a container of `ns` asks for network `n` (its `ctrd.io/networks` label)."""
    rows = conn.execute(
        "SELECT labels FROM containers WHERE namespace = ? AND labels LIKE ?",
        (ns, f"%{NETWORKS_LABEL}%"),
    )
    for (text,) in rows:
        names = label_networks(json.loads(text))
        if n.name in names or n.id in names:
            return True
    return False


@dataclass(frozen=True)
class ReconcileReport:
    """What `reconcile` removed or released, for the daemon's log and for tests."""

    links_removed: tuple[str, ...] = ()
    pins_removed: tuple[str, ...] = ()
    endpoints_released: tuple[str, ...] = ()


class NetworkManager:
    """Bridges, endpoints, /etc files and the firewall table for every namespace's networks."""

    def __init__(
        self, db: Database, state: Path, table: str = nft.DEFAULT_TABLE, watch: bool = False
    ) -> None:
        """`watch`: rewrite the table when another program changes the ruleset (the daemon's
        manager does; one made by a test need not)."""
        self._db = db
        self._state = Path(state)
        self._table = table
        self._forwarding = False
        self._ensured: dict[str, int] = {}  # network id -> MTU, for bridges made or checked
        self._background: set[asyncio.Task[None]] = set()
        self._watching = watch
        self._applied: nft.Ruleset | None = None  # the table as last written
        self._shape: tuple[int, int] | None = None  # its (chains, rules) in the kernel then
        self._wanted: nft.Ruleset | None = None  # the table to keep, once one was written
        self._watch: FirewallWatch | None = None
        self._reservations = ports.PortReservations()  # the host ports held, by container
        self._dns: dict[tuple[str, ...], dns.EmbeddedDns] = {}  # by upstreams (() = host's)
        self._names: dict[str, dict[str, dict[str, list[IPv4Address]]]] = {}  # ns, net, name
        self._reverse: dict[str, dict[str, dict[IPv4Address, str]]] = {}
        self._joined: dict[str, dict[str, tuple[str, ...]]] = {}  # ns, container: networks
        self._restores: list[float] = []  # when the table was last rewritten for others
        self._lock = asyncio.Lock()  # one kernel change (and nft rebuild) at a time

    # paths

    def pin_path(self, ns: str, container_id: str) -> Path:
        return self._state / "netns" / ns / container_id

    def etc_dir(self, ns: str, container_id: str) -> Path:
        return self._state / "etc" / ns / container_id

    def _store(self, ns: str) -> SqliteNetworkStore:
        return SqliteNetworkStore(self._db, ns)

    # networks

    async def ensure_network(self, ns: str, name: str) -> Network:
        """The stored network `name` with its bridge up (address, MTU, route_localnet)."""
        n = await self._store(ns).get(name)
        await self._ensure(n)
        return n

    async def _ensure(self, n: Network, again: bool = False) -> int:
        """The network's bridge up (once per daemon life, or `again`); its MTU."""
        known = self._ensured.get(n.id)
        if known is not None and not again:
            return known
        mtu = n.mtu or await asyncio.to_thread(netlink.uplink_mtu)
        await asyncio.to_thread(_ensure_bridge, n, mtu)
        self._ensured[n.id] = mtu
        if not self._forwarding:
            await asyncio.to_thread(_write_sysctl, IP_FORWARD, "1")
            self._forwarding = True
        return mtu

    async def remove_network(self, ns: str, name: str) -> None:
        """Delete the stored network (refused while it has endpoints or a container, running or
        not, names it) and its bridge."""
        async with self._lock:
            store = self._store(ns)
            n = await store.get(name)
            if await self._db.read(lambda conn: _named_by_containers(conn, ns, n)):
                raise FailedPrecondition(  # docker's words; a stopped container counts too
                    f"error while removing network: network {n.name} id {n.id} "
                    "has active endpoints",
                    plain=True,
                )
            await store.delete(n.id)
            self._ensured.pop(n.id, None)
            await asyncio.to_thread(netlink.remove_bridge, bridge_name(n.id))
            await self._apply_firewall()

    # endpoints

    async def connect(
        self,
        ns: str,
        container_id: str,
        network: str,
        static_ip: IPv4Address | None = None,
        aliases: Sequence[str] = (),
        default_route: bool = True,
    ) -> Attachment:
        """Lease an address, pin the container's namespace, plug a veth into the bridge.

        A container may be on several networks: each gets the next free `eth<N>`; only the
        one connected with `default_route` routes the container out. Already on `network`:
        AlreadyExists, docker's words."""
        async with self._lock:
            store = self._store(ns)
            n = await store.get(network)
            mine = [e for e in await store.endpoints() if e.container == container_id]
            if any(e.network == n.id for e in mine):
                raise AlreadyExists(
                    f"endpoint with name {container_id} already exists in network {n.name}"
                )
            mtu = await self._ensure(n)
            key = endpoint_key(ns, n.id, container_id)
            endpoint = await store.attach(
                n.id, container_id, static_ip, endpoint_mac(key), tuple(aliases)
            )
            pin = self.pin_path(ns, container_id)
            try:
                fresh = await asyncio.to_thread(netlink.netns_create, pin)
                plug = functools.partial(
                    netlink.attach_endpoint,
                    bridge_name(n.id),
                    pin,
                    netlink.host_ifname(key),
                    endpoint.mac,
                    f"{endpoint.address}/{n.config.subnet.prefixlen}",
                    str(n.config.gateway),
                    default_route=default_route,
                    fresh=fresh,
                )
                try:
                    await asyncio.to_thread(plug, mtu)
                except Exception:
                    # the bridge, checked once per daemon life, may be gone since: again, once
                    mtu = await self._ensure(n, again=True)
                    await asyncio.to_thread(functools.partial(plug, fresh=False), mtu)
            except BaseException:
                await asyncio.to_thread(netlink.detach_endpoint, netlink.host_ifname(key))
                await store.detach(n.id, container_id)
                raise
            await self._apply_firewall()
            return Attachment(pin, endpoint, n)

    async def disconnect(self, ns: str, container_id: str, network: str) -> None:
        """Unplug the container from `network`; the lease goes after the link. The pin stays."""
        async with self._lock:
            store = self._store(ns)
            n = await store.get(network)
            key = endpoint_key(ns, n.id, container_id)
            await asyncio.to_thread(netlink.detach_endpoint, netlink.host_ifname(key))
            await store.detach(n.id, container_id)
            await self._apply_firewall()

    async def release(self, ns: str, container_id: str) -> None:
        """Everything the container had: every endpoint, its leases, its pin and /etc files."""
        async with self._lock:
            store = self._store(ns)
            mine = [e for e in await store.endpoints() if e.container == container_id]
            pin, etc = self.pin_path(ns, container_id), self.etc_dir(ns, container_id)
            if not mine and not pin.exists() and not etc.exists():
                await self._free_ports(ns, container_id)  # reserved by a failed prepare
                return  # never networked: no kernel call, no firewall rebuild
            await self._stop_dns(ns, container_id)
            # Unpinned, the namespace dies with its last user (the task's processes are gone):
            # the kernel then deletes its veths. Deleting one is slow (~20 ms of RCU waits), so
            # it is not waited for here; a background pass deletes whatever is left, and a
            # restart's reconcile any veth a crash left behind.
            await asyncio.to_thread(netlink.netns_remove, pin)
            if pin.parent.is_dir() and not any(pin.parent.iterdir()):
                await asyncio.to_thread(netlink.netns_release_dir, pin.parent)
            await store.release_container(container_id)
            await self._free_ports(ns, container_id)
            names = [netlink.host_ifname(endpoint_key(ns, e.network, container_id)) for e in mine]
            self._in_background(self._detach_all(names))
            for f in ("hosts", "resolv.conf"):
                (etc / f).unlink(missing_ok=True)
            if etc.exists():
                etc.rmdir()
            await self._refresh_names(ns)
            await self._apply_firewall()

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _detach_all(self, names: Sequence[str]) -> None:
        for name in names:
            try:
                await asyncio.to_thread(netlink.detach_endpoint, name)
            except Exception:
                log.exception("veth_removal_failed", link=name)

    async def settle(self) -> None:
        """Wait until the background removals started so far are done (tests, shutdown)."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def prepare_task(
        self,
        ns: str,
        container_id: str,
        labels: Mapping[str, str],
        spec: bytes,
        netns_of: NetnsOf | None = None,
    ) -> bytes:
        """The spec a task is created with, after the plumbing its labels ask for
        (`supervisor.network.labels`): unchanged without them. On networks: the container is
        connected to each (the default `bridge` is made on first use), the first giving the
        default route, its hosts and resolv.conf are written, and the spec names its namespace
        pin and mounts the two files. Sharing another container's network (`container:`): the
        spec names that one's namespace and mounts its files. A failure releases what was
        made."""
        settings = NetworkSettings.from_labels(labels)
        parsed = json.loads(spec)
        if settings.network_container:
            return json.dumps(
                await self._shared_spec(ns, parsed, settings.network_container, netns_of)
            ).encode()
        if not settings.networks:
            return spec  # none/host: published ports are dropped, as docker drops them
        static_ip = ipam.parse_address(settings.ip) if settings.ip else None
        requests = [r for text in settings.ports for r in ports.parse_publish(text)]
        # held before anything is plumbed: a taken port fails the task with nothing made
        bindings = self._reservations.reserve(port_owner(ns, container_id), requests)
        try:
            attachment: Attachment | None = None
            for position, name in enumerate(settings.networks):
                if name == DEFAULT_NETWORK:
                    await self.ensure_default_network(ns)
                joined = await self.connect(
                    ns,
                    container_id,
                    name,
                    static_ip if position == 0 else None,
                    endpoint_names(container_id, settings.name, settings.aliases),
                    default_route=position == 0,
                )
                attachment = attachment or joined
            assert attachment is not None
            await self._refresh_names(ns)
            await self._serve_dns(ns, container_id, settings.dns)
            if bindings:
                async with self._lock:
                    await self._store(ns).set_ports(attachment.network.id, container_id, bindings)
                    await self._apply_firewall()
            hostname = str(parsed.get("hostname") or container_id[:12])
            hosts, resolv = await self.hosts_and_resolv(ns, container_id, hostname, settings)
        except BaseException:
            await self.release(ns, container_id)
            raise
        rewritten = spec_with_network(parsed, attachment.netns, hosts, resolv)
        return json.dumps(rewritten).encode()

    async def _shared_spec(
        self, ns: str, spec: dict[str, Any], other: str, netns_of: NetnsOf | None
    ) -> dict[str, Any]:
        """`spec` joined to container `other`'s network namespace: its pin when it is on ctrd
        networks (with its hosts and resolv.conf), else its running task's namespace."""
        pin = self.pin_path(ns, other)
        if await asyncio.to_thread(netlink.is_pinned, pin):
            etc = self.etc_dir(ns, other)
            return spec_with_network(spec, pin, etc / "hosts", etc / "resolv.conf")
        path = await netns_of(other) if netns_of is not None else None
        if path is None:
            raise FailedPrecondition(
                f"cannot join the network of container {other}: it is not running"
            )
        return spec_with_network(spec, path)

    async def ensure_default_network(self, ns: str) -> Network:
        """The namespace's `bridge` network, made with a picked subnet when it is missing."""
        store = self._store(ns)
        try:
            return await store.get(DEFAULT_NETWORK)
        except NotFound:
            pass
        own = [n.config.subnet for _, n in await self._networks_everywhere()]
        host = await asyncio.to_thread(netlink.host_taken_prefixes)
        taken = ipam.not_own(host, own)
        request = NetworkRequest(
            id=secrets.token_hex(32), name=DEFAULT_NETWORK, labels={DEFAULT_LABEL: "true"}
        )
        try:
            return await store.create(request, taken)
        except AlreadyExists:
            return await store.get(DEFAULT_NETWORK)  # made meanwhile by another task

    async def hosts_and_resolv(
        self,
        ns: str,
        container_id: str,
        hostname: str,
        settings: NetworkSettings | None = None,
    ) -> tuple[Path, Path]:
        """Write the container's hosts and resolv.conf (in place); their paths, to bind-mount."""
        settings = settings or NetworkSettings()
        addresses = [
            e.address for e in await self._store(ns).endpoints() if e.container == container_id
        ]
        host_text = await asyncio.to_thread(HOST_RESOLV_CONF.read_text, encoding="utf-8")
        etc = self.etc_dir(ns, container_id)
        hosts, resolv = etc / "hosts", etc / "resolv.conf"
        hosts_text = render_hosts(hostname, addresses, settings.extra_hosts)
        resolv_text = render_resolv(
            host_text,
            servers=settings.dns,
            search=settings.dns_search,
            options=settings.dns_options,
            embedded=dns.LISTEN_ADDRESS,
        )
        await asyncio.to_thread(write_in_place, hosts, hosts_text)
        await asyncio.to_thread(write_in_place, resolv, resolv_text)
        return hosts, resolv

    # names: the embedded DNS

    async def _refresh_names(self, ns: str) -> None:
        """Rebuild the namespace's name tables from the store: per network, each endpoint's
        names (its container's id, short id, name and aliases) and address."""
        endpoints = await self._store(ns).endpoints()
        networks: dict[str, dict[str, list[IPv4Address]]] = {}
        reverse: dict[str, dict[IPv4Address, str]] = {}
        joined: dict[str, list[str]] = {}
        for e in endpoints:
            names = networks.setdefault(e.network, {})
            for name in dns_names(e.container, e.aliases):
                names.setdefault(name, []).append(e.address)
            reverse.setdefault(e.network, {})[e.address] = (e.aliases or (e.container,))[0]
            joined.setdefault(e.container, []).append(e.network)
        self._names[ns] = networks
        self._reverse[ns] = reverse
        self._joined[ns] = {cid: tuple(ids) for cid, ids in joined.items()}

    def _lookup(self, ns: str, container_id: str, name: str) -> list[IPv4Address]:
        """`name` on the networks `container_id` is on: docker's scoping."""
        found: list[IPv4Address] = []
        tables = self._names.get(ns, {})
        for network_id in self._joined.get(ns, {}).get(container_id, ()):
            found.extend(tables.get(network_id, {}).get(name, ()))
        return found

    def _reverse_lookup(self, ns: str, container_id: str, address: IPv4Address) -> str | None:
        tables = self._reverse.get(ns, {})
        for network_id in self._joined.get(ns, {}).get(container_id, ()):
            name = tables.get(network_id, {}).get(address)
            if name is not None:
                return name
        return None

    async def _serve_dns(self, ns: str, container_id: str, servers: Sequence[str]) -> None:
        """Answer at 127.0.0.11 in the container's namespace, forwarding to `servers` (its
        `--dns`), else to the host's resolvers."""
        upstreams = tuple(servers)
        resolver = self._dns.get(upstreams)
        if resolver is None:
            resolver = dns.EmbeddedDns(lambda: upstreams) if upstreams else dns.EmbeddedDns()
            self._dns[upstreams] = resolver
        await resolver.serve(
            port_owner(ns, container_id),
            self.pin_path(ns, container_id),
            lambda name: self._lookup(ns, container_id, name),
            lambda address: self._reverse_lookup(ns, container_id, address),
        )

    async def _stop_dns(self, ns: str, container_id: str) -> None:
        for resolver in self._dns.values():
            await resolver.stop(port_owner(ns, container_id))

    async def _free_ports(self, ns: str, container_id: str) -> None:
        """Close the sockets holding the container's host ports; for UDP ones, forget the
        kernel's conntrack entries, or a client's datagrams keep going to the old address."""
        freed = self._reservations.release(port_owner(ns, container_id))
        for binding in freed:
            if binding.proto == "udp":
                await asyncio.to_thread(
                    ports.flush_udp_conntrack, binding.host_port, binding.host_ip
                )

    # live changes of a container's networks (the Networks service's Connect and Disconnect)

    def is_plumbed(self, ns: str, container_id: str) -> bool:
        """Whether the container's task runs in a namespace ctrd pinned (so it can be changed
        live); blocking but cheap (a stat and a mountinfo read)."""
        return netlink.is_pinned(self.pin_path(ns, container_id))

    async def connect_running(
        self,
        ns: str,
        container_id: str,
        network: str,
        static_ip: IPv4Address | None,
        aliases: Sequence[str],
        hostname: str,
        settings: NetworkSettings,
    ) -> Endpoint:
        """Plug a running container into one more network (no default route: the first
        network keeps it, as docker's) and rewrite its /etc/hosts."""
        if network == DEFAULT_NETWORK:
            await self.ensure_default_network(ns)
        names = endpoint_names(container_id, settings.name, aliases)
        attachment = await self.connect(
            ns, container_id, network, static_ip, names, default_route=False
        )
        await self._refresh_names(ns)
        await self.hosts_and_resolv(ns, container_id, hostname, settings)
        return attachment.endpoint

    async def disconnect_running(
        self, ns: str, container_id: str, network: str, hostname: str, settings: NetworkSettings
    ) -> None:
        """Unplug a running container from one network and rewrite its /etc/hosts."""
        await self.disconnect(ns, container_id, network)
        await self._refresh_names(ns)
        await self.hosts_and_resolv(ns, container_id, hostname, settings)

    # firewall

    async def _networks_everywhere(self) -> list[tuple[str, Network]]:
        def namespaces(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute("SELECT DISTINCT namespace FROM networks ORDER BY namespace")
            return [str(ns) for (ns,) in rows]

        found: list[tuple[str, Network]] = []
        for ns in await self._db.read(namespaces):
            found.extend((ns, n) for n in await self._store(ns).list())
        return found

    async def _publishes(self) -> tuple[nft.Publish, ...]:
        """Published ports of every endpoint, of every namespace (the table is host-wide)."""
        return tuple(
            nft.Publish(
                network=p.network,
                proto=p.binding.proto,
                host_ip=p.binding.host_ip,
                host_port=p.binding.host_port,
                container_ip=p.address,
                container_port=p.binding.container_port,
            )
            for p in await all_ports(self._db)
        )

    async def published(self, ns: str, container_id: str) -> list[PublishedPort]:
        """The container's published ports (for ListEndpoints)."""
        return await self._store(ns).ports(container_id)

    async def _apply_firewall(self, force: bool = False) -> None:
        """Make ctrd's table what the store says; skipped when that is what was last applied
        (most connects change no rule: rules name bridges and publishes, not endpoints)."""
        networks = tuple(firewall_network(n) for _, n in await self._networks_everywhere())
        publishes = await self._publishes()
        ruleset = nft.Ruleset(networks, publishes, self._table)
        if ruleset == self._applied and not force:
            return
        self._applied = None  # unknown until written; `_wanted` says what to restore
        self._wanted = ruleset
        if not networks and not publishes:
            await asyncio.to_thread(nft.delete, self._table)
        else:
            await asyncio.to_thread(nft.apply, ruleset)
        self._shape = nft.shape(ruleset)
        self._applied = ruleset
        if self._watching:
            self.watch_firewall()

    async def check_firewall(self) -> bool:
        """Rewrite ctrd's table when it is not as ctrd last wrote it (someone flushed the
        ruleset, or the table or a chain of it); True when it had to."""
        async with self._lock:
            if self._wanted is None:
                return False  # nothing written yet
            shape = await asyncio.to_thread(nft.fingerprint, self._table)
            if shape == self._shape and self._applied is not None:
                return False  # as written (a failed write is retried whatever the shape)
            now = time.monotonic()
            recent = [t for t in self._restores if now - t < RESTORE_WINDOW]
            if len(recent) >= RESTORE_BURST:
                # rewritten again and again: another program (another ctrd on the same table?)
                # rewrites it too. Wait before answering, never fight in a tight loop.
                log.error("firewall_contested", table=self._table, found=shape)
                await asyncio.sleep(RESTORE_WINDOW)
            log.warning("firewall_restored", table=self._table, found=shape, wanted=self._shape)
            await self._apply_firewall(force=True)
            self._restores = [*recent, time.monotonic()][-RESTORE_BURST:]
            return True

    def watch_firewall(self) -> None:
        """From now on, rewrite the table whenever another program changes the ruleset."""
        if self._watch is None:
            self._watch = FirewallWatch(self.check_firewall)
            self._watch.start()

    async def close(self) -> None:
        await self.settle()
        self._reservations.close()
        for resolver in self._dns.values():
            await resolver.close()
        if self._watch is not None:
            await self._watch.close()
            self._watch = None

    async def apply_firewall(self) -> None:
        """Rebuild the nft table from the store (after a firewall reload flushed it, say)."""
        async with self._lock:
            await self._apply_firewall(force=True)

    # restart

    async def reconcile(self, has_task: HasTask | None = None) -> ReconcileReport:
        """At daemon start: make the kernel match the store, removing only what is ctrd's.

        Rules, in order:
        1. every stored network's bridge is ensured (a reboot removed them);
        2. an endpoint whose namespace pin is gone (not a mount point) cannot be plugged again:
           its veth (if any) is deleted and its lease released;
        3. an endpoint whose pin is there is re-plugged (idempotent: a veth half-made by a crash
           is finished);
        4. a host link is deleted only when its name has ctrd's derived shape (`veth` + 7 hex)
           AND it is a port of a stored network's bridge AND no stored endpoint derives its
           name: another program's veths, or ports of other bridges, are never touched;
        5. a pin under `<state>/netns/<ns>/` with no stored endpoint is removed (caveat: a
           container disconnected from its only network loses its pin on restart);
        6. with `has_task` (the daemon's task list, loaded before): an endpoint of a container
           without a task is released like rule 2 (ctrd died between plumbing and the task's
           creation, or between the task's deletion and the release), and so is its pin;
        7. /etc files of containers with no pin are removed; published ports are held again
           and the embedded DNS serves every kept pin;
        8. the nft table is rebuilt from the store.
        """
        async with self._lock:
            networks = await self._networks_everywhere()
            by_id = {n.id: (ns, n) for ns, n in networks}
            mtus = {n.id: await self._ensure(n, again=True) for _, n in networks}
            released: list[str] = []
            wanted_links: set[str] = set()
            wanted_pins: set[Path] = set()
            for ns in sorted({ns for ns, _ in networks}):
                store = self._store(ns)
                for e in await store.endpoints():
                    key = endpoint_key(ns, e.network, e.container)
                    pin = self.pin_path(ns, e.container)
                    orphan = has_task is not None and not has_task(ns, e.container)
                    if orphan or not await asyncio.to_thread(netlink.is_pinned, pin):
                        await asyncio.to_thread(netlink.detach_endpoint, netlink.host_ifname(key))
                        await store.detach(e.network, e.container)
                        released.append(key)
                        continue
                    n = by_id[e.network][1]
                    await asyncio.to_thread(
                        netlink.attach_endpoint,
                        bridge_name(n.id),
                        pin,
                        netlink.host_ifname(key),
                        e.mac,
                        f"{e.address}/{n.config.subnet.prefixlen}",
                        str(n.config.gateway),
                        mtus[n.id],
                    )
                    wanted_links.add(netlink.host_ifname(key))
                    wanted_pins.add(pin)
            bridges = {bridge_name(n.id) for _, n in networks}
            ports = await asyncio.to_thread(_bridge_ports, bridges)
            stale_links = sorted(
                name for name in ports if _HOST_VETH.match(name) and name not in wanted_links
            )
            for name in stale_links:
                await asyncio.to_thread(netlink.detach_endpoint, name)
            stale_pins = [p for p in self._pins() if p not in wanted_pins]
            for pin in stale_pins:
                await asyncio.to_thread(netlink.netns_remove, pin)
            await self._release_empty_pin_dirs()
            for etc in self._etc_dirs():
                if self.pin_path(etc.parent.name, etc.name) not in wanted_pins:
                    for f in etc.iterdir():
                        f.unlink(missing_ok=True)
                    etc.rmdir()
            await self._restore_ports()
            for ns in sorted({ns for ns, _ in networks}):
                await self._refresh_names(ns)
            for pin in sorted(wanted_pins):
                ns, container_id = pin.parent.name, pin.name
                servers = _ext_servers(self.etc_dir(ns, container_id) / "resolv.conf")
                await self._serve_dns(ns, container_id, servers)
            await self._apply_firewall(force=True)
            return ReconcileReport(
                tuple(stale_links), tuple(str(p) for p in stale_pins), tuple(released)
            )

    async def _restore_ports(self) -> None:
        """Hold again the host ports the store records (the sockets died with the last
        daemon). A port another program took meanwhile stays recorded and published in the
        firewall (the DNAT still works: it comes before the local socket), and is logged."""
        by_owner: dict[str, list[ports.PortBinding]] = {}
        for p in await all_ports(self._db):
            by_owner.setdefault(port_owner(p.namespace, p.container), []).append(p.binding)
        for owner, bindings in by_owner.items():
            for failure in self._reservations.restore(owner, bindings):
                log.warning(
                    "published_port_taken", owner=owner, port=failure.binding.host_port,
                    reason=failure.reason,
                )  # fmt: skip

    async def _release_empty_pin_dirs(self) -> None:
        """`netns/<ns>` directories left without a pin stop being mount points (a crash
        between a pin's removal and its directory's release leaves one)."""
        root = self._state / "netns"
        if not root.is_dir():
            return
        for directory in sorted(d for d in root.iterdir() if d.is_dir()):
            if not any(directory.iterdir()):
                await asyncio.to_thread(netlink.netns_release_dir, directory)

    def _etc_dirs(self) -> list[Path]:
        root = self._state / "etc"
        if not root.is_dir():
            return []
        return sorted(p for d in root.iterdir() if d.is_dir() for p in d.iterdir() if p.is_dir())

    def _pins(self) -> list[Path]:
        root = self._state / "netns"
        if not root.is_dir():
            return []
        return sorted(p for d in root.iterdir() if d.is_dir() for p in d.iterdir())
