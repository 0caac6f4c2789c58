"""The pure parts of supervisor.network.dns: local answers, what is forwarded, wire limits,
and the host's resolvers as resolv.conf names them."""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.reversename
import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.network import dns as edns

TABLE = {
    "web": [IPv4Address("172.18.0.2")],
    "db": [IPv4Address("172.18.0.3"), IPv4Address("172.18.0.4")],
}


def lookup(name: str) -> Sequence[IPv4Address]:
    return TABLE.get(name, [])


def reverse(address: IPv4Address) -> str | None:
    return {IPv4Address("172.18.0.2"): "web.front"}.get(address)


def query(name: str, rdtype: str = "A", **kwargs: Any) -> dns.message.Message:
    return dns.message.make_query(name, rdtype, **kwargs)


def addresses(reply: dns.message.Message) -> list[str]:
    return [rd.to_text() for rrset in reply.answer for rd in rrset]


def test_a_for_a_known_name_answers_its_addresses_with_ttl_600() -> None:
    q = query("db")

    reply = edns.local_answer(q, lookup)

    assert reply is not None
    assert reply.id == q.id
    assert reply.question == q.question
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.QR
    assert reply.flags & dns.flags.RA
    assert sorted(addresses(reply)) == ["172.18.0.3", "172.18.0.4"]
    assert reply.answer[0].ttl == 600


def test_lookup_gets_lowercase_names_without_final_dot_and_answers_keep_the_case() -> None:
    asked: list[str] = []

    def recording(name: str) -> Sequence[IPv4Address]:
        asked.append(name)
        return lookup(name)

    q = query("WeB.")
    reply = edns.local_answer(q, recording)

    assert asked == ["web"]
    assert reply is not None
    assert reply.answer[0].name.to_text() == "WeB."  # 0x20 case randomisation survives


def test_aaaa_for_a_known_name_is_noerror_without_records() -> None:
    reply = edns.local_answer(query("web", "AAAA"), lookup)

    assert reply is not None
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.answer == []


@pytest.mark.parametrize(
    ("name", "rdtype"),
    [
        ("example.com", "A"),  # not ours
        ("other", "A"),  # single-label, not ours: forwarded as docker does
        ("example.com", "AAAA"),
        ("web", "MX"),  # ours, but not a type answered here
        ("web", "TXT"),
        (".", "NS"),
    ],
)
def test_what_is_not_answered_locally_is_forwarded(name: str, rdtype: str) -> None:
    assert edns.local_answer(query(name, rdtype), lookup, reverse) is None


def test_ptr_answers_the_name_reverse_gives_and_forwards_the_others() -> None:
    mine = query(dns.reversename.from_address("172.18.0.2").to_text(), "PTR")
    other = query(dns.reversename.from_address("172.18.0.9").to_text(), "PTR")
    partial = query("18.172.in-addr.arpa", "PTR")

    reply = edns.local_answer(mine, lookup, reverse)

    assert reply is not None
    assert addresses(reply) == ["web.front."]
    assert edns.local_answer(other, lookup, reverse) is None
    assert edns.local_answer(partial, lookup, reverse) is None
    assert edns.local_answer(mine, lookup) is None  # no reverse: forwarded


def test_a_query_of_another_class_is_forwarded() -> None:
    q = query("web", "A", rdclass="CH")

    assert edns.local_answer(q, lookup) is None


def test_parse_query_takes_one_question_queries_only() -> None:
    q = query("web")
    parsed = edns.parse_query(q.to_wire())
    assert isinstance(parsed, dns.message.Message)
    assert parsed.id == q.id

    reply = dns.message.make_response(q)
    assert edns.parse_query(reply.to_wire()) is None  # an answer sent to us: dropped
    assert edns.parse_query(b"\x12") is None  # no header: nothing to answer to


def test_garbage_after_a_header_is_formerr_with_the_querys_id() -> None:
    wire = b"\xbe\xef\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xff\xff"

    answer = edns.parse_query(wire)

    assert isinstance(answer, bytes)
    reply = dns.message.from_wire(answer)
    assert reply.id == 0xBEEF
    assert reply.rcode() == dns.rcode.FORMERR
    assert reply.flags & dns.flags.QR
    assert reply.flags & dns.flags.RD


