"""ctrd's nftables table: what the renderer writes for a few models, the element commands that
turn one model's table into another's, and that nft's own parser accepts the table
(libnftables in dry-run mode, which changes nothing in the kernel)."""

from __future__ import annotations

import os
from ipaddress import IPv4Address, IPv4Network

import pytest

from supervisor.errors import InvalidArgument
from supervisor.network import nft


def tcp(network: str, host_port: int, container_ip: str, container_port: int) -> nft.Publish:
    return nft.Publish(network, "tcp", None, host_port, IPv4Address(container_ip), container_port)


TABLE = f"ctrdunit_{os.getpid()}"
WEB = nft.Network("web", "ctrdu-web", IPv4Network("10.251.1.0/24"))
DB = nft.Network("db", "ctrdu-db", IPv4Network("10.251.2.0/24"))
SEALED = nft.Network("sealed", "ctrdu-sealed", IPv4Network("10.251.3.0/24"), internal=True)
WEB_80 = tcp("web", 8080, "10.251.1.2", 80)
WEB_53_LOCAL = nft.Publish(
    "web", "udp", IPv4Address("127.0.0.1"), 5353, IPv4Address("10.251.1.2"), 53
)


def rules_of(ruleset: nft.Ruleset, chain: str) -> tuple[str, ...]:
    return next(c.rules for c in nft.chains(ruleset) if c.name == chain)


def test_script_recreates_the_whole_table_so_applying_it_is_one_idempotent_transaction() -> None:
    lines = nft.render(nft.Ruleset((WEB,), (WEB_80,), table=TABLE)).splitlines()
    assert lines[:3] == [
        f"table inet {TABLE}",
        f"delete table inet {TABLE}",
        f"table inet {TABLE} {{",
    ]
    assert lines[-1] == "}"
    assert [line for line in lines if line.startswith("table ")] == [lines[0], lines[2]]


def test_default_table_is_inet_ctrd() -> None:
    assert nft.render(nft.Ruleset()).startswith("table inet ctrd\ndelete table inet ctrd\n")


def test_every_base_chain_accepts_by_default_so_the_hosts_other_traffic_is_untouched() -> None:
    chains = nft.chains(nft.Ruleset((WEB, SEALED), (WEB_80,)))
    bases = [c for c in chains if c.base is not None]
    assert {c.name for c in bases} == {
        "forward",
        "prerouting_raw",
        "prerouting",
        "output",
        "postrouting",
    }
    script = nft.render(nft.Ruleset((WEB, SEALED), (WEB_80,)))
    assert script.count("policy accept;") == len(bases)
    assert "policy drop" not in script
    # every drop names one of ctrd's bridges
    drops = [r for c in chains for r in c.rules if r.endswith(" drop")]
    assert drops
    assert all('"ctrdu-web"' in r or '"ctrdu-sealed"' in r for r in drops)


def test_forward_accepts_established_then_published_then_drops_the_rest_entering_a_bridge() -> None:
    assert rules_of(nft.Ruleset((WEB,)), "forward") == (
        "ct state established,related accept",
        'iifname "ctrdu-web" oifname "ctrdu-web" accept',
        'oifname "ctrdu-web" ct status dnat accept',
        'oifname "ctrdu-web" drop',
        'iifname "ctrdu-web" accept',
    )


def test_two_networks_cannot_reach_each_other_but_both_go_out() -> None:
    forward = rules_of(nft.Ruleset((WEB, DB)), "forward")
    for br in ('"ctrdu-web"', '"ctrdu-db"'):
        assert forward.index(f"oifname {br} drop") < forward.index(f"iifname {br} accept")
        assert forward.index(f"oifname {br} ct status dnat accept") < forward.index(
            f"oifname {br} drop"
        )
    # The drop into web comes before db's outbound accept: db -> web is dropped, not accepted.
    assert forward.index('oifname "ctrdu-web" drop') < forward.index('iifname "ctrdu-db" accept')
    assert forward.index('oifname "ctrdu-db" drop') < forward.index('iifname "ctrdu-web" accept')


def test_internal_network_has_no_way_out_no_way_in_and_no_masquerade() -> None:
    ruleset = nft.Ruleset((SEALED,))
    forward = rules_of(ruleset, "forward")
    assert forward[1:] == (
        'iifname "ctrdu-sealed" oifname != "ctrdu-sealed" drop',
        'oifname "ctrdu-sealed" iifname != "ctrdu-sealed" drop',
        'iifname "ctrdu-sealed" oifname "ctrdu-sealed" accept',
    )
    assert rules_of(ruleset, "postrouting") == ()


