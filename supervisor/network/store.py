"""Networks and their endpoints' addresses, kept in the metadata database.

An endpoint row is an address lease: an address is in use exactly while its row exists, so the
database, not memory, says what is handed out. Each change is one write transaction
(`Database.write`): creating a network reads every existing subnet, checks or picks its own and
inserts it; attaching reads the network's `last_address` and the addresses in use, picks one
(`supervisor.network.ipam`), inserts the endpoint and moves `last_address`. A crash anywhere
leaves either all of that or none of it: no address is ever handed out twice or lost.

Subnets never overlap across namespaces (they share the host's routing table); names are unique
per namespace, ids everywhere. A network with endpoints is not deleted, and a namespace with
networks is not either (`NAMESPACE_CONTENTS`).

An endpoint's published ports are rows of their own (`set_ports`), each the actual host port the
daemon holds (`supervisor.network.ports.PortReservations`); they go with their endpoint, in the
same transaction as its address (`detach`, `release_container`). `all_ports` reads every
namespace's, with the endpoints' addresses: what the firewall's DNAT rules are rebuilt from and
what a restarted daemon binds again.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Protocol

from supervisor import identifiers
from supervisor.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from supervisor.metadata.db import Database
from supervisor.metadata.namespaces import ensure
from supervisor.network import ipam
from supervisor.network.ports import PortBinding
from supervisor.network.portspec import MAX_PORT, MIN_PORT


@dataclass(frozen=True)
class NetworkRequest:
    """What `network create` asks for; empty subnet: pick one from the pools."""

    id: str
    name: str
    driver: str = "bridge"
    subnet: str = ""
    gateway: str = ""
    ip_range: str = ""
    internal: bool = False
    mtu: int = 0  # 0: the default route's link MTU, decided by the caller
    labels: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Network:
    id: str
    name: str
    config: ipam.NetworkConfig
    driver: str = "bridge"
    internal: bool = False
    mtu: int = 0
    labels: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, str] = field(default_factory=dict)
    created_at: int = 0


@dataclass(frozen=True)
class Endpoint:
    network: str  # the network's id
    container: str
    address: IPv4Address
    mac: str = ""
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class PublishedPort:
    """A host port published for an endpoint, with the endpoint's address (the DNAT target)."""

    namespace: str
    network: str  # the network's id
    container: str
    address: IPv4Address
    binding: PortBinding


class NetworkStore(Protocol):
    """The networks of one namespace and the addresses of their endpoints."""

    async def create(
        self, request: NetworkRequest, host_taken: Sequence[IPv4Network] = ()
    ) -> Network:
        """`host_taken`: the host's on-link routes and resolvers, avoided by a picked subnet
        (a user-given one is only checked against other networks, as docker does)."""
        ...

    async def get(self, ref: str) -> Network:
        """By id or name."""
        ...

    async def list(self) -> builtins.list[Network]: ...

    async def delete(self, ref: str) -> None: ...

    async def attach(
        self,
        network: str,
        container: str,
        address: IPv4Address | None = None,
        mac: str = "",
        aliases: Sequence[str] = (),
        ports: Sequence[PortBinding] = (),
    ) -> Endpoint:
        """Lease an address (the requested one, else the next round-robin one) to `container`,
        with `ports` as its published ports, in one transaction."""
        ...

    async def detach(self, network: str, container: str) -> Endpoint:
        """Release the container's endpoint on `network`, its address and its ports."""
        ...

    async def release_container(self, container: str) -> builtins.list[Endpoint]:
        """Release every endpoint (and port) of a container being deleted; returns what was
        released."""
        ...

    async def endpoints(
        self, network: str | None = None, container: str | None = None
    ) -> builtins.list[Endpoint]:
        """The namespace's endpoints: on `network` (id or name), of `container`, or all."""
        ...

    async def set_ports(
        self, network: str, container: str, bindings: Sequence[PortBinding]
    ) -> None:
        """Record `bindings` as the published ports of the container's endpoint on `network`
        (id or name), replacing the ones it had, in one transaction."""
        ...

    async def ports(self, container: str | None = None) -> builtins.list[PublishedPort]:
        """The namespace's published ports (one container's when given)."""
        ...