def test_an_opcode_other_than_query_is_notimp() -> None:
    q = query("web")
    q.set_opcode(dns.opcode.STATUS)

    answer = edns.parse_query(q.to_wire())

    assert isinstance(answer, bytes)
    reply = dns.message.from_wire(answer)
    assert reply.rcode() == dns.rcode.NOTIMP
    assert reply.opcode() == dns.opcode.STATUS


@given(st.binary(max_size=600))
def test_parse_query_never_raises(wire: bytes) -> None:
    parsed = edns.parse_query(wire)

    assert parsed is None or isinstance(parsed, bytes | dns.message.Message)


def many_addresses(q: dns.message.Message, n: int) -> dns.message.Message:
    table = {"big": [IPv4Address(f"10.0.{i // 250}.{i % 250 + 1}") for i in range(n)]}
    reply = edns.local_answer(q, lambda name: table.get(name, []))
    assert reply is not None
    return reply


def test_an_answer_larger_than_512_is_cut_to_its_question_with_tc_for_a_udp_client() -> None:
    q = query("big")
    reply = many_addresses(q, 60)  # 60 * 16 bytes

    udp = dns.message.from_wire(edns.render(reply, q, tcp=False))
    tcp = dns.message.from_wire(edns.render(reply, q, tcp=True))

    assert udp.flags & dns.flags.TC
    assert udp.id == q.id
    assert udp.question == q.question
    assert udp.answer == []
    assert not tcp.flags & dns.flags.TC
    assert len(addresses(tcp)) == 60


def test_a_client_announcing_a_larger_edns_payload_gets_the_whole_answer_over_udp() -> None:
    q = query("big", use_edns=0, payload=4096)
    reply = many_addresses(q, 60)

    udp = dns.message.from_wire(edns.render(reply, q, tcp=False))

    assert edns.udp_limit(q) == 4096
    assert edns.udp_limit(query("big")) == 512
    assert not udp.flags & dns.flags.TC
    assert len(addresses(udp)) == 60


def test_upstreams_keep_loopback_resolvers_in_order_and_skip_bad_lines() -> None:
    text = (
        "# generated by systemd-resolved\nsearch lan\nnameserver 127.0.0.53\n"
        "nameserver 192.168.1.1\nnameserver fe80::1%eth0\nnameserver bogus\nnameserver\n"
        "options edns0 trust-ad\n"
    )

    assert edns.upstreams_in(text) == ["127.0.0.53", "192.168.1.1", "fe80::1%eth0"]


def test_no_nameserver_means_the_local_machines_resolver(tmp_path: Path) -> None:
    assert edns.upstreams_in("search lan\n") == ["127.0.0.1"]
    assert edns.host_upstreams(tmp_path / "missing") == ["127.0.0.1"]
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 10.9.8.7\n")
    assert edns.host_upstreams(resolv) == ["10.9.8.7"]


@pytest.mark.parametrize(
    ("upstream", "address"),
    [
        ("192.0.2.1", ("192.0.2.1", 53)),
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("::1", ("::1", 53)),
        ("[::1]:5353", ("::1", 5353)),
        ("[fe80::1%eth0]", ("fe80::1%eth0", 53)),
        ("fe80::1%eth0", ("fe80::1%eth0", 53)),
        (("127.0.0.1", 1053), ("127.0.0.1", 1053)),
    ],
)
def test_upstream_addresses(upstream: edns.Upstream, address: tuple[str, int]) -> None:
    assert edns.upstream_address(upstream) == address


@pytest.mark.parametrize(
    "upstream", ["example.com", "1.2.3.4:0", "1.2.3.4:x", "[::1", "[::1]x", ("::1", 70000)]
)
def test_bad_upstreams_are_value_errors(upstream: edns.Upstream) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - several messages, one type
        edns.upstream_address(upstream)


def test_the_addresses_of_an_alias_come_in_turns_on_the_wire() -> None:
    q = query("big")
    reply = many_addresses(q, 4)

    orders = {
        tuple(addresses(dns.message.from_wire(edns.render(reply, q, tcp=False)))) for _ in range(20)
    }

    assert len(orders) > 1  # shuffled at each rendering; the same order 20 times: 1 in 24**19
    assert {tuple(sorted(o)) for o in orders} == {tuple(sorted(addresses(reply)))}
