"""ctrd.services.networks.v1.Networks over the namespaced network store: the control plane.

A thin translation: each call turns its request into `supervisor.network.store` terms, calls the
namespace's `NetworkStore` and turns the answer back. The store keeps the rules (names unique
per namespace, subnets that never overlap, no deletion of a network with endpoints), each change
in one transaction, so a refused call leaves nothing behind.

A picked subnet also avoids the host's own on-link routes and resolvers
(`netlink.host_taken_prefixes`, read on a worker thread at each Create without a subnet), minus
the routes of ctrd's own networks' bridges: those subnets are the store's to account for, and a
bridge left by a network deleted before its bridge was must not keep the subnet from being used
again.

A network's driver must be one the network manager has registered (`NetworkManager.drivers`:
`bridge`, and whatever the daemon registered besides); another is refused with docker's words
and code (`plugin "X" not found`, NotFound: its API's 404). Without a manager wired in (unit
tests) only `bridge` is known.

Connect and Disconnect change the container's `ctrd.io/networks` label and, when its task runs
on ctrd networks, its plumbing (`supervisor.network.live`); without that wired in (unit tests)
they change the record only (the endpoint's address lease).
"""

from __future__ import annotations

import asyncio
import secrets
from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network
from typing import Any, Protocol

import grpc
from google.protobuf import empty_pb2

from supervisor import filters
from supervisor.api.ctrd.services.networks.v1 import networks_pb2 as pb
from supervisor.api.ctrd.services.networks.v1 import networks_pb2_grpc as pb_grpc
from supervisor.errors import FailedPrecondition, InvalidArgument, NotFound
from supervisor.events import Publish
from supervisor.network import ipam
from supervisor.network.store import Endpoint, Network, NetworkRequest, NetworkStore
from supervisor.services import rpc
from supervisor.services.convert import timestamp

Context = grpc.aio.ServicerContext[Any, Any]
HostTaken = Callable[[], Awaitable[Sequence[IPv4Network]]]
Remove = Callable[[str, str], Awaitable[None]]  # (namespace, network id or name)
Drivers = Callable[[], Collection[str]]  # the names of the network drivers there are
BUILT_IN = frozenset(("bridge",))


class LiveNetworks(Protocol):
    """Connect and Disconnect of a container (`supervisor.network.live`): its labels changed,
    and a running one's plumbing too."""

    async def connect(
        self,
        ns: str,
        container_id: str,
        network: Network,
        address: IPv4Address | None,
        aliases: Sequence[str],
    ) -> Endpoint: ...

    async def disconnect(self, ns: str, container_id: str, network: Network) -> None: ...


async def host_taken() -> list[IPv4Network]:
    """The host's IPv4 on-link routes and resolvers (netlink blocks: a worker thread)."""
    from supervisor.network import netlink

    found = await asyncio.to_thread(netlink.host_taken_prefixes)
    return [n for n in found if isinstance(n, IPv4Network)]


def endpoint_to_pb(e: Endpoint, prefixlen: int, network: Network | None = None) -> pb.Endpoint:
    """The endpoint as the API shows it; with its network, that network's id, name and gateway."""
    message = pb.Endpoint(
        container_id=e.container,
        address=f"{e.address}/{prefixlen}",
        mac=e.mac,
        aliases=list(e.aliases),
        network_id=e.network,
    )
    if network is not None:
        message.network_name = network.name
        message.gateway = str(network.config.gateway)
    return message


def network_to_pb(n: Network, endpoints: Iterable[Endpoint] = ()) -> pb.Network:
    prefixlen = n.config.subnet.prefixlen
    return pb.Network(
        id=n.id,
        name=n.name,
        driver=n.driver,
        subnet=str(n.config.subnet),
        gateway=str(n.config.gateway),
        ip_range=str(n.config.ip_range or ""),
        internal=n.internal,
        labels=dict(n.labels),
        options=dict(n.options),
        created_at=timestamp(n.created_at),
        endpoints=[endpoint_to_pb(e, prefixlen, n) for e in endpoints],
        mtu=n.mtu,
    )


def _adaptor(n: Network) -> filters.Adaptor:
    fields = {
        "id": n.id,
        "name": n.name,
        "driver": n.driver,
        "subnet": str(n.config.subnet),
        "internal": "true" if n.internal else "false",
    }
    return filters.label_adaptor(fields, dict(n.labels))


def request_from_pb(
    request: pb.CreateNetworkRequest, drivers: Collection[str] = BUILT_IN
) -> NetworkRequest:
    driver = request.driver or "bridge"
    if driver not in drivers:  # dockerd's words (its plugin store's), and its 404
        raise NotFound(f'plugin "{driver}" not found', plain=True)
    if not request.name:
        raise InvalidArgument("network name must be provided")
    return NetworkRequest(
        id=request.id or secrets.token_hex(32),
        name=request.name,
        driver=driver,
        subnet=request.subnet,
        gateway=request.gateway,
        ip_range=request.ip_range,
        internal=request.internal,
        labels=dict(request.labels),
        options=dict(request.options),
    )