def test_outbound_masquerade_localhost_and_hairpin_per_network() -> None:
    assert rules_of(nft.Ruleset((WEB,)), "postrouting") == (
        'ip saddr 10.251.1.0/24 oifname != "ctrdu-web" masquerade',
        'oifname "ctrdu-web" ip saddr 127.0.0.0/8 masquerade',
        'oifname "ctrdu-web" ip saddr 10.251.1.0/24 ct status dnat masquerade',
    )


def test_loopback_destinations_from_bridges_are_dropped_as_route_localnet_opens_them() -> None:
    assert rules_of(nft.Ruleset((WEB, SEALED)), "prerouting_raw") == (
        'iifname "ctrdu-web" ip daddr 127.0.0.0/8 drop',
        'iifname "ctrdu-sealed" ip daddr 127.0.0.0/8 drop',
    )


def test_publishes_are_dnat_for_local_destinations_from_outside_and_from_the_host() -> None:
    ruleset = nft.Ruleset((WEB,), (WEB_80, WEB_53_LOCAL))
    assert rules_of(ruleset, "prerouting") == ("fib daddr type local jump publish",)
    assert rules_of(ruleset, "output") == ("fib daddr type local jump publish",)
    # one address's map first: its publish wins over the same port on every address
    assert rules_of(ruleset, "publish") == (
        "dnat ip to ip daddr . meta l4proto . th dport map @publish_addr",
        "meta nfproto ipv4 dnat ip to meta l4proto . th dport map @publish_any",
    )


def test_publishes_are_map_elements_so_the_rules_do_not_grow_with_them() -> None:
    one = nft.Ruleset((WEB,), (WEB_80,))
    many = nft.Ruleset((WEB,), tuple(tcp("web", 9000 + i, "10.251.1.2", 80) for i in range(50)))
    for chain_one, chain_many in zip(nft.chains(one), nft.chains(many), strict=True):
        assert chain_one == chain_many
    assert len(nft.maps(many)[1].elements) == 50


def test_maps_key_one_address_publishes_by_address_and_the_others_by_protocol_and_port() -> None:
    by_addr, by_port = nft.maps(nft.Ruleset((WEB,), (WEB_80, WEB_53_LOCAL)))
    assert by_addr == nft.Map(
        "publish_addr",
        "ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service",
        (nft.Element("127.0.0.1 . udp . 5353", "10.251.1.2 . 53"),),
    )
    assert by_port == nft.Map(
        "publish_any",
        "inet_proto . inet_service : ipv4_addr . inet_service",
        (nft.Element("tcp . 8080", "10.251.1.2 . 80"),),
    )


def test_maps_are_declared_before_the_rules_that_name_them_with_their_elements() -> None:
    script = nft.render(nft.Ruleset((WEB,), (WEB_80, WEB_53_LOCAL), table=TABLE))
    assert script.index("map publish_any {") < script.index("chain publish {")
    assert "\t\t\ttcp . 8080 : 10.251.1.2 . 80,\n" in script
    assert "\t\t\t127.0.0.1 . udp . 5353 : 10.251.1.2 . 53,\n" in script
    # an empty map has no `elements` line (nft refuses `elements = { }`)
    assert script.count("elements = {") == 2
    assert nft.render(nft.Ruleset((WEB,), table=TABLE)).count("elements") == 0


WEB_81 = tcp("web", 8081, "10.251.1.3", 81)


def test_a_change_of_publishes_alone_is_element_commands() -> None:
    before = nft.Ruleset((WEB,), (WEB_80, WEB_53_LOCAL), table=TABLE)
    after = nft.Ruleset((WEB,), (WEB_80, WEB_81), table=TABLE)
    assert nft.update_script(before, after) == (
        f"delete element inet {TABLE} publish_addr {{ 127.0.0.1 . udp . 5353 }}\n"
        f"add element inet {TABLE} publish_any {{ tcp . 8081 : 10.251.1.3 . 81 }}\n"
    )


def test_a_publish_sent_elsewhere_is_deleted_then_added_in_the_same_script() -> None:
    moved = tcp("web", 8080, "10.251.1.9", 80)
    before = nft.Ruleset((WEB,), (WEB_80,), table=TABLE)
    after = nft.Ruleset((WEB,), (moved,), table=TABLE)
    assert nft.update_script(before, after) == (
        f"delete element inet {TABLE} publish_any {{ tcp . 8080 }}\n"
        f"add element inet {TABLE} publish_any {{ tcp . 8080 : 10.251.1.9 . 80 }}\n"
    )