_NETWORK_COLUMNS = (
    "id, name, driver, subnet, gateway, ip_range, internal, mtu, labels, options, created_at"
)


_NetworkRow = tuple[str, str, str, str, str, str, int, int, str, str, int]


def _network_from_row(row: _NetworkRow) -> Network:
    (nid, name, driver, subnet, gateway, ip_range, internal, mtu, labels, options, created) = row
    config = ipam.NetworkConfig(
        IPv4Network(subnet), IPv4Address(gateway), IPv4Network(ip_range) if ip_range else None
    )
    return Network(
        nid,
        name,
        config,
        driver,
        bool(internal),
        mtu,
        json.loads(labels),
        json.loads(options),
        created,
    )


def _endpoint_from_row(row: tuple[str, str, str, str, str]) -> Endpoint:
    network, container, address, mac, aliases = row
    return Endpoint(network, container, IPv4Address(address), mac, tuple(json.loads(aliases)))


_ENDPOINT_COLUMNS = "network, container, address, mac, aliases"


class SqliteNetworkStore:
    """`NetworkStore` over the metadata database, bound to one namespace."""

    def __init__(self, db: Database, ns: str) -> None:
        self._db = db
        self._ns = ns

    def _find(self, conn: sqlite3.Connection, ref: str) -> Network:
        row = (
            conn.execute(
                f"SELECT {_NETWORK_COLUMNS} FROM networks WHERE namespace = ? AND id = ?",
                (self._ns, ref),
            ).fetchone()
            or conn.execute(
                f"SELECT {_NETWORK_COLUMNS} FROM networks WHERE namespace = ? AND name = ?",
                (self._ns, ref),
            ).fetchone()
        )
        if row is None:
            raise NotFound(f'network "{ref}" in namespace "{self._ns}"')
        return _network_from_row(row)

    async def create(
        self, request: NetworkRequest, host_taken: Sequence[IPv4Network] = ()
    ) -> Network:
        identifiers.validate(request.id)
        identifiers.validate(request.name)
        if not 0 <= request.mtu <= 65535:
            raise InvalidArgument(f"invalid mtu {request.mtu}: it should be within 0-65535")

        def create(conn: sqlite3.Connection) -> Network:
            ensure(conn, self._ns)
            existing = [IPv4Network(s) for (s,) in conn.execute("SELECT subnet FROM networks")]
            if request.subnet:
                config = ipam.validate_network(
                    request.subnet, request.gateway, request.ip_range, existing
                )
            elif request.gateway or request.ip_range:
                raise InvalidArgument("gateway and ip-range need a subnet")
            else:
                config = ipam.config_for(ipam.pick_subnet(taken=[*existing, *host_taken]))
            network = Network(
                request.id,
                request.name,
                config,
                request.driver,
                request.internal,
                request.mtu,
                dict(request.labels),
                dict(request.options),
                time.time_ns(),
            )
            self._insert(conn, network)
            return network

        return await self._db.write(create)

    def _insert(self, conn: sqlite3.Connection, n: Network) -> None:
        if conn.execute(
            "SELECT 1 FROM networks WHERE namespace = ? AND name = ?", (self._ns, n.name)
        ).fetchone():
            raise AlreadyExists(f"network with name {n.name}")
        try:
            conn.execute(
                f"INSERT INTO networks (namespace, {_NETWORK_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    self._ns,
                    n.id,
                    n.name,
                    n.driver,
                    str(n.config.subnet),
                    str(n.config.gateway),
                    str(n.config.ip_range or ""),
                    int(n.internal),
                    n.mtu,
                    json.dumps(n.labels, sort_keys=True),
                    json.dumps(n.options, sort_keys=True),
                    n.created_at,
                ),
            )
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"network with id {n.id}") from None

    async def get(self, ref: str) -> Network:
        return await self._db.read(lambda conn: self._find(conn, ref))

    async def list(self) -> builtins.list[Network]:
        def list_(conn: sqlite3.Connection) -> builtins.list[Network]:
            rows = conn.execute(
                f"SELECT {_NETWORK_COLUMNS} FROM networks WHERE namespace = ? ORDER BY name",
                (self._ns,),
            )
            return [_network_from_row(row) for row in rows]

        return await self._db.read(list_)

    async def delete(self, ref: str) -> None:
        def delete(conn: sqlite3.Connection) -> None:
            n = self._find(conn, ref)
            if conn.execute(
                "SELECT 1 FROM endpoints WHERE namespace = ? AND network = ? LIMIT 1",
                (self._ns, n.id),
            ).fetchone():
                # docker's words
                raise FailedPrecondition(
                    f"error while removing network: network {n.name} id {n.id} "
                    "has active endpoints",
                    plain=True,
                )
            conn.execute("DELETE FROM networks WHERE namespace = ? AND id = ?", (self._ns, n.id))

        await self._db.write(delete)

    async def attach(
        self,
        network: str,
        container: str,
        address: IPv4Address | None = None,
        mac: str = "",
        aliases: Sequence[str] = (),
        ports: Sequence[PortBinding] = (),
    ) -> Endpoint:
        identifiers.validate(container)
        _check_bindings(ports)

        def attach(conn: sqlite3.Connection) -> Endpoint:
            n = self._find(conn, network)
            if conn.execute(
                "SELECT 1 FROM endpoints WHERE namespace = ? AND network = ? AND container = ?",
                (self._ns, n.id, container),
            ).fetchone():
                raise AlreadyExists(  # docker's words
                    f"endpoint with name {container} already exists in network {n.name}"
                )
            used = {
                IPv4Address(a)
                for (a,) in conn.execute(
                    "SELECT address FROM endpoints WHERE namespace = ? AND network = ?",
                    (self._ns, n.id),
                )
            }
            if address is not None:
                picked = ipam.check_static(n.config, address, used)
            else:
                (last,) = conn.execute(
                    "SELECT last_address FROM networks WHERE namespace = ? AND id = ?",
                    (self._ns, n.id),
                ).fetchone()
                picked = ipam.next_address(n.config, IPv4Address(last) if last else None, used)
                # only dynamic picks move the round-robin cursor, as in podman
                conn.execute(
                    "UPDATE networks SET last_address = ? WHERE namespace = ? AND id = ?",
                    (str(picked), self._ns, n.id),
                )
            endpoint = Endpoint(n.id, container, picked, mac, tuple(aliases))
            conn.execute(
                f"INSERT INTO endpoints (namespace, {_ENDPOINT_COLUMNS}, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    self._ns,
                    n.id,
                    container,
                    str(picked),
                    mac,
                    json.dumps(list(aliases)),
                    time.time_ns(),
                ),
            )
            for binding in ports:
                conn.execute(
                    f"INSERT INTO ports ({_PORT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    _port_row(self._ns, n.id, container, binding),
                )
            return endpoint

        return await self._db.write(attach, volatile=True)

    def _endpoints(
        self, conn: sqlite3.Connection, where: str, args: tuple[str, ...]
    ) -> builtins.list[Endpoint]:
        rows = conn.execute(
            f"SELECT {_ENDPOINT_COLUMNS} FROM endpoints WHERE namespace = ?{where} "
            "ORDER BY network, container",
            (self._ns, *args),
        )
        return [_endpoint_from_row(row) for row in rows]

    async def detach(self, network: str, container: str) -> Endpoint:
        def detach(conn: sqlite3.Connection) -> Endpoint:
            n = self._find(conn, network)
            found = self._endpoints(conn, " AND network = ? AND container = ?", (n.id, container))
            if not found:
                raise NotFound(f'endpoint of container "{container}" on network {n.name}')
            for table in ("ports", "endpoints"):  # ports first: they reference the endpoint
                conn.execute(
                    f"DELETE FROM {table} WHERE namespace = ? AND network = ? AND container = ?",
                    (self._ns, n.id, container),
                )
            return found[0]

        return await self._db.write(detach, volatile=True)

    async def release_container(self, container: str) -> builtins.list[Endpoint]:
        def release(conn: sqlite3.Connection) -> builtins.list[Endpoint]:
            found = self._endpoints(conn, " AND container = ?", (container,))
            for table in ("ports", "endpoints"):
                conn.execute(
                    f"DELETE FROM {table} WHERE namespace = ? AND container = ?",
                    (self._ns, container),
                )
            return found

        return await self._db.write(release, volatile=True)

    async def endpoints(
        self, network: str | None = None, container: str | None = None
    ) -> builtins.list[Endpoint]:
        def endpoints(conn: sqlite3.Connection) -> builtins.list[Endpoint]:
            where = ""
            args: tuple[str, ...] = ()
            if network is not None:
                where, args = " AND network = ?", (self._find(conn, network).id,)
            if container is not None:
                where, args = where + " AND container = ?", (*args, container)
            return self._endpoints(conn, where, args)

        return await self._db.read(endpoints)

    async def set_ports(
        self, network: str, container: str, bindings: Sequence[PortBinding]
    ) -> None:
        _check_bindings(bindings)

        def set_ports(conn: sqlite3.Connection) -> None:
            n = self._find(conn, network)
            if not self._endpoints(conn, " AND network = ? AND container = ?", (n.id, container)):
                raise NotFound(f'endpoint of container "{container}" on network {n.name}')
            conn.execute(
                "DELETE FROM ports WHERE namespace = ? AND network = ? AND container = ?",
                (self._ns, n.id, container),
            )
            for binding in bindings:
                conn.execute(
                    f"INSERT INTO ports ({_PORT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    _port_row(self._ns, n.id, container, binding),
                )

        await self._db.write(set_ports, volatile=True)

    async def ports(self, container: str | None = None) -> builtins.list[PublishedPort]:
        def ports(conn: sqlite3.Connection) -> builtins.list[PublishedPort]:
            if container is None:
                return _published(conn, "p.namespace = ?", (self._ns,))
            return _published(conn, "p.namespace = ? AND p.container = ?", (self._ns, container))

        return await self._db.read(ports)


