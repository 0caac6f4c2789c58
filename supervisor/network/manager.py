"""The data plane of ctrd's networks: stored networks and endpoints made real in the kernel.

`NetworkManager` is what the daemon owns. It joins the durable store (`SqliteNetworkStore`, the
address leases), the network drivers (`supervisor.network.driver`: the kernel side of a network
and of an endpoint; `bridge` by default, others registered at construction and picked by each
network's `driver`), the namespace pins, the embedded DNS and ctrd's nftables table. Blocking
kernel calls run on worker threads (`asyncio.to_thread`); the event loop only waits.

What the manager keeps, whatever the driver: the leases, each container's namespace pin, names
(DNS, /etc files), the host ports held for published ports, and the nft table (written whole
from the store, with each network as its driver's `firewall` describes it). A network whose
driver this daemon does not have (a database written by a newer ctrd, say) is refused with
FailedPrecondition, and left alone by `reconcile`.

Layout on disk (under the daemon's state dir):
- `netns/<namespace>/<container>`: the pin of a container's network namespace; its path is what
  the container's OCI spec names (`linux.namespaces` network `path`).
- `etc/<namespace>/<container>/hosts` and `resolv.conf`: files to bind-mount into the container.

An endpoint's MAC is derived, never random: `02:` + 5 bytes of a hash of
`endpoint_key("<namespace>", "<network id>", "<container>")` (locally administered, unicast;
stable across reconnects so neighbours' ARP caches stay valid). The bridge driver derives its
names too (`supervisor.network.bridge`), so a retry or a restart finds what an earlier attempt
made.

Ordering kept for crashes: an address lease is recorded before the driver plugs anything, and
released only after the driver unplugged it, so an address is never configured on two links.
The one exception is a container's release: its pin goes first, the namespace dies with the
task's processes and the kernel deletes its links, so the leases go at once and the driver's
`detach` runs in the background (a restart's reconcile sweeps what a crash left). A network's
kernel side is ensured once per daemon life: again when an attach fails (it may have been
deleted since, then the attach is tried once more) and at every restart. The nft table is
rebuilt whole from the store after every change (and deleted when no network is left).

A task's plumbing (`prepare_task`) comes in two parts: what `runc create` needs (the leases, the
pin, the /etc files; its `ready` future says when) and then, while runc creates the container,
what only its process needs (the links, the firewall's elements, the names, the DNS listener);
Tasks.Create lets runc go at the first, and the init's start waits for the whole.

Events, as docker's network events (`publish`): `/networks/create` (the default network made),
`/networks/delete`, `/networks/connect` and `/networks/disconnect` (a task's plumbing made or
released, a live connect or disconnect).

A container may be on several networks: each is its own endpoint and lease (the bridge driver
names the peers `eth0`, `eth1`, ... in the order they are plugged); only the first network
(the one connected with `default_route`) routes the container out. A second `connect` of the
same container to the same network is refused with AlreadyExists, docker's words.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import re
import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import structlog
from google.protobuf.message import Message

from supervisor.api.ctrd.services.networks.v1 import networks_pb2 as pb
from supervisor.errors import AlreadyExists, FailedPrecondition, NotFound
from supervisor.events import Publish
from supervisor.metadata.db import Database
from supervisor.network import dns, ipam, netlink, nft, ports, portspec
from supervisor.network.bridge import BridgeDriver
from supervisor.network.bridge import bridge_name as bridge_name  # re-exported (tests)
from supervisor.network.driver import NetworkDriver, Plug, endpoint_key
from supervisor.network.labels import NETWORKS_LABEL, NetworkSettings, label_networks
from supervisor.network.names import NameTables
from supervisor.network.store import (
    Endpoint,
    Network,
    NetworkRequest,
    PublishedPort,
    SqliteNetworkStore,
    all_networks,
    all_ports,
)
from supervisor.network.watch import FirewallWatch

log = structlog.get_logger()

HOST_RESOLV_CONF = Path("/etc/resolv.conf")
FALLBACK_RESOLVERS = ("8.8.8.8", "8.8.4.4")  # docker's, when the host has only loopback ones

RESTORE_WINDOW, RESTORE_BURST = 10.0, 3  # more rewrites than that in the window: contested
DEFAULT_NETWORK = "bridge"  # docker's default network, made per namespace on first use
DEFAULT_LABEL = "ctrd.io/default-network"
HasTask = Callable[[str, str], bool]  # (namespace, container id): whether a task exists
NetnsOf = Callable[[str], Awaitable[Path | None]]  # a container id -> its task's netns path

_HEX64 = re.compile(r"[0-9a-f]{64}")
EXT_SERVERS = "# ExtServers:"


@dataclass(frozen=True)
class Attachment:
    """What a container's spec needs after `connect`: its namespace pin, and the endpoint."""

    netns: Path
    endpoint: Endpoint
    network: Network


