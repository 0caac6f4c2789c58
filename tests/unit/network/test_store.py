"""The network store on a real SQLite database: durable, transactional address leases."""

from __future__ import annotations

import asyncio
import sqlite3
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from supervisor.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from supervisor.metadata import db as db_mod
from supervisor.metadata import schema
from supervisor.metadata.db import Database
from supervisor.metadata.namespaces import NamespaceStore
from supervisor.network import store as store_mod
from supervisor.network.ports import PortBinding
from supervisor.network.store import (
    NetworkRequest,
    NetworkStore,
    PublishedPort,
    SqliteNetworkStore,
)

addr = IPv4Address


def run(coro):
    return asyncio.run(coro)


async def opened(tmp_path: Path, ns: str = "default") -> tuple[Database, NetworkStore]:
    db = await Database.open(tmp_path / "meta.db")
    return db, SqliteNetworkStore(db, ns)


def test_create_picks_a_subnet_avoiding_the_host_and_other_networks(tmp_path: Path):
    async def scenario():
        db, store = await opened(tmp_path)
        try:
            host = [IPv4Network("172.17.0.0/16"), IPv4Network("172.19.0.53/32")]
            first = await store.create(NetworkRequest("n1", "one"), host)
            assert first.config.subnet == IPv4Network("172.18.0.0/16")
            assert first.config.gateway == addr("172.18.0.1")
            # other namespaces share the host: their subnets are avoided too
            other = SqliteNetworkStore(db, "other")
            second = await other.create(NetworkRequest("n2", "one"), host)
            assert second.config.subnet == IPv4Network("172.20.0.0/16")
            assert await store.get("one") == first
            assert await store.get("n1") == first
            assert [n.name for n in await store.list()] == ["one"]
        finally:
            await db.close()

    run(scenario())


def test_create_refuses_duplicates_and_overlaps(tmp_path: Path):
    async def scenario():
        db, store = await opened(tmp_path)
        try:
            await store.create(NetworkRequest("n1", "one", subnet="10.1.0.0/16"))
            with pytest.raises(AlreadyExists, match="network with name one"):
                await store.create(NetworkRequest("n2", "one", subnet="10.2.0.0/16"))
            with pytest.raises(AlreadyExists, match="network with id n1"):
                await store.create(NetworkRequest("n1", "two", subnet="10.2.0.0/16"))
            with pytest.raises(FailedPrecondition, match="Pool overlaps"):
                await store.create(NetworkRequest("n3", "three", subnet="10.1.2.0/24"))
            with pytest.raises(InvalidArgument, match="need a subnet"):
                await store.create(NetworkRequest("n4", "four", gateway="10.9.0.1"))
            with pytest.raises(InvalidArgument, match="mtu"):
                await store.create(NetworkRequest("n5", "five", mtu=70000))
            assert [n.id for n in await store.list()] == ["n1"]
        finally:
            await db.close()

    run(scenario())


def test_addresses_are_leased_round_robin_and_a_released_one_is_not_reused_at_once(
    tmp_path: Path,
):
    async def scenario():
        db, store = await opened(tmp_path)
        try:
            await store.create(NetworkRequest("n1", "net", subnet="10.0.0.0/29"))
            a = await store.attach("net", "a")
            b = await store.attach("net", "b")
            assert (a.address, b.address) == (addr("10.0.0.2"), addr("10.0.0.3"))
            await store.detach("net", "a")
            c = await store.attach("net", "c")
            assert c.address == addr("10.0.0.4")
            await store.attach("net", "d")  # .5
            await store.attach("net", "e")  # .6
            wrapped = await store.attach("net", "f")
            assert wrapped.address == addr("10.0.0.2")  # after the top, the freed one
            with pytest.raises(FailedPrecondition, match="no available addresses"):
                await store.attach("net", "g")
        finally:
            await db.close()

    run(scenario())


def test_the_round_robin_cursor_survives_a_reopen(tmp_path: Path):
    async def scenario():
        db, store = await opened(tmp_path)
        await store.create(NetworkRequest("n1", "net", subnet="10.0.0.0/24"))
        await store.attach("net", "a")
        await store.detach("net", "a")
        await db.close()
        db, store = await opened(tmp_path)
        try:
            assert (await store.attach("net", "b")).address == addr("10.0.0.3")
        finally:
            await db.close()

    run(scenario())


