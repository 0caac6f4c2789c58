"""The seam between ctrd's network manager and what makes a network real in the kernel.

`NetworkManager` (`supervisor.network.manager`) keeps what every kind of network shares, and a
`NetworkDriver` does the rest. The manager keeps:
- the store: networks, endpoints and their address leases. A lease (address and MAC) is
  recorded before a driver is asked to plug the endpoint, and released only after the driver
  unplugged it, so an address is never configured on two links;
- the container's network namespace, pinned at `<state>/netns/<ns>/<container>`: a driver
  plugs into the namespace it is handed and never makes nor removes one;
- names: the embedded DNS, the container's /etc/hosts and resolv.conf;
- published ports: the host sockets reserved, and ctrd's nft table, rebuilt whole from the
  store (a driver only says what its networks add to that model: `firewall`);
- when a driver is called: a network's kernel side is ensured once per daemon life (again
  after a failed attach, and at every restart's reconcile); one kernel change at a time.

A driver owns the kernel side of a network (for `bridge`: the bridge, its gateway address and
MTU, the sysctls it needs) and of an endpoint (for `bridge`: the veth pair, its host end on the
bridge, its peer `eth<N>` in the namespace with the leased address). Its calls converge, so a
retry after a crash finds what the first attempt made: ensuring what is there checks it,
removing what is gone is no error, attaching a half-made endpoint finishes it. Blocking kernel
work runs on worker threads, never on the event loop.

Drivers are registered by name with the manager; `Network.driver` (stored with the network)
picks one. `bridge` (`supervisor.network.bridge`) is docker's default and always there. The
CRI's pod networks run CNI plugins through a seam of their own, `PodNetwork`
(`supervisor.network.cni`, whose docstring says why: under CNI the address, the namespace,
the ports and the rules are not the manager's). A `cni` driver here, for docker-style
networks made of CNI plugins, would reuse its `invoke`: `ensure` writes or checks its
conflist, `attach` an ADD with the pin as CNI_NETNS and the leased address given to CNI's
`static` IPAM, `detach` a DEL, `firewall` None (portmap brings its own rules).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from supervisor.network import nft
from supervisor.network.store import Endpoint, Network


def endpoint_key(ns: str, network_id: str, container: str) -> str:
    """What an endpoint's derived names come from (its MAC, a bridge veth's host name): stable
    across a retry, a reconnect or a restart."""
    return f"{ns}/{network_id}/{container}"


@dataclass(frozen=True)
class Plug:
    """One endpoint for a driver to plug in: leased already, into the namespace at `pin`."""

    ns: str
    network: Network
    endpoint: Endpoint  # its address and MAC, as the store leased them
    pin: Path
    mtu: int  # what `ensure` answered for the network
    default_route: bool = True  # the first network of a container routes it out
    fresh: bool = False  # the namespace was made just now: nothing of an earlier attempt in it

    @property
    def key(self) -> str:
        return endpoint_key(self.ns, self.network.id, self.endpoint.container)


class NetworkDriver(Protocol):
    """The kernel side of one kind of network (see the module's docstring for the split)."""

    @property
    def name(self) -> str:
        """What `Network.driver` says for this driver's networks (`bridge`)."""
        ...

    async def ensure(self, network: Network) -> int:
        """Make the network's kernel side, or check it and mend it; the MTU for its
        endpoints."""
        ...

    async def remove(self, network: Network) -> None:
        """Delete the network's kernel side (its endpoints are gone); gone already is fine."""
        ...

    async def attach(self, plug: Plug) -> str:
        """Plug the endpoint into its namespace with its leased address (a half-made one from
        an earlier attempt is finished); the interface's name inside (`eth<N>`)."""
        ...

    async def detach(self, ns: str, network: Network, container: str) -> None:
        """Unplug the container's endpoint on `network`; gone already (its namespace died,
        say) is fine."""
        ...

    def firewall(self, network: Network) -> nft.Network | None:
        """The network as ctrd's nft table sees it; None when the driver brings its own rules
        (the table then has nothing of it, published ports included)."""
        ...

    async def sweep(self, networks: Sequence[Network], kept: Sequence[Plug]) -> list[str]:
        """At a restart's reconcile, after every kept endpoint was plugged again: delete what
        this driver made for `networks` that none of `kept` accounts for, and nothing else
        (another program's links stay); what was deleted, for the log."""
        ...