class NetworksService(pb_grpc.NetworksServicer):
    def __init__(
        self,
        store: Callable[[str], NetworkStore],
        host: HostTaken = host_taken,
        remove: Remove | None = None,
        live: LiveNetworks | None = None,
        drivers: Drivers = lambda: BUILT_IN,
        publish: Publish | None = None,
    ) -> None:
        """`remove(ns, ref)` deletes a network from the store and the kernel (its bridge, the
        firewall's rules: `NetworkManager.remove_network`); without it only the record goes.
        `drivers()`: the drivers a network may name (the manager's registry). `publish(ns,
        topic, event)`: the daemon's events (`/networks/create`; the manager publishes the
        others)."""
        self._publish = publish
        self._store = store
        self._host = host
        self._remove = remove or (lambda ns, ref: store(ns).delete(ref))
        self._live = live
        self._drivers = drivers

    def _for(self, context: Context) -> NetworkStore:
        return self._store(rpc.namespace(context))

    async def _with_endpoints(self, store: NetworkStore, networks: list[Network]) -> Any:
        by_network: defaultdict[str, list[Endpoint]] = defaultdict(list)
        for e in await store.endpoints():
            by_network[e.network].append(e)
        return [network_to_pb(n, by_network[n.id]) for n in networks]

    async def Create(self, request: pb.CreateNetworkRequest, context: Context) -> Any:
        store = self._for(context)
        wanted = request_from_pb(request, self._drivers())
        taken: Sequence[IPv4Network] = ()
        if not wanted.subnet:
            own = [n.config.subnet for n in await store.list()]
            taken = ipam.not_own(await self._host(), own)
        network = await store.create(wanted, taken)
        if self._publish is not None:
            created = pb.NetworkCreate(id=network.id, name=network.name, driver=network.driver)
            await self._publish(rpc.namespace(context), "/networks/create", created)
        return pb.CreateNetworkResponse(network=network_to_pb(network))

    async def Get(self, request: pb.GetNetworkRequest, context: Context) -> Any:
        store = self._for(context)
        network = await store.get(request.ref)
        endpoints = await store.endpoints(network.id)
        return pb.GetNetworkResponse(network=network_to_pb(network, endpoints))

    async def List(self, request: pb.ListNetworksRequest, context: Context) -> Any:
        selected = filters.parse_all(request.filters)
        store = self._for(context)
        networks = [n for n in await store.list() if selected.matches(_adaptor(n))]
        return pb.ListNetworksResponse(networks=await self._with_endpoints(store, networks))

    async def Delete(self, request: pb.DeleteNetworkRequest, context: Context) -> Any:
        await self._remove(rpc.namespace(context), request.ref)
        return empty_pb2.Empty()

    async def Prune(self, request: pb.PruneNetworksRequest, context: Context) -> Any:
        selected = filters.parse_all(request.filters)
        store = self._for(context)
        used = {e.network for e in await store.endpoints()}
        deleted = []
        for n in await store.list():
            if n.id in used or not selected.matches(_adaptor(n)):
                continue
            try:
                await self._remove(rpc.namespace(context), n.id)
            except FailedPrecondition:
                continue  # connected meanwhile: in use, as docker's prune leaves it
            deleted.append(n.name)
        return pb.PruneNetworksResponse(deleted=deleted)

    async def Connect(self, request: pb.ConnectRequest, context: Context) -> Any:
        ns = rpc.namespace(context)
        address: IPv4Address | None = None
        if request.address:
            address = ipam.parse_address(request.address)
        store = self._for(context)
        network = await store.get(request.network)
        if self._live is None:  # the record only (no data plane wired: unit tests)
            endpoint = await store.attach(
                network.id, request.container_id, address, aliases=list(request.aliases)
            )
        else:
            endpoint = await self._live.connect(
                ns, request.container_id, network, address, list(request.aliases)
            )
        return pb.ConnectResponse(
            endpoint=endpoint_to_pb(endpoint, network.config.subnet.prefixlen, network)
        )

    async def Disconnect(self, request: pb.DisconnectRequest, context: Context) -> Any:
        ns = rpc.namespace(context)
        store = self._for(context)
        if self._live is None:
            await store.detach(request.network, request.container_id)
        else:
            network = await store.get(request.network)
            await self._live.disconnect(ns, request.container_id, network)
        return empty_pb2.Empty()

    async def ListEndpoints(self, request: pb.ListEndpointsRequest, context: Context) -> Any:
        store = self._for(context)
        networks = {n.id: n for n in await store.list()}
        published: defaultdict[tuple[str, str], list[pb.PortMapping]] = defaultdict(list)
        for p in await store.ports(request.container_id or None):
            published[(p.network, p.container)].append(
                pb.PortMapping(
                    protocol=p.binding.proto,
                    host_ip=str(p.binding.host_ip or ""),
                    host_port=p.binding.host_port,
                    container_port=p.binding.container_port,
                )
            )
        found = []
        for e in await store.endpoints():
            if request.container_id and e.container != request.container_id:
                continue
            n = networks[e.network]
            message = endpoint_to_pb(e, n.config.subnet.prefixlen, n)
            message.ports.extend(published[(e.network, e.container)])
            found.append(message)
        return pb.ListEndpointsResponse(endpoints=found)
