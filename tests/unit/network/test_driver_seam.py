"""The seam between NetworkManager and its drivers: a second driver registered by name gets its
networks' every kernel call, and the manager keeps the leases around them.

The driver here is a recording double (the seam itself is under test). The bridge driver's
netlink calls are replaced by ones that fail the test, so any of its work on these networks
would show. The rest is real: the metadata database, the namespace pins (root), and an nft
table named after the pid, deleted at the end.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from supervisor.errors import FailedPrecondition
from supervisor.metadata.db import Database
from supervisor.network import bridge, netlink, nft
from supervisor.network.driver import NetworkDriver, Plug
from supervisor.network.manager import NetworkManager
from supervisor.network.store import Network, NetworkRequest, SqliteNetworkStore

NS = "default"


class Recording:
    """A driver that only records its calls, and whether the endpoint's lease was in the
    store at the time."""

    def __init__(self, name: str, db: Database) -> None:
        self.name = name
        self.calls: list[tuple[Any, ...]] = []
        self._db = db
        self.fail_attaches = 0

    async def _leased(self, ns: str, network: Network, container: str) -> bool:
        endpoints = await SqliteNetworkStore(self._db, ns).endpoints(network.id)
        return any(e.container == container for e in endpoints)

    async def ensure(self, network: Network) -> int:
        self.calls.append(("ensure", network.name))
        return 1400

    async def remove(self, network: Network) -> None:
        self.calls.append(("remove", network.name))

    async def attach(self, plug: Plug) -> str:
        leased = await self._leased(plug.ns, plug.network, plug.endpoint.container)
        self.calls.append(
            ("attach", plug.network.name, plug.endpoint.container, leased, plug.fresh)
        )
        if self.fail_attaches:
            self.fail_attaches -= 1
            raise OSError("the network's kernel side is gone")
        assert plug.pin.exists()  # the manager pinned the namespace before
        return "eth0"

    async def detach(self, ns: str, network: Network, container: str) -> None:
        leased = await self._leased(ns, network, container)
        self.calls.append(("detach", network.name, container, leased))

    def firewall(self, network: Network) -> nft.Network | None:
        return None  # brings its own rules

    async def sweep(self, networks: Sequence[Network], kept: Sequence[Plug]) -> list[str]:
        self.calls.append(("sweep", [n.name for n in networks], [p.key for p in kept]))
        return []


def _refuse(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError(f"the bridge driver was called: {args}")


@pytest.fixture
def no_bridge(monkeypatch: pytest.MonkeyPatch) -> None:
    for call in ("ensure_bridge", "remove_bridge", "attach_endpoint", "detach_endpoint"):
        monkeypatch.setattr(netlink, call, _refuse)
    monkeypatch.setattr(bridge, "_bridge_ports", _refuse)


@asynccontextmanager
async def lab(tmp_path: Path) -> AsyncIterator[tuple[NetworkManager, Recording, Any]]:
    db = await Database.open(tmp_path / "meta.db")
    table = f"ctrdu{os.getpid()}"
    recording = Recording("recording", db)
    driver: NetworkDriver = recording  # the double fills the Protocol (mypy would say)
    manager = NetworkManager(db, tmp_path / "state", table, drivers=[driver])
    store = SqliteNetworkStore(db, NS)
    try:
        yield manager, recording, store
    finally:
        await manager.close()
        pins = tmp_path / "state" / "netns" / NS
        if pins.is_dir():
            for pin in pins.iterdir():
                await asyncio.to_thread(netlink.netns_remove, pin)
            await asyncio.to_thread(netlink.netns_release_dir, pins)
        await asyncio.to_thread(nft.delete, table)
        await db.close()


def test_a_registered_drivers_network_is_plumbed_through_it_with_the_lease_around_it(
    tmp_path: Path, no_bridge: None
) -> None:
    async def run() -> list[tuple[Any, ...]]:
        async with lab(tmp_path) as (manager, recording, store):
            assert manager.drivers == {"bridge", "recording"}
            await store.create(
                NetworkRequest("n1", "cni", driver="recording", subnet="10.77.0.0/24")
            )
            attached = await manager.connect(NS, "c1", "cni")
            assert attached.netns == manager.pin_path(NS, "c1")
            await manager.disconnect(NS, "c1", "cni")
            assert await store.endpoints() == []
            recording.fail_attaches = 1  # the first attach fails: ensured again, then retried
            await manager.connect(NS, "c1", "cni")
            await manager.release(NS, "c1")  # its detach runs in the background
            await manager.settle()
            assert await store.endpoints() == []
            await manager.remove_network(NS, "cni")
            return recording.calls

    calls = asyncio.run(run())
    assert calls == [
        ("ensure", "cni"),
        ("attach", "cni", "c1", True, True),  # leased before, in a namespace just made
        ("detach", "cni", "c1", True),  # the lease still held while it unplugs
        ("attach", "cni", "c1", True, False),  # the pin stayed: not a fresh namespace
        ("ensure", "cni"),
        ("attach", "cni", "c1", True, False),
        ("detach", "cni", "c1", False),  # a release: the namespace died with the pin
        ("remove", "cni"),
    ]


def test_a_failed_attach_releases_the_lease_after_the_drivers_detach(
    tmp_path: Path, no_bridge: None
) -> None:
    async def run() -> tuple[list[tuple[Any, ...]], list[Any]]:
        async with lab(tmp_path) as (manager, recording, store):
            await store.create(
                NetworkRequest("n1", "cni", driver="recording", subnet="10.77.0.0/24")
            )
            recording.fail_attaches = 2
            with pytest.raises(OSError, match="kernel side is gone"):
                await manager.connect(NS, "c1", "cni")
            return recording.calls, await store.endpoints()

    calls, endpoints = asyncio.run(run())
    assert calls[-1] == ("detach", "cni", "c1", True)
    assert endpoints == []


def test_reconcile_replugs_and_sweeps_through_the_networks_driver(
    tmp_path: Path, no_bridge: None
) -> None:
    async def run() -> list[tuple[Any, ...]]:
        async with lab(tmp_path) as (manager, recording, store):
            await store.create(
                NetworkRequest("n1", "cni", driver="recording", subnet="10.77.0.0/24")
            )
            await manager.connect(NS, "kept", "cni")
            await store.attach("n1", "unpinned")  # recorded, never plugged: no pin
            recording.calls.clear()
            report = await manager.reconcile()
            assert report.endpoints_released == (f"{NS}/n1/unpinned",)
            assert [e.container for e in await store.endpoints()] == ["kept"]
            await manager.release(NS, "kept")
            await manager.settle()
            return recording.calls

    calls = asyncio.run(run())
    assert calls[:4] == [
        ("ensure", "cni"),
        ("attach", "cni", "kept", True, False),
        ("detach", "cni", "unpinned", True),
        ("sweep", ["cni"], [f"{NS}/n1/kept"]),
    ]


def test_a_network_of_a_driver_not_here_is_refused_and_left_alone(
    tmp_path: Path, no_bridge: None
) -> None:
    async def run() -> None:
        async with lab(tmp_path) as (manager, recording, store):
            await store.create(NetworkRequest("n2", "newer", driver="ghost", subnet="10.78.0.0/24"))
            await store.attach("n2", "c2")  # as a newer ctrd left it
            with pytest.raises(FailedPrecondition, match='driver "ghost"'):
                await manager.connect(NS, "c1", "newer")
            with pytest.raises(FailedPrecondition, match='network newer uses driver "ghost"'):
                await manager.remove_network(NS, "newer")
            report = await manager.reconcile()  # the daemon still starts
            assert report.endpoints_released == ()
            assert [n.name for n in await store.list()] == ["newer"]
            assert [e.container for e in await store.endpoints()] == ["c2"]
            assert recording.calls == [("sweep", [], [])]

    asyncio.run(run())