def test_deletes_come_before_adds_and_several_share_one_command() -> None:
    before = nft.Ruleset((WEB,), (WEB_80, WEB_81), table=TABLE)
    after = nft.Ruleset((WEB,), (WEB_53_LOCAL,), table=TABLE)
    script = nft.update_script(before, after)
    assert script is not None
    assert script.splitlines() == [
        f"delete element inet {TABLE} publish_any {{ tcp . 8080, tcp . 8081 }}",
        f"add element inet {TABLE} publish_addr {{ 127.0.0.1 . udp . 5353 : 10.251.1.2 . 53 }}",
    ]


def test_the_same_publishes_in_another_order_change_nothing() -> None:
    before = nft.Ruleset((WEB,), (WEB_80, WEB_81), table=TABLE)
    assert nft.update_script(before, nft.Ruleset((WEB,), (WEB_81, WEB_80), table=TABLE)) == ""


@pytest.mark.parametrize(
    "before",
    [
        nft.Ruleset((WEB, DB), (WEB_80,), table=TABLE),  # a network went
        nft.Ruleset((WEB,), (WEB_80,), table="ctrdother"),  # another table
        nft.Ruleset(table=TABLE),  # no table was written (an empty ruleset deletes it)
    ],
    ids=["networks-differ", "table-differs", "no-table-before"],
)
def test_more_than_publishes_changed_needs_the_whole_table(before: nft.Ruleset) -> None:
    assert nft.update_script(before, nft.Ruleset((WEB,), (WEB_81,), table=TABLE)) is None


def test_an_element_update_is_validated_as_the_whole_table_is() -> None:
    before = nft.Ruleset((WEB,), (WEB_80,), table=TABLE)
    with pytest.raises(InvalidArgument, match="twice"):
        nft.update_script(before, nft.Ruleset((WEB,), (WEB_80, WEB_80), table=TABLE))


@pytest.mark.parametrize(
    ("ruleset", "words"),
    [
        (nft.Ruleset(table="ctrd; flush ruleset"), "table name"),
        (nft.Ruleset((nft.Network("x", 'br" accept', IPv4Network("10.0.0.0/24")),)), "bridge name"),
        (
            nft.Ruleset((nft.Network("x", "a-very-long-bridge", IPv4Network("10.0.0.0/24")),)),
            "bridge name",
        ),
        (
            nft.Ruleset((WEB, nft.Network("web", "ctrdu-other", IPv4Network("10.0.0.0/24")))),
            "twice",
        ),
        (nft.Ruleset((WEB,), (WEB_80, WEB_80)), "twice"),
        (nft.Ruleset((DB,), (WEB_80,)), "unknown network"),
        (nft.Ruleset((SEALED,), (tcp("sealed", 1, "10.251.3.2", 1),)), "internal"),
        (nft.Ruleset((WEB,), (tcp("web", 1, "10.9.9.9", 1),)), "is not in"),
        (nft.Ruleset((WEB,), (tcp("web", 0, "10.251.1.2", 1),)), "out of range"),
        (nft.Ruleset((WEB,), (tcp("web", 1, "10.251.1.2", 65536),)), "out of range"),
    ],
)
def test_models_nft_could_misread_are_refused(ruleset: nft.Ruleset, words: str) -> None:
    with pytest.raises(InvalidArgument, match=words):
        nft.render(ruleset)


@pytest.mark.parametrize(
    "ruleset",
    [
        nft.Ruleset(table=TABLE),
        nft.Ruleset((WEB,), table=TABLE),
        nft.Ruleset((WEB, DB, SEALED), (WEB_80, WEB_53_LOCAL), table=TABLE),
    ],
    ids=["empty", "one-network", "three-networks-with-publishes"],
)
def test_nft_accepts_the_rendered_table_in_dry_run_and_nothing_changes(
    ruleset: nft.Ruleset,
) -> None:
    before = nft.list_tables()
    nft.check(ruleset)
    assert nft.list_tables() == before
    assert ("inet", TABLE) not in before


def test_nft_errors_carry_nfts_own_text() -> None:
    with pytest.raises(nft.NftError, match="syntax error") as caught:
        nft.run(f"table inet {TABLE} {{\n chain c {{\n no such words\n }}\n}}\n", dry_run=True)
    assert str(caught.value).startswith("Error:")
