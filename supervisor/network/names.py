"""The embedded DNS's name tables of one namespace, changed one container at a time.

Per network: each endpoint's names (its container's id, short id, ctrctl name and aliases, as
`manager.dns_names` gives them) to its address, and its address back to its first name.
Containers see only the networks they are on (docker's scoping), so a lookup is asked on
behalf of a container.

A start or a removal changes only that container's entries (the tables were rebuilt whole from
the store at each one: ~7 ms at 300 containers, twice per start). `rebuild` still makes them
whole, at the daemon's start and reconcile.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address

from supervisor.network.store import Endpoint

NamesOf = Callable[[Endpoint], Iterable[str]]  # an endpoint's DNS names


@dataclass(frozen=True)
class _Entry:
    network: str
    names: tuple[str, ...]
    address: IPv4Address
    reverse_name: str


class NameTables:
    """One namespace's names, by network, with what each container put there."""

    def __init__(self, names_of: NamesOf) -> None:
        self._names_of = names_of
        self._forward: dict[str, dict[str, list[IPv4Address]]] = {}  # network, name
        self._reverse: dict[str, dict[IPv4Address, str]] = {}  # network, address
        self._entries: dict[str, tuple[_Entry, ...]] = {}  # container

    def rebuild(self, endpoints: Iterable[Endpoint]) -> None:
        """The tables made from every endpoint of the namespace, whatever they held."""
        self._forward.clear()
        self._reverse.clear()
        self._entries.clear()
        by_container: dict[str, list[Endpoint]] = {}
        for e in endpoints:
            by_container.setdefault(e.container, []).append(e)
        for container, mine in by_container.items():
            self.replace(container, mine)

    def replace(self, container: str, endpoints: Sequence[Endpoint]) -> None:
        """The container's entries made what its `endpoints` say (none: it is gone)."""
        self.drop(container)
        entries = tuple(
            _Entry(e.network, tuple(self._names_of(e)), e.address, (e.aliases or (e.container,))[0])
            for e in endpoints
        )
        for entry in entries:
            names = self._forward.setdefault(entry.network, {})
            for name in entry.names:
                names.setdefault(name, []).append(entry.address)
            self._reverse.setdefault(entry.network, {})[entry.address] = entry.reverse_name
        if entries:
            self._entries[container] = entries

    def drop(self, container: str) -> None:
        """Forget the container's names and addresses."""
        for entry in self._entries.pop(container, ()):
            names = self._forward.get(entry.network, {})
            for name in entry.names:
                addresses = names.get(name, [])
                if entry.address in addresses:
                    addresses.remove(entry.address)
                if not addresses:
                    names.pop(name, None)
            reverse = self._reverse.get(entry.network, {})
            if reverse.get(entry.address) == entry.reverse_name:
                del reverse[entry.address]

    def networks_of(self, container: str) -> tuple[str, ...]:
        return tuple(entry.network for entry in self._entries.get(container, ()))

    def lookup(self, container: str, name: str) -> list[IPv4Address]:
        """`name`'s addresses on the networks `container` is on."""
        found: list[IPv4Address] = []
        for network in self.networks_of(container):
            found.extend(self._forward.get(network, {}).get(name, ()))
        return found

    def reverse(self, container: str, address: IPv4Address) -> str | None:
        """The name of `address` on the first of `container`'s networks that has it."""
        for network in self.networks_of(container):
            name = self._reverse.get(network, {}).get(address)
            if name is not None:
                return name
        return None
