"""IP address management for bridge networks, as pure functions over IPv4 values.

Two layers, as in docker: a network's subnet is picked from address pools (or given by the
user and checked), then each endpoint's address is picked inside that subnet. Nothing here
reads the host or the database; the callers pass what is taken.

Invariants kept:
- a picked or accepted subnet overlaps none of the `taken` ones (host on-link routes, host
  resolvers, other ctrd networks);
- a dynamic address is never the subnet's network or broadcast address, nor the gateway, nor
  outside the ip range, nor one in use; it is the first free one after the network's `last`
  (round-robin, wrapping), so a crash-looping container does not get its old address back at
  once while peers may still cache it (podman and CNI host-local do the same; docker hands the
  lowest free one out again);
- a static address may lie outside the ip range but must be inside the subnet (docker's rule:
  its bitmask covers the whole subnet, the range only bounds dynamic picks).
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from supervisor.errors import AlreadyExists, FailedPrecondition, InvalidArgument


@dataclass(frozen=True)
class SubnetPool:
    """A base prefix split in subnets of prefix length `size` (moby's `NetworkToSplit`)."""

    base: IPv4Network
    size: int

    def subnets(self) -> Iterator[IPv4Network]:
        return self.base.subnets(new_prefix=max(self.size, self.base.prefixlen))


def _pool(base: str, size: int) -> SubnetPool:
    return SubnetPool(IPv4Network(base), size)


# moby's libnetwork/ipamutils local-scope defaults: 172.17-31.0.0/16, then 192.168.0.0/16 in /20s.
DEFAULT_POOLS: tuple[SubnetPool, ...] = (
    _pool("172.17.0.0/16", 16),
    _pool("172.18.0.0/16", 16),
    _pool("172.19.0.0/16", 16),
    _pool("172.20.0.0/14", 16),
    _pool("172.24.0.0/14", 16),
    _pool("172.28.0.0/14", 16),
    _pool("192.168.0.0/16", 20),
)

# The smallest subnet with a network, a broadcast, a gateway and one address to hand out.
MAX_PREFIXLEN = 30


@dataclass(frozen=True)
class NetworkConfig:
    """A network's addressing: its subnet, gateway and the range dynamic addresses come from
    (`ip_range` None: the whole subnet)."""

    subnet: IPv4Network
    gateway: IPv4Address
    ip_range: IPv4Network | None = None

    def dynamic_bounds(self) -> tuple[int, int]:
        """The first and last address (as integers) a dynamic pick may return, gateway aside."""
        span = self.ip_range or self.subnet
        low = max(int(span.network_address), int(self.subnet.network_address) + 1)
        high = min(int(span.broadcast_address), int(self.subnet.broadcast_address) - 1)
        return low, high

    def dynamic_count(self) -> int:
        """How many addresses dynamic picks can hand out in all."""
        low, high = self.dynamic_bounds()
        return max(0, high - low + 1) - (1 if low <= int(self.gateway) <= high else 0)


def as_networks(items: Iterable[IPv4Network | IPv4Address]) -> list[IPv4Network]:
    """Addresses as /32 networks, so resolvers and routes can be passed together as `taken`."""
    return [IPv4Network(item) if isinstance(item, IPv4Address) else item for item in items]


def _overlaps_any(subnet: IPv4Network, taken: Iterable[IPv4Network]) -> bool:
    return any(subnet.overlaps(other) for other in taken)


def pick_subnet(
    pools: Sequence[SubnetPool] = DEFAULT_POOLS,
    taken: Iterable[IPv4Network] = (),
    size: int | None = None,
) -> IPv4Network:
    """The first subnet of the pools, in order, that overlaps nothing taken.

    `size` overrides each pool's split size (a prefix length), as docker's per-pool `size`.
    """
    taken = list(taken)
    for pool in pools:
        split = pool if size is None else SubnetPool(pool.base, size)
        for candidate in split.subnets():
            if not _overlaps_any(candidate, taken):
                return candidate
    # docker 20.10's words for the same exhaustion
    raise FailedPrecondition(
        "could not find an available, non-overlapping IPv4 address pool among the defaults "
        "to assign to the network"
    )


def _parse_network(text: str, what: str) -> IPv4Network:
    try:
        if "/" not in text:
            raise ValueError(text)
        given = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise InvalidArgument(f"invalid {what} {text}: invalid CIDR block notation") from None
    if not isinstance(given, IPv4Network):
        raise InvalidArgument(f"invalid {what} {text}: only IPv4 is supported")
    if str(given) != text:
        raise InvalidArgument(f"invalid {what} {text}: it should be {given}")
    return given


def parse_address(text: str, what: str = "address") -> IPv4Address:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise InvalidArgument(f"invalid {what} {text}: invalid address") from None
    if not isinstance(address, IPv4Address):
        raise InvalidArgument(f"invalid {what} {text}: only IPv4 is supported")
    return address


def config_for(subnet: IPv4Network) -> NetworkConfig:
    """A picked subnet's addressing: the gateway is its first host, as docker chooses."""
    return NetworkConfig(subnet, subnet.network_address + 1)


def validate_network(
    subnet: str,
    gateway: str = "",
    ip_range: str = "",
    taken: Iterable[IPv4Network] = (),
) -> NetworkConfig:
    """Check user-given `--subnet/--gateway/--ip-range` (docker's words where it has them).

    `taken` holds what the subnet may not overlap (other ctrd networks' subnets); an empty
    gateway means the subnet's first host.
    """
    net = _parse_network(subnet, "subnet")
    if net.prefixlen > MAX_PREFIXLEN:
        raise InvalidArgument(
            f"invalid subnet {net}: too small for a network, a gateway and one address "
            f"(at most /{MAX_PREFIXLEN})"
        )
    gw = net.network_address + 1
    if gateway:
        gw = parse_address(gateway, "gateway")
        if gw not in net:
            raise InvalidArgument(
                f"invalid gateway {gateway}: parent subnet {net} doesn't contain this address"
            )
        if gw in (net.network_address, net.broadcast_address):
            raise InvalidArgument(
                f"invalid gateway {gateway}: it is the network or broadcast address of {net}"
            )
    span = None
    if ip_range:
        span = _parse_network(ip_range, "ip-range")
        if span.prefixlen < net.prefixlen:
            raise InvalidArgument(
                f"invalid ip-range {ip_range}: CIDR block is bigger than its parent subnet {net}"
            )
        if not span.subnet_of(net):
            raise InvalidArgument(
                f"invalid ip-range {ip_range}: parent subnet {net} doesn't contain ip-range"
            )
    config = NetworkConfig(net, gw, span)
    if config.dynamic_count() == 0:
        raise InvalidArgument(f"invalid ip-range {ip_range}: it leaves no address to hand out")
    if _overlaps_any(net, taken):
        # libnetwork's ErrPoolOverlap
        raise FailedPrecondition(f"{net}: Pool overlaps with other one on this address space")
    return config


def next_address(
    config: NetworkConfig, last: IPv4Address | None, used: Collection[IPv4Address]
) -> IPv4Address:
    """The first free address after `last` in the dynamic range, wrapping once around it."""
    low, high = config.dynamic_bounds()
    start = low
    if last is not None and low <= int(last) < high:
        start = int(last) + 1
    gateway = int(config.gateway)
    for value in itertools.chain(range(start, high + 1), range(low, start)):  # lazily: a /16
        if value == gateway:
            continue
        address = IPv4Address(value)
        if address not in used:
            return address
    # libnetwork's ErrNoAvailableIPs
    span = config.ip_range or config.subnet
    raise FailedPrecondition(f"no available addresses on this pool ({span})")


def check_static(
    config: NetworkConfig, address: IPv4Address, used: Collection[IPv4Address]
) -> IPv4Address:
    """Accept a requested `--ip`: inside the subnet (the ip range does not bind it), not a
    reserved address, not in use."""
    subnet = config.subnet
    if address not in subnet:
        # libnetwork's ErrIPOutOfRange
        raise InvalidArgument(f"requested address {address} is out of range of {subnet}")
    if address in (subnet.network_address, subnet.broadcast_address):
        raise InvalidArgument(
            f"requested address {address} is the network or broadcast address of {subnet}"
        )
    if address == config.gateway or address in used:
        # libnetwork's ErrIPAlreadyAllocated
        raise AlreadyExists(f"address {address} in {subnet}: Address already in use", plain=True)
    return address


def not_own(
    host: Iterable[IPv4Network | ipaddress.IPv6Network], own: Iterable[IPv4Network]
) -> list[IPv4Network]:
    """The host's IPv4 prefixes that are not the subnet of one of ctrd's networks: what a
    picked subnet must avoid (a bridge of ctrd's own routes its network's subnet, which the
    store accounts for, and may outlive a deleted network)."""
    mine = set(own)
    return [p for p in host if isinstance(p, IPv4Network) and p not in mine]