# --- derivations (pure) ---------------------------------------------------------------------


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


# --- store reads ----------------------------------------------------------------------------


def _publish(p: PublishedPort) -> nft.Publish:
    return nft.Publish(
        network=p.network,
        proto=p.binding.proto,
        host_ip=p.binding.host_ip,
        host_port=p.binding.host_port,
        container_ip=p.address,
        container_port=p.binding.container_port,
    )


def _write_etc(
    etc: Path, hostname: str, addresses: Sequence[IPv4Address], settings: NetworkSettings
) -> None:
    """The container's hosts and resolv.conf written in place in `etc` (blocking)."""
    resolv_text = render_resolv(
        HOST_RESOLV_CONF.read_text(encoding="utf-8"),
        servers=settings.dns,
        search=settings.dns_search,
        options=settings.dns_options,
        embedded=dns.LISTEN_ADDRESS,
    )
    write_in_place(etc / "hosts", render_hosts(hostname, addresses, settings.extra_hosts))
    write_in_place(etc / "resolv.conf", resolv_text)


def _unpin_and_forget_files(pin: Path, etc: Path) -> None:
    """A released container's namespace pin and /etc files removed (blocking)."""
    netlink.netns_remove(pin)
    if pin.parent.is_dir() and not any(pin.parent.iterdir()):
        netlink.netns_release_dir(pin.parent)
    for name in ("hosts", "resolv.conf"):
        (etc / name).unlink(missing_ok=True)
    if etc.exists():
        etc.rmdir()


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
    """Networks, endpoints, /etc files and the firewall table for every namespace, the kernel
    side of networks and endpoints done by each network's driver."""

    def __init__(
        self,
        db: Database,
        state: Path,
        table: str = nft.DEFAULT_TABLE,
        watch: bool = False,
        drivers: Iterable[NetworkDriver] = (),
        publish: Publish | None = None,
    ) -> None:
        """`watch`: rewrite the table when another program changes the ruleset (the daemon's
        manager does; one made by a test need not). `drivers`: registered besides `bridge`,
        by their names (one named `bridge` takes the built-in one's place). `publish(ns,
        topic, event)`: the daemon's events (docker's network events)."""
        self._db = db
        self._publish = publish
        self._state = Path(state)
        self._table = table
        self._drivers: dict[str, NetworkDriver] = {BridgeDriver.name: BridgeDriver()}
        self._drivers.update((d.name, d) for d in drivers)
        self._ensured: dict[str, int] = {}  # network id -> MTU, for networks made or checked
        self._networks: dict[str, Network] = {}  # those, by id (a network never changes)
        self._background: set[asyncio.Task[None]] = set()
        self._watching = watch
        self._applied: nft.Ruleset | None = None  # the table as last written
        self._shape: nft.Shape | None = None  # what the kernel holds then, counted
        self._wanted: nft.Ruleset | None = None  # the table to keep, once one was written
        self._watch: FirewallWatch | None = None
        self._reservations = ports.PortReservations()  # the host ports held, by container
        self._dns: dict[tuple[str, ...], dns.EmbeddedDns] = {}  # by upstreams (() = host's)
        self._names: dict[str, NameTables] = {}  # by namespace
        # every namespace's published ports by (namespace, container), as the store holds
        # them; None until read (then kept in step by each change the manager makes)
        self._published: dict[tuple[str, str], tuple[nft.Publish, ...]] | None = None
        self._restores: list[float] = []  # when the table was last rewritten for others
        self._lock = asyncio.Lock()  # one kernel change (and nft rebuild) at a time

    @property
    def drivers(self) -> frozenset[str]:
        """The names of the registered drivers: what a network's `driver` may say."""
        return frozenset(self._drivers)

    def _driver(self, n: Network) -> NetworkDriver:
        driver = self._drivers.get(n.driver)
        if driver is None:
            raise FailedPrecondition(
                f'network {n.name} uses driver "{n.driver}", which this daemon does not have'
            )
        return driver

    def _firewall(self, n: Network) -> nft.Network | None:
        """The network as ctrd's table sees it; None when its driver brings its own rules, or
        is not here (its traffic is then none of this table's business)."""
        driver = self._drivers.get(n.driver)
        return None if driver is None else driver.firewall(n)

    # paths

    def pin_path(self, ns: str, container_id: str) -> Path:
        return self._state / "netns" / ns / container_id

    def etc_dir(self, ns: str, container_id: str) -> Path:
        return self._state / "etc" / ns / container_id

    def _store(self, ns: str) -> SqliteNetworkStore:
        return SqliteNetworkStore(self._db, ns)

    # networks

    async def ensure_network(self, ns: str, name: str) -> Network:
        """The stored network `name` with its kernel side up (a bridge: address, MTU,
        route_localnet)."""
        n = await self._store(ns).get(name)
        await self._ensure(n)
        return n

    async def _ensure(self, n: Network, again: bool = False) -> int:
        """The network's kernel side ensured by its driver (once per daemon life, or `again`);
        its MTU."""
        driver = self._driver(n)
        known = self._ensured.get(n.id)
        if known is not None and not again:
            return known
        mtu = await driver.ensure(n)
        self._ensured[n.id] = mtu
        self._networks[n.id] = n
        return mtu

    async def remove_network(self, ns: str, name: str) -> None:
        """Delete the stored network (refused while it has endpoints or a container, running or
        not, names it) and its kernel side (a bridge)."""
        async with self._lock:
            store = self._store(ns)
            n = await store.get(name)
            driver = self._driver(n)  # refused before anything goes
            if await self._db.read(lambda conn: _named_by_containers(conn, ns, n)):
                raise FailedPrecondition(  # docker's words; a stopped container counts too
                    f"error while removing network: network {n.name} id {n.id} "
                    "has active endpoints",
                    plain=True,
                )
            await store.delete(n.id)
            self._ensured.pop(n.id, None)
            self._networks.pop(n.id, None)
            await driver.remove(n)
            await self._apply_firewall()
        deleted = pb.NetworkDelete(id=n.id, name=n.name, driver=n.driver)
        await self._event(ns, "/networks/delete", deleted)

    async def _event(self, ns: str, topic: str, event: Message) -> None:
        if self._publish is not None:
            await self._publish(ns, topic, event)

    async def _connected(self, ns: str, container_id: str, n: Network, connected: bool) -> None:
        """The event of a container joining (or leaving) network `n`."""
        if connected:
            event: Message = pb.NetworkConnect(
                network_id=n.id, network_name=n.name, container_id=container_id
            )
        else:
            event = pb.NetworkDisconnect(
                network_id=n.id, network_name=n.name, container_id=container_id
            )
        await self._event(ns, "/networks/connect" if connected else "/networks/disconnect", event)

    # endpoints

    async def connect(
        self,
        ns: str,
        container_id: str,
        network: str,
        static_ip: IPv4Address | None = None,
        aliases: Sequence[str] = (),
        default_route: bool = True,
        published: Sequence[ports.PortBinding] = (),
        firewall: bool = True,
    ) -> Attachment:
        """Lease an address, pin the container's namespace, have the network's driver plug
        the endpoint in.

        A container may be on several networks: each gets the next free `eth<N>`; only the
        one connected with `default_route` routes the container out. Already on `network`:
        AlreadyExists, docker's words."""
        async with self._lock:
            n = await self._store(ns).get(network)
            endpoint = await self._lease(ns, container_id, n, static_ip, aliases, published)
            pin = self.pin_path(ns, container_id)
            await self._plug(ns, container_id, n, endpoint, default_route, fresh=None)
            if firewall:
                await self._apply_firewall()
            return Attachment(pin, endpoint, n)

    async def _lease(
        self,
        ns: str,
        container_id: str,
        n: Network,
        static_ip: IPv4Address | None,
        aliases: Sequence[str],
        published: Sequence[ports.PortBinding],
        reload: bool = True,
    ) -> Endpoint:
        """The container's endpoint on `n` recorded (its address, the ports published with
        it) before anything of it is made. Already on `n`: AlreadyExists, docker's words.
        `reload`: the ports kept for the firewall read again now (else the caller does,
        before the next firewall write). The caller holds the lock."""
        self._driver(n)  # refused before anything is recorded
        key = endpoint_key(ns, n.id, container_id)
        endpoint = await self._store(ns).attach(
            n.id, container_id, static_ip, endpoint_mac(key), tuple(aliases), published
        )
        if published and reload:
            await self._reload_ports(ns, container_id)
        return endpoint

    async def _plug(
        self,
        ns: str,
        container_id: str,
        n: Network,
        endpoint: Endpoint,
        default_route: bool,
        fresh: bool | None,
    ) -> None:
        """Have `n`'s driver plug the leased `endpoint` into the container's namespace (pinned
        first when `fresh` is None; `fresh`: whether the pin was just made); when that fails,
        the lease goes too. The caller holds the lock."""
        driver = self._driver(n)
        pin = self.pin_path(ns, container_id)
        try:
            mtu = await self._ensure(n)
            if fresh is None:
                fresh = await asyncio.to_thread(netlink.netns_create, pin)
            plug = Plug(ns, n, endpoint, pin, mtu, default_route, fresh)
            try:
                await driver.attach(plug)
            except Exception:
                # the network's kernel side, checked once per daemon life, may be gone
                # since (a bridge deleted by hand): ensured again, and attached once more
                mtu = await self._ensure(n, again=True)
                await driver.attach(replace(plug, mtu=mtu, fresh=False))
        except BaseException:
            await driver.detach(ns, n, container_id)
            await self._store(ns).detach(n.id, container_id)
            await self._reload_ports(ns, container_id)
            raise

    async def disconnect(self, ns: str, container_id: str, network: str) -> Network:
        """Unplug the container from `network`; the lease goes after the link. The pin stays.
        The network."""
        async with self._lock:
            store = self._store(ns)
            n = await store.get(network)
            await self._driver(n).detach(ns, n, container_id)
            await store.detach(n.id, container_id)
            await self._reload_ports(ns, container_id)
            await self._apply_firewall()
            return n

    async def release(self, ns: str, container_id: str) -> None:
        """Everything the container had: every endpoint, its leases, its pin and /etc files."""
        async with self._lock:
            store = self._store(ns)
            mine = await store.endpoints(container=container_id)
            pin, etc = self.pin_path(ns, container_id), self.etc_dir(ns, container_id)
            if not mine and not pin.exists() and not etc.exists():
                await self._free_ports(ns, container_id)  # reserved by a failed prepare
                return  # never networked: no kernel call, no firewall rebuild
            await self._stop_dns(ns, container_id)
            # Unpinned, the namespace dies with its last user (the task's processes are gone):
            # the kernel then deletes its links (a bridge's veths). Deleting one is slow (~20 ms
            # of RCU waits), so it is not waited for here; the drivers' detach runs in the
            # background for whatever is left, and a restart's reconcile sweeps what a crash
            # left behind.
            await asyncio.to_thread(_unpin_and_forget_files, pin, etc)
            unplug = [self._networks.get(e.network) or await store.get(e.network) for e in mine]
            await store.release_container(container_id)
            published = self._published is None or (ns, container_id) in self._published
            if self._published is not None:
                self._published.pop((ns, container_id), None)  # none left: no need to read
            await self._free_ports(ns, container_id)
            self._in_background(self._detach_all(ns, container_id, unplug))
            if ns in self._names:
                self._tables(ns).replace(container_id, ())  # none left
            else:
                await self._refresh_names(ns)
            if published:  # rules name networks and published ports, not endpoints
                await self._apply_firewall()
        for n in unplug:
            await self._connected(ns, container_id, n, False)

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _detach_all(self, ns: str, container_id: str, networks: Sequence[Network]) -> None:
        for n in networks:
            try:
                await self._driver(n).detach(ns, n, container_id)
            except Exception:
                log.exception("endpoint_removal_failed", ns=ns, id=container_id, network=n.id)

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
        ready: asyncio.Future[None] | None = None,
    ) -> bytes:
        """The spec a task is created with, after the plumbing its labels ask for
        (`supervisor.network.labels`): unchanged without them. On networks: the container is
        connected to each (the default `bridge` is made on first use), the first giving the
        default route, its hosts and resolv.conf are written, and the spec names its namespace
        pin and mounts the two files. Sharing another container's network (`container:`): the
        spec names that one's namespace and mounts its files. A failure releases what was
        made.

        `ready` is resolved once what the runtime's create needs is there (the leases, the
        pin, the two files): the links, the firewall and the names, which only the
        container's process needs, are made after it, while the runtime creates the
        container."""
        settings = NetworkSettings.from_labels(labels)
        parsed = json.loads(spec)
        if settings.network_container:
            return json.dumps(
                await self._shared_spec(ns, parsed, settings.network_container, netns_of)
            ).encode()
        if not settings.networks:
            return spec  # none/host: published ports are dropped, as docker drops them
        static_ip = ipam.parse_address(settings.ip) if settings.ip else None
        requests = [r for text in settings.ports for r in portspec.parse_publish(text)]
        # held before anything is plumbed: a taken port fails the task with nothing made
        bindings = self._reservations.reserve(port_owner(ns, container_id), requests)
        try:
            leases: list[tuple[Network, Endpoint]] = []
            for position, name in enumerate(settings.networks):
                if name == DEFAULT_NETWORK:
                    n = await self.ensure_default_network(ns)
                else:
                    n = await self._store(ns).get(name)
                async with self._lock:
                    endpoint = await self._lease(
                        ns,
                        container_id,
                        n,
                        static_ip if position == 0 else None,
                        endpoint_names(container_id, settings.name, settings.aliases_on(name)),
                        bindings if position == 0 else (),  # leased with its address
                        reload=False,  # before the firewall, below
                    )
                leases.append((n, endpoint))
            pin = self.pin_path(ns, container_id)
            hostname = str(parsed.get("hostname") or container_id[:12])
            addresses = [e.address for _, e in leases]
            etc = self.etc_dir(ns, container_id)

            def pin_and_files() -> bool:  # one trip to a thread
                fresh = netlink.netns_create(pin)
                _write_etc(etc, hostname, addresses, settings)
                return fresh

            fresh = await asyncio.to_thread(pin_and_files)
            if ready is not None and not ready.done():
                ready.set_result(None)
            async with self._lock:
                for position, (n, endpoint) in enumerate(leases):
                    await self._plug(
                        ns, container_id, n, endpoint, position == 0, fresh and position == 0
                    )
                if bindings:
                    await self._reload_ports(ns, container_id)
                await self._apply_firewall()  # once, for every network and the ports
            await self._refresh_names(ns, container_id)
            await self._serve_dns(ns, container_id, settings.dns)
        except BaseException:
            await self.release(ns, container_id)
            raise
        for n, _ in leases:
            await self._connected(ns, container_id, n, True)
        rewritten = spec_with_network(parsed, pin, etc / "hosts", etc / "resolv.conf")
        return json.dumps(rewritten).encode()

    def plan_task(
        self, ns: str, container_id: str, labels: Mapping[str, str], spec: bytes
    ) -> bytes | None:
        """What `prepare_task` will answer for a container on networks of its own, told before
        the plumbing is done (its namespace pin and files have fixed paths), so that the task's
        bundle and shim can be made meanwhile; None when only `prepare_task` can tell (no
        networks, or another container's)."""
        settings = NetworkSettings.from_labels(labels)
        if settings.network_container or not settings.networks:
            return None
        etc = self.etc_dir(ns, container_id)
        planned = spec_with_network(
            json.loads(spec), self.pin_path(ns, container_id), etc / "hosts", etc / "resolv.conf"
        )
        return json.dumps(planned).encode()

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
            made = await store.create(request, taken)
        except AlreadyExists:
            return await store.get(DEFAULT_NETWORK)  # made meanwhile by another task
        await self._event(
            ns, "/networks/create", pb.NetworkCreate(id=made.id, name=made.name, driver=made.driver)
        )
        return made

    async def hosts_and_resolv(
        self,
        ns: str,
        container_id: str,
        hostname: str,
        settings: NetworkSettings | None = None,
    ) -> tuple[Path, Path]:
        """Write the container's hosts and resolv.conf (in place); their paths, to bind-mount."""
        settings = settings or NetworkSettings()
        addresses = [e.address for e in await self._store(ns).endpoints(container=container_id)]
        etc = self.etc_dir(ns, container_id)
        await asyncio.to_thread(_write_etc, etc, hostname, addresses, settings)
        return etc / "hosts", etc / "resolv.conf"

    # names: the embedded DNS

    def _tables(self, ns: str) -> NameTables:
        tables = self._names.get(ns)
        if tables is None:
            tables = self._names[ns] = NameTables(lambda e: dns_names(e.container, e.aliases))
        return tables

    async def _refresh_names(self, ns: str, container_id: str | None = None) -> None:
        """The namespace's name tables after a change of `container_id`'s endpoints (read
        again from the store), or rebuilt whole from the store when no container is named or
        the namespace has no tables yet."""
        store = self._store(ns)
        if container_id is None or ns not in self._names:
            self._tables(ns).rebuild(await store.endpoints())
            return
        self._tables(ns).replace(container_id, await store.endpoints(container=container_id))

    def _lookup(self, ns: str, container_id: str, name: str) -> list[IPv4Address]:
        """`name` on the networks `container_id` is on: docker's scoping."""
        tables = self._names.get(ns)
        return tables.lookup(container_id, name) if tables is not None else []

    def _reverse_lookup(self, ns: str, container_id: str, address: IPv4Address) -> str | None:
        tables = self._names.get(ns)
        return tables.reverse(container_id, address) if tables is not None else None

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
        await self._refresh_names(ns, container_id)
        await self.hosts_and_resolv(ns, container_id, hostname, settings)
        await self._connected(ns, container_id, attachment.network, True)
        return attachment.endpoint

    async def disconnect_running(
        self, ns: str, container_id: str, network: str, hostname: str, settings: NetworkSettings
    ) -> None:
        """Unplug a running container from one network and rewrite its /etc/hosts."""
        n = await self.disconnect(ns, container_id, network)
        await self._refresh_names(ns, container_id)
        await self.hosts_and_resolv(ns, container_id, hostname, settings)
        await self._connected(ns, container_id, n, False)

    # firewall

    async def _networks_everywhere(self) -> list[tuple[str, Network]]:
        return await all_networks(self._db)

    async def _publishes(self) -> tuple[nft.Publish, ...]:
        """Published ports of every endpoint, of every namespace (the table is host-wide), in
        the store's order; read from the store once, then kept in step (`_reload_ports`)."""
        if self._published is None:
            found: dict[tuple[str, str], list[nft.Publish]] = {}
            for p in await all_ports(self._db):
                found.setdefault((p.namespace, p.container), []).append(_publish(p))
            self._published = {key: tuple(value) for key, value in found.items()}
        return tuple(p for key in sorted(self._published) for p in self._published[key])

    async def _reload_ports(self, ns: str, container_id: str) -> None:
        """Read the container's published ports again after the store changed them."""
        if self._published is None:
            return  # read whole at the next need
        mine = tuple(_publish(p) for p in await self._store(ns).ports(container_id))
        if mine:
            self._published[(ns, container_id)] = mine
        else:
            self._published.pop((ns, container_id), None)

    async def published(self, ns: str, container_id: str) -> list[PublishedPort]:
        """The container's published ports (for ListEndpoints)."""
        return await self._store(ns).ports(container_id)

    async def _apply_firewall(self, force: bool = False) -> None:
        """Make ctrd's table what the store says; skipped when that is what was last applied
        (most connects change no rule: rules name bridges and publishes, not endpoints)."""
        found = (self._firewall(n) for _, n in await self._networks_everywhere())
        networks = tuple(f for f in found if f is not None)
        ours = {f.name for f in networks}
        publishes = tuple(p for p in await self._publishes() if p.network in ours)
        ruleset = nft.Ruleset(networks, publishes, self._table)
        if ruleset == self._applied and not force:
            return
        # a change of publishes alone is made as map elements, unless the table is being
        # restored (forced): then what the kernel holds is not what was last applied
        previous = None if force else self._applied
        self._applied = None  # unknown until written; `_wanted` says what to restore
        self._wanted = ruleset
        if not networks and not publishes:
            await asyncio.to_thread(nft.delete, self._table)
        else:
            await asyncio.to_thread(nft.apply, ruleset, previous)
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
        1. every stored network's kernel side is ensured by its driver (a reboot removed the
           bridges); a network whose driver this daemon does not have is logged and left as it
           is, with its endpoints (their leases, and their pins when pinned);
        2. an endpoint whose namespace pin is gone (not a mount point) cannot be plugged again:
           the driver unplugs it (deletes its veth, if any) and its lease is released;
        3. an endpoint whose pin is there is re-plugged (idempotent: a veth half-made by a crash
           is finished);
        4. each driver sweeps what it made for its networks that no kept endpoint accounts for
           (the bridge driver: a host link whose name has ctrd's derived shape, `veth` + 7 hex,
           AND that is a port of a stored network's bridge AND that no stored endpoint derives:
           another program's veths, or ports of other bridges, are never touched);
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
            self._published = None  # endpoints released here take their ports: read again
            networks = await self._networks_everywhere()
            usable = [(ns, n) for ns, n in networks if self._has_driver(ns, n)]
            by_id = {n.id: n for _, n in networks}
            mtus = {n.id: await self._ensure(n, again=True) for _, n in usable}
            released: list[str] = []
            kept: list[Plug] = []
            wanted_pins: set[Path] = set()
            for ns in sorted({ns for ns, _ in networks}):
                gone, plugged, pins = await self._replug(ns, by_id, mtus, has_task)
                released.extend(gone)
                kept.extend(plugged)
                wanted_pins.update(pins)
            stale_links: list[str] = []
            for name, driver in self._drivers.items():
                theirs = [n for _, n in usable if n.driver == name]
                stale_links.extend(
                    await driver.sweep(theirs, [p for p in kept if p.network.driver == name])
                )
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
                tuple(sorted(stale_links)), tuple(str(p) for p in stale_pins), tuple(released)
            )

    def _has_driver(self, ns: str, n: Network) -> bool:
        if n.driver in self._drivers:
            return True
        log.error("network_driver_unknown", ns=ns, network=n.id, name=n.name, driver=n.driver)
        return False

    async def _replug(
        self,
        ns: str,
        by_id: Mapping[str, Network],
        mtus: Mapping[str, int],
        has_task: HasTask | None,
    ) -> tuple[list[str], list[Plug], set[Path]]:
        """Reconcile's rules 2, 3 and 6 for one namespace's endpoints (`by_id`: every stored
        network; `mtus`: those ensured): the keys of the endpoints released, the plugs of those
        kept, the pins kept."""
        store = self._store(ns)
        released: list[str] = []
        kept: list[Plug] = []
        pins: set[Path] = set()
        for e in await store.endpoints():
            n, pin = by_id[e.network], self.pin_path(ns, e.container)
            if n.id not in mtus:  # a driver this daemon does not have: left as it is
                if await asyncio.to_thread(netlink.is_pinned, pin):
                    pins.add(pin)
                continue
            driver = self._driver(n)
            orphan = has_task is not None and not has_task(ns, e.container)
            if orphan or not await asyncio.to_thread(netlink.is_pinned, pin):
                await driver.detach(ns, n, e.container)
                await store.detach(n.id, e.container)
                released.append(endpoint_key(ns, n.id, e.container))
                continue
            plug = Plug(ns, n, e, pin, mtus[n.id])
            await driver.attach(plug)
            kept.append(plug)
            pins.add(pin)
        return released, kept, pins

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