def test_concurrent_attachments_get_unique_addresses(tmp_path: Path):
    async def scenario():
        db, store = await opened(tmp_path)
        try:
            await store.create(NetworkRequest("n1", "net", subnet="10.0.0.0/24"))
            got = await asyncio.gather(*(store.attach("net", f"c{i}") for i in range(60)))
            addresses = [e.address for e in got]
            assert len(set(addresses)) == 60
            assert {e.address for e in await store.endpoints("net")} == set(addresses)
        finally:
            await db.close()

    run(scenario())


def test_a_static_address_is_checked_and_refused_when_taken(tmp_path: Path):
    async def scenario():
        db, store = await opened(tmp_path)
        try:
            await store.create(
                NetworkRequest("n1", "net", subnet="10.0.0.0/24", ip_range="10.0.0.128/25")
            )
            fixed = await store.attach("net", "a", addr("10.0.0.9"), mac="02:42:0a:00:00:09")
            assert fixed.address == addr("10.0.0.9")
            with pytest.raises(AlreadyExists, match="Address already in use"):
                await store.attach("net", "b", addr("10.0.0.9"))
            with pytest.raises(AlreadyExists, match="with name a already exists in network"):
                await store.attach("net", "a")
            with pytest.raises(InvalidArgument, match="out of range"):
                await store.attach("net", "b", addr("10.0.1.9"))
            # a static pick does not move the cursor; dynamic ones stay in the range
            assert (await store.attach("net", "b")).address == addr("10.0.0.128")
        finally:
            await db.close()

    run(scenario())


def test_a_crash_inside_the_transaction_leaves_nothing(tmp_path: Path, monkeypatch):
    async def scenario():
        db, store = await opened(tmp_path)
        try:
            await store.create(NetworkRequest("n1", "net", subnet="10.0.0.0/24"))
            real = store_mod.ipam.next_address

            def crash_after_pick(*args, **kwargs):
                real(*args, **kwargs)
                raise RuntimeError("crash between the pick and the insert")

            monkeypatch.setattr(store_mod.ipam, "next_address", crash_after_pick)
            with pytest.raises(RuntimeError):
                await store.attach("net", "a")
            monkeypatch.setattr(store_mod.ipam, "next_address", real)
            assert await store.endpoints() == []
            # the cursor did not move either: the first address is still the next one
            assert (await store.attach("net", "a")).address == addr("10.0.0.2")

            def half(conn: sqlite3.Connection) -> None:
                conn.execute("DELETE FROM endpoints")
                raise RuntimeError("crash in the middle of a release")

            with pytest.raises(RuntimeError):
                await db.write(half)
            assert [e.container for e in await store.endpoints()] == ["a"]
        finally:
            await db.close()

    run(scenario())


def test_release_container_frees_its_addresses_on_every_network(tmp_path: Path):
    async def scenario():
        db, store = await opened(tmp_path)
        try:
            await store.create(NetworkRequest("n1", "one", subnet="10.1.0.0/24"))
            await store.create(NetworkRequest("n2", "two", subnet="10.2.0.0/24"))
            await store.attach("one", "a", aliases=["web"])
            await store.attach("two", "a")
            await store.attach("two", "b")
            released = await store.release_container("a")
            assert sorted(str(e.address) for e in released) == ["10.1.0.2", "10.2.0.2"]
            assert released[0].aliases == ("web",)
            assert [e.container for e in await store.endpoints()] == ["b"]
            with pytest.raises(NotFound):
                await store.detach("one", "a")
        finally:
            await db.close()

    run(scenario())


def test_a_network_with_endpoints_or_a_namespace_with_networks_is_not_deleted(tmp_path: Path):
    async def scenario():
        db, store = await opened(tmp_path, "ns1")
        try:
            await store.create(NetworkRequest("n1", "net", subnet="10.1.0.0/24"))
            await store.attach("net", "a")
            with pytest.raises(FailedPrecondition, match="has active endpoints"):
                await store.delete("net")
            with pytest.raises(FailedPrecondition, match="still has networks"):
                await NamespaceStore(db).delete("ns1")
            await store.detach("net", "a")
            await store.delete("net")
            with pytest.raises(NotFound):
                await store.get("net")
            await NamespaceStore(db).delete("ns1")
        finally:
            await db.close()

    run(scenario())


# --- published ports ---------------------------------------------------------------------------


def tcp(host_port: int, container_port: int, host_ip: str | None = None) -> PortBinding:
    return PortBinding("tcp", addr(host_ip) if host_ip else None, host_port, container_port)


