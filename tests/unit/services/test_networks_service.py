"""The Networks servicer over a real store: what it hands the store, and what it answers."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Network
from pathlib import Path

import pytest

from supervisor.api.ctrd.services.networks.v1 import networks_pb2 as pb
from supervisor.errors import FailedPrecondition, InvalidArgument, NotFound
from supervisor.metadata.db import Database
from supervisor.network.ipam import not_own
from supervisor.network.store import SqliteNetworkStore
from supervisor.services.networks import NetworksService


class Context:
    def __init__(self, ns: str = "default") -> None:
        self._md = (("containerd-namespace", ns),)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._md


def scenario(tmp_path: Path, host: list[str], steps, drivers=frozenset(("bridge",))):
    async def run():
        db = await Database.open(tmp_path / "meta.db")
        calls = []

        async def host_taken():
            calls.append(1)
            return [IPv4Network(p) for p in host]

        try:
            service = NetworksService(
                lambda ns: SqliteNetworkStore(db, ns), host_taken, drivers=lambda: drivers
            )
            return await steps(service), len(calls)
        finally:
            await db.close()

    return asyncio.run(run())


def test_a_picked_subnet_avoids_the_hosts_routes_and_a_given_one_does_not_read_them(tmp_path):
    async def steps(service):
        picked = await service.Create(pb.CreateNetworkRequest(name="a"), Context())
        given = await service.Create(
            pb.CreateNetworkRequest(name="b", subnet="10.5.0.0/24"), Context()
        )
        return picked.network.subnet, given.network.subnet

    (picked, given), host_reads = scenario(tmp_path, ["172.17.0.0/16", "172.18.0.1/32"], steps)
    assert picked == "172.19.0.0/16"
    assert given == "10.5.0.0/24"
    assert host_reads == 1


def test_own_subnets_are_not_counted_as_the_hosts():
    own = [IPv4Network("172.17.0.0/16")]
    host = [IPv4Network("172.17.0.0/16"), IPv4Network("192.0.2.0/24")]
    assert not_own(host, own) == [IPv4Network("192.0.2.0/24")]


def test_bad_requests_are_refused_before_the_store(tmp_path):
    async def steps(service):
        with pytest.raises(NotFound, match=r'^plugin "macvlan" not found$'):  # dockerd's 404
            await service.Create(pb.CreateNetworkRequest(name="a", driver="macvlan"), Context())
        with pytest.raises(InvalidArgument, match="name"):
            await service.Create(pb.CreateNetworkRequest(), Context())
        with pytest.raises(FailedPrecondition, match="namespace is required"):
            await service.List(pb.ListNetworksRequest(), Context(""))
        return (await service.List(pb.ListNetworksRequest(), Context())).networks

    networks, host_reads = scenario(tmp_path, [], steps)
    assert list(networks) == []
    assert host_reads == 0


def test_a_driver_is_one_the_manager_registered_and_another_is_dockers_plugin_not_found(
    tmp_path,
):
    async def steps(service):
        made = await service.Create(pb.CreateNetworkRequest(name="a", driver="cni"), Context())
        with pytest.raises(NotFound) as refused:
            await service.Create(pb.CreateNetworkRequest(name="b", driver="overlay"), Context())
        listed = (await service.List(pb.ListNetworksRequest(), Context())).networks
        return made.network.driver, str(refused.value), [n.name for n in listed]

    (driver, refused, names), _ = scenario(tmp_path, [], steps, {"bridge", "cni"})
    assert driver == "cni"
    assert refused == 'plugin "overlay" not found'
    assert names == ["a"]
