"""Connect and Disconnect of a container, as docker's `network connect|disconnect` do them.

The container's `ctrd.io/networks` label is what it asks for (the next start joins those
networks); a running container on ctrd networks is also plugged in or out at once, its
/etc/hosts rewritten. Order kept for crashes: the plumbing is done before the label is
written, and undone when writing it fails, so a label never names a network a running
container was not given; a crash between the two leaves an endpoint that the task's deletion
releases like any other.

Aliases given at connect are kept in the container's `ctrd.io/network-aliases.NETWORK` label
(written with the networks label, removed at disconnect), so its next start has them again.

A stopped container's Connect answers an endpoint without an address: it gets one when it
starts. Connecting a container that runs without ctrd's plumbing (`--network none`, `host`,
`container:`, no label) is refused, as docker refuses it for host and container modes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from ipaddress import IPv4Address
from typing import Any

from supervisor.errors import AlreadyExists, FailedPrecondition
from supervisor.metadata.containers import Container
from supervisor.network.labels import (
    NETWORKS_LABEL,
    NetworkSettings,
    label_networks,
    network_aliases_label,
)
from supervisor.network.manager import NetworkManager
from supervisor.network.store import Endpoint, Network


class LiveNetworks:
    """`services.networks.LiveNetworks` over the container store and the network manager."""

    def __init__(
        self,
        containers: Callable[[str], Any],
        manager: Callable[[], NetworkManager],
        running: Callable[[str, str], bool],
    ) -> None:
        """`containers(ns)`: the namespace's ContainerStore; `running(ns, id)`: whether the
        container has a task."""
        self._containers = containers
        self._manager = manager
        self._running = running

    async def connect(
        self,
        ns: str,
        container_id: str,
        network: Network,
        address: IPv4Address | None,
        aliases: Sequence[str],
    ) -> Endpoint:
        store = self._containers(ns)
        container: Container = await store.get(container_id)
        names = label_networks(container.labels)
        if network.name in names or network.id in names:
            raise AlreadyExists(
                f"endpoint with name {container_id} already exists in network {network.name}"
            )
        settings = NetworkSettings.from_labels(container.labels)
        endpoint = Endpoint(network.id, container_id, IPv4Address(0), aliases=tuple(aliases))
        live = self._running(ns, container_id)
        if live:
            if settings.network_container or not names:
                raise FailedPrecondition(
                    f"container {container_id} runs without a ctrd network of its own "
                    "(none, host or container: mode): it cannot be connected while it runs"
                )
            endpoint = await self._manager().connect_running(
                ns, container_id, network.name, address, aliases, _hostname(container), settings
            )
        try:
            await self._set_networks(
                store, container, [*names, network.name], {network.name: tuple(aliases)}
            )
        except BaseException:
            if live:
                await self._manager().disconnect(ns, container_id, network.id)
            raise
        return endpoint

    async def disconnect(self, ns: str, container_id: str, network: Network) -> None:
        store = self._containers(ns)
        container: Container = await store.get(container_id)
        names = label_networks(container.labels)
        kept = [name for name in names if name not in (network.name, network.id)]
        if len(kept) == len(names):
            raise FailedPrecondition(
                f"container {container_id} is not connected to network {network.name}"
            )
        if self._running(ns, container_id) and self._manager().is_plumbed(ns, container_id):
            settings = NetworkSettings.from_labels(container.labels)
            await self._manager().disconnect_running(
                ns, container_id, network.id, _hostname(container), settings
            )
        gone = dict.fromkeys({network.name, *names} - set(kept), ())
        await self._set_networks(store, container, kept, gone)

    @staticmethod
    async def _set_networks(
        store: Any,
        container: Container,
        names: list[str],
        aliases: Mapping[str, tuple[str, ...]],
    ) -> None:
        """The container's networks label set to `names`, and the aliases label of each
        network of `aliases` set to its aliases (removed when there are none)."""
        labels = {NETWORKS_LABEL: ",".join(names)} if names else {}
        paths = [f"labels.{NETWORKS_LABEL}"]
        for network, given in aliases.items():
            key = network_aliases_label(network)
            paths.append(f"labels.{key}")
            if given:
                labels[key] = ",".join(given)
        await store.update(replace(container, labels=labels), paths)


def _hostname(container: Container) -> str:
    """The hostname the container's spec gives, else its short id (as ctrctl's default)."""
    if container.spec is not None:
        try:
            spec = json.loads(container.spec[1])
        except ValueError:
            spec = {}
        if isinstance(spec, dict) and spec.get("hostname"):
            return str(spec["hostname"])
    return container.id[:12]
