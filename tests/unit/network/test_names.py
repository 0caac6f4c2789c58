"""The embedded DNS's name tables, changed one container at a time."""

from __future__ import annotations

from ipaddress import IPv4Address

from supervisor.network.manager import dns_names
from supervisor.network.names import NameTables
from supervisor.network.store import Endpoint

A, B = "a" * 64, "b" * 64
FRONT, BACK = "front-id", "back-id"


def tables() -> NameTables:
    return NameTables(lambda e: dns_names(e.container, e.aliases))


def ep(network: str, container: str, host: int, *aliases: str) -> Endpoint:
    return Endpoint(network, container, IPv4Address(f"10.0.0.{host}"), aliases=aliases)


def test_a_name_resolves_only_on_the_networks_the_asker_shares() -> None:
    t = tables()
    t.replace(A, [ep(FRONT, A, 2, "web")])
    t.replace(B, [ep(BACK, B, 3, "db")])

    assert t.lookup(A, "web") == [IPv4Address("10.0.0.2")]
    assert t.lookup(A, "db") == []
    assert t.lookup(B, "db") == [IPv4Address("10.0.0.3")]
    assert t.lookup(A, A[:12]) == [IPv4Address("10.0.0.2")]  # the short id
    assert t.reverse(A, IPv4Address("10.0.0.2")) == "web"
    assert t.reverse(A, IPv4Address("10.0.0.3")) is None


def test_a_shared_alias_keeps_the_other_containers_address_when_one_goes() -> None:
    t = tables()
    t.replace(A, [ep(FRONT, A, 2, "cache")])
    t.replace(B, [ep(FRONT, B, 3, "cache")])
    assert t.lookup(A, "cache") == [IPv4Address("10.0.0.2"), IPv4Address("10.0.0.3")]

    t.drop(B)

    assert t.lookup(A, "cache") == [IPv4Address("10.0.0.2")]
    assert t.lookup(B, "cache") == []  # gone from every network
    assert t.reverse(A, IPv4Address("10.0.0.3")) is None


def test_replace_forgets_what_a_container_had_before() -> None:
    t = tables()
    t.replace(A, [ep(FRONT, A, 2, "old")])
    t.replace(A, [ep(FRONT, A, 4, "new"), ep(BACK, A, 5)])

    assert t.lookup(A, "old") == []
    assert t.lookup(A, "new") == [IPv4Address("10.0.0.4")]
    assert t.networks_of(A) == (FRONT, BACK)


def test_rebuild_matches_the_same_changes_made_one_by_one() -> None:
    endpoints = [ep(FRONT, A, 2, "web"), ep(FRONT, B, 3, "web"), ep(BACK, B, 4)]
    whole, stepwise = tables(), tables()
    whole.rebuild(endpoints)
    stepwise.replace(A, endpoints[:1])
    stepwise.replace(B, endpoints[1:])

    for asker in (A, B):
        for name in ("web", A[:12], B[:12]):
            assert whole.lookup(asker, name) == stepwise.lookup(asker, name)
