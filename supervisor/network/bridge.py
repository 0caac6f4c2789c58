"""The `bridge` network driver: docker's default, a Linux bridge per network and a veth per
endpoint (`supervisor.network.driver` says what the manager keeps and what a driver owns).

Names derived, never random, so that a retry or a restart finds what an earlier attempt made:
- bridge: `br-` + 12 hex of the network id (the id itself when it is hex, as docker's `br-<id>`;
  a hash of it otherwise), 15 bytes;
- host end of a veth: `netlink.host_ifname(endpoint_key(...))`, `veth` + 7 hex; its peer in the
  container's namespace is the lowest free `eth<N>`, known by the endpoint's MAC.

A bridge gets the gateway's address, the network's MTU (else the uplink's) and
`route_localnet=1` (127.0.0.1 publishing: DNATed loopback traffic may leave by the bridge, see
`nft`'s notes). Host-wide switch: `net.ipv4.ip_forward=1` is set the first time a bridge is
ensured, as dockerd does; without it nothing routes between a bridge and the uplink (or
published ports). It is never turned back off (other programs may rely on it by then).

Only ctrd's own links are ever deleted by `sweep`: a host link whose name has the derived
shape (`veth` + 7 hex), that is a port of one of the given networks' bridges, and that no kept
endpoint derives. Another program's veths, or ports of other bridges, are never touched.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import re
from collections.abc import Sequence

from pyroute2 import IPRoute

from supervisor.network import netlink, nft
from supervisor.network.driver import Plug, endpoint_key
from supervisor.network.store import Network

IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"

_HEX12 = re.compile(r"^[0-9a-f]{12}")
_HOST_VETH = re.compile(r"^veth[0-9a-f]{7}$")  # netlink.host_ifname's pattern


def bridge_name(network_id: str) -> str:
    """`br-` + 12 hex: the id's own first 12 when it is hex (docker's), else a hash of it."""
    if _HEX12.match(network_id):
        return "br-" + network_id[:12]
    return "br-" + hashlib.sha256(network_id.encode()).hexdigest()[:12]


def host_link(ns: str, network_id: str, container: str) -> str:
    """The host end of the container's veth on the network."""
    return netlink.host_ifname(endpoint_key(ns, network_id, container))


def firewall_network(n: Network) -> nft.Network:
    return nft.Network(
        name=n.id, bridge=bridge_name(n.id), subnet=n.config.subnet, internal=n.internal
    )


def _write_sysctl(path: str, value: str) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(value)


def _ensure_bridge(n: Network, mtu: int) -> None:
    bridge = bridge_name(n.id)
    netlink.ensure_bridge(bridge, f"{n.config.gateway}/{n.config.subnet.prefixlen}", mtu)
    # 127.0.0.1 publishing: DNATed loopback traffic may leave by this bridge (nft's notes)
    _write_sysctl(f"/proc/sys/net/ipv4/conf/{bridge}/route_localnet", "1")


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


class BridgeDriver:
    """`NetworkDriver` for `bridge` networks over `netlink` (blocking calls on worker
    threads)."""

    name = "bridge"

    def __init__(self) -> None:
        self._forwarding = False  # ip_forward set by this daemon already

    async def ensure(self, network: Network) -> int:
        mtu = network.mtu or await asyncio.to_thread(netlink.uplink_mtu)
        await asyncio.to_thread(_ensure_bridge, network, mtu)
        if not self._forwarding:
            await asyncio.to_thread(_write_sysctl, IP_FORWARD, "1")
            self._forwarding = True
        return mtu

    async def remove(self, network: Network) -> None:
        await asyncio.to_thread(netlink.remove_bridge, bridge_name(network.id))

    async def attach(self, plug: Plug) -> str:
        n, e = plug.network, plug.endpoint
        work = functools.partial(
            netlink.attach_endpoint,
            bridge_name(n.id),
            plug.pin,
            netlink.host_ifname(plug.key),
            e.mac,
            f"{e.address}/{n.config.subnet.prefixlen}",
            str(n.config.gateway),
            plug.mtu,
            default_route=plug.default_route,
            fresh=plug.fresh,
        )
        return await asyncio.to_thread(work)

    async def detach(self, ns: str, network: Network, container: str) -> None:
        await asyncio.to_thread(netlink.detach_endpoint, host_link(ns, network.id, container))

    def firewall(self, network: Network) -> nft.Network:
        return firewall_network(network)

    async def sweep(self, networks: Sequence[Network], kept: Sequence[Plug]) -> list[str]:
        if not networks:
            return []
        wanted = {netlink.host_ifname(p.key) for p in kept}
        ports = await asyncio.to_thread(_bridge_ports, {bridge_name(n.id) for n in networks})
        stale = sorted(name for name in ports if _HOST_VETH.match(name) and name not in wanted)
        for name in stale:
            await asyncio.to_thread(netlink.detach_endpoint, name)
        return stale