async def all_networks(db: Database) -> list[tuple[str, Network]]:
    """Every namespace's networks, by namespace then name, in one read."""

    def read(conn: sqlite3.Connection) -> list[tuple[str, Network]]:
        rows = conn.execute(
            f"SELECT namespace, {_NETWORK_COLUMNS} FROM networks ORDER BY namespace, name"
        )
        return [(str(row[0]), _network_from_row(row[1:])) for row in rows]

    return await db.read(read)


async def all_ports(db: Database) -> list[PublishedPort]:
    """Every namespace's published ports with their endpoints' addresses (the whole host's)."""
    return await db.read(lambda conn: _published(conn, "1", ()))


_PORT_COLUMNS = "namespace, network, container, proto, host_ip, host_port, container_port"


def _check_bindings(bindings: Sequence[PortBinding]) -> None:
    """Refuse what the table's constraints would, in words: only actual, distinct host ports."""
    seen: set[tuple[str, str, int]] = set()
    for b in bindings:
        if b.proto not in ("tcp", "udp"):
            raise InvalidArgument(f"invalid protocol {b.proto!r} of a published port")
        for port in (b.host_port, b.container_port):
            if not MIN_PORT <= port <= MAX_PORT:
                raise InvalidArgument(f"invalid port {port}: it should be within 1-65535")
        key = (b.proto, str(b.host_ip or ""), b.host_port)
        if key in seen:
            raise InvalidArgument(f"host port {b.host_port}/{b.proto} published twice")
        seen.add(key)


def _port_row(
    ns: str, network: str, container: str, b: PortBinding
) -> tuple[str, str, str, str, str, int, int]:
    return ns, network, container, b.proto, str(b.host_ip or ""), b.host_port, b.container_port


def _published(conn: sqlite3.Connection, where: str, args: tuple[str, ...]) -> list[PublishedPort]:
    rows = conn.execute(
        "SELECT p.namespace, p.network, p.container, e.address, "
        "p.proto, p.host_ip, p.host_port, p.container_port "
        "FROM ports p JOIN endpoints e USING (namespace, network, container) "
        f"WHERE {where} "
        "ORDER BY p.namespace, p.network, p.container, p.container_port, p.proto, "
        "p.host_ip, p.host_port",
        args,
    )
    return [
        PublishedPort(
            ns,
            network,
            container,
            IPv4Address(address),
            PortBinding(proto, IPv4Address(host_ip) if host_ip else None, host_port, cport),
        )
        for ns, network, container, address, proto, host_ip, host_port, cport in rows
    ]