def udp(host_port: int, container_port: int, host_ip: str | None = None) -> PortBinding:
    return PortBinding("udp", addr(host_ip) if host_ip else None, host_port, container_port)


async def two_networks(store: NetworkStore) -> None:
    await store.create(NetworkRequest("n1", "one", subnet="10.1.0.0/24"))
    await store.create(NetworkRequest("n2", "two", subnet="10.2.0.0/24"))
    await store.attach("one", "a")  # 10.1.0.2
    await store.attach("two", "a")  # 10.2.0.2
    await store.attach("one", "b")  # 10.1.0.3


def test_set_ports_records_an_endpoint_s_ports_and_replaces_them(tmp_path: Path):
    async def scenario():
        db, store = await opened(tmp_path)
        try:
            await two_networks(store)
            await store.set_ports("one", "a", [tcp(8080, 80), udp(5353, 53, "127.0.0.1")])
            await store.set_ports("n1", "b", [tcp(8081, 80)])
            assert await store.ports("a") == [
                PublishedPort("default", "n1", "a", addr("10.1.0.2"), udp(5353, 53, "127.0.0.1")),
                PublishedPort("default", "n1", "a", addr("10.1.0.2"), tcp(8080, 80)),
            ]
            # replaced, not added to; by name or id
            await store.set_ports("n1", "a", [tcp(9090, 90)])
            await store.set_ports("two", "a", [tcp(9091, 90)])
            assert [(p.network, p.binding) for p in await store.ports("a")] == [
                ("n1", tcp(9090, 90)),
                ("n2", tcp(9091, 90)),
            ]
            assert [p.container for p in await store.ports()] == ["a", "b", "a"]
            await store.set_ports("one", "a", [])
            assert [p.network for p in await store.ports("a")] == ["n2"]
        finally:
            await db.close()

    run(scenario())


def test_set_ports_refuses_a_missing_endpoint_and_bad_bindings_and_keeps_the_old_rows(
    tmp_path: Path,
):
    async def scenario():
        db, store = await opened(tmp_path)
        try:
            await two_networks(store)
            await store.set_ports("one", "a", [tcp(8080, 80)])
            with pytest.raises(NotFound, match='endpoint of container "b" on network two'):
                await store.set_ports("two", "b", [tcp(8081, 80)])
            with pytest.raises(NotFound):
                await store.set_ports("three", "a", [tcp(8081, 80)])
            with pytest.raises(InvalidArgument, match="invalid port 0"):
                await store.set_ports("one", "a", [tcp(0, 80)])  # the actual port, never 0
            with pytest.raises(InvalidArgument, match="published twice"):
                await store.set_ports("one", "a", [tcp(8082, 80), tcp(8082, 81)])
            assert [p.binding for p in await store.ports()] == [tcp(8080, 80)]
        finally:
            await db.close()

    run(scenario())


def test_attach_leases_the_address_and_records_the_ports_in_one_transaction(tmp_path: Path):
    async def scenario():
        db, store = await opened(tmp_path)
        try:
            await store.create(NetworkRequest("n1", "one", subnet="10.1.0.0/24"))
            endpoint = await store.attach("one", "a", ports=[tcp(8080, 80), tcp(8443, 443)])
            assert [(p.address, p.binding) for p in await store.ports("a")] == [
                (endpoint.address, tcp(8080, 80)),
                (endpoint.address, tcp(8443, 443)),
            ]
            # a bad binding refuses the whole attach: no lease, no port
            with pytest.raises(InvalidArgument, match="published twice"):
                await store.attach("one", "b", ports=[tcp(9000, 80), tcp(9000, 81)])
            assert [e.container for e in await store.endpoints()] == ["a"]
            assert [p.container for p in await store.ports()] == ["a", "a"]
        finally:
            await db.close()

    run(scenario())


def test_detach_and_release_container_take_the_endpoint_s_ports_with_it(tmp_path: Path):
    async def scenario():
        db, store = await opened(tmp_path)
        try:
            await two_networks(store)
            await store.set_ports("one", "a", [tcp(8080, 80)])
            await store.set_ports("two", "a", [udp(8080, 80)])
            await store.set_ports("one", "b", [tcp(8081, 80)])
            await store.detach("two", "a")
            assert [(p.network, p.container) for p in await store.ports()] == [
                ("n1", "a"),
                ("n1", "b"),
            ]
            await store.attach("two", "a")  # a new endpoint starts with no ports
            assert [p.network for p in await store.ports("a")] == ["n1"]
            await store.release_container("a")
            assert [p.container for p in await store.ports()] == ["b"]
            # a network whose endpoints are gone can be deleted: no port row holds it
            await store.detach("one", "b")
            await store.delete("one")
        finally:
            await db.close()

    run(scenario())


def test_all_ports_reads_every_namespace_with_the_endpoint_addresses(tmp_path: Path):
    async def scenario():
        db, store = await opened(tmp_path, "ns1")
        try:
            other = SqliteNetworkStore(db, "ns2")
            await store.create(NetworkRequest("n1", "net", subnet="10.1.0.0/24"))
            await other.create(NetworkRequest("n2", "net", subnet="10.2.0.0/24"))
            await store.attach("net", "a")
            await other.attach("net", "a")
            await store.set_ports("net", "a", [tcp(8080, 80)])
            await other.set_ports("net", "a", [tcp(8081, 80, "127.0.0.1")])
            assert await store_mod.all_ports(db) == [
                PublishedPort("ns1", "n1", "a", addr("10.1.0.2"), tcp(8080, 80)),
                PublishedPort("ns2", "n2", "a", addr("10.2.0.2"), tcp(8081, 80, "127.0.0.1")),
            ]
            assert [p.namespace for p in await other.ports()] == ["ns2"]
        finally:
            await db.close()

    run(scenario())


def test_ports_survive_a_reopen(tmp_path: Path):
    async def scenario():
        db, store = await opened(tmp_path)
        await two_networks(store)
        await store.set_ports("one", "a", [tcp(8080, 80, "127.0.0.1")])
        await db.close()
        db, store = await opened(tmp_path)
        try:
            assert [p.binding for p in await store.ports()] == [tcp(8080, 80, "127.0.0.1")]
        finally:
            await db.close()

    run(scenario())


def test_a_crash_while_replacing_ports_keeps_the_old_ones(tmp_path: Path, monkeypatch):
    async def scenario():
        db, store = await opened(tmp_path)
        try:
            await two_networks(store)
            await store.set_ports("one", "a", [tcp(8080, 80), tcp(8081, 81)])
            real = store_mod._port_row
            calls = []

            def crash_on_the_second_row(*args):
                calls.append(args)
                if len(calls) == 2:
                    raise RuntimeError("crash between two inserts, after the delete")
                return real(*args)

            monkeypatch.setattr(store_mod, "_port_row", crash_on_the_second_row)
            with pytest.raises(RuntimeError):
                await store.set_ports("one", "a", [tcp(9090, 90), tcp(9091, 91)])
            monkeypatch.setattr(store_mod, "_port_row", real)
            assert [p.binding for p in await store.ports()] == [tcp(8080, 80), tcp(8081, 81)]

            def half_detach(conn: sqlite3.Connection) -> None:
                conn.execute("DELETE FROM ports")
                raise RuntimeError("crash in the middle of a detach")

            with pytest.raises(RuntimeError):
                await db.write(half_detach)
            assert len(await store.ports()) == 2
            # the schema itself refuses a port row without its endpoint
            with pytest.raises(sqlite3.IntegrityError):
                await db.write(
                    lambda conn: conn.execute(
                        "INSERT INTO ports VALUES ('default', 'n1', 'zz', 'tcp', '', 1, 1)"
                    )
                )
        finally:
            await db.close()

    run(scenario())


def test_a_database_with_endpoints_from_before_ports_gains_the_table(tmp_path: Path, monkeypatch):
    async def scenario():
        # a database written by the ctrd that had networks but no ports (5 migrations)
        monkeypatch.setattr(db_mod, "MIGRATIONS", schema.MIGRATIONS[:5])
        db, store = await opened(tmp_path)
        await store.create(NetworkRequest("n1", "net", subnet="10.1.0.0/24"))
        await store.attach("net", "a")
        await db.close()
        monkeypatch.setattr(db_mod, "MIGRATIONS", schema.MIGRATIONS)
        db, store = await opened(tmp_path)
        try:
            version = await db.read(lambda c: c.execute("PRAGMA user_version").fetchone()[0])
            assert version == len(schema.MIGRATIONS)
            await store.set_ports("net", "a", [tcp(8080, 80)])
            assert [p.address for p in await store.ports()] == [addr("10.1.0.2")]
        finally:
            await db.close()

    run(scenario())
