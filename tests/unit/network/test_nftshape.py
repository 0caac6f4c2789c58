"""The pure parts of supervisor.network.nftshape: nf_tables requests as bytes, replies taken
apart and counted, and one conversation driven through a fake socket (no kernel)."""

from __future__ import annotations

import errno
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.network import nftshape as ns

HEADER = struct.Struct("=IHHII")
NFT = ns.NFNL_SUBSYS_NFTABLES << 8
NLA_F_NESTED = 0x8000  # set on nested attributes, as the kernel sends them


def attr(kind: int, value: bytes) -> bytes:
    length = 4 + len(value)
    return struct.pack("=HH", length, kind) + value + b"\0" * (-length % 4)


def reply(kind: int, seq: int, body: bytes = b"", flags: int = ns.NLM_F_MULTI) -> bytes:
    payload = struct.pack("=BBH", ns.NFPROTO_INET, 0, 0) + body
    return HEADER.pack(HEADER.size + len(payload), kind, flags, seq, 0) + payload


def done(seq: int) -> bytes:
    return HEADER.pack(HEADER.size + 4, ns.NLMSG_DONE, ns.NLM_F_MULTI, seq, 0) + b"\0" * 4


def error(seq: int, code: int) -> bytes:
    body = struct.pack("=i", -code) + HEADER.pack(HEADER.size, 0, 0, seq, 0)
    return HEADER.pack(HEADER.size + len(body), ns.NLMSG_ERROR, 0, seq, 0) + body


def elements(sizes: list[int], *, extra: bool = False) -> bytes:
    """A NEWSETELEM dump message's body: one list element per size (its value's length)."""
    nested = b"".join(attr(ns.NFTA_LIST_ELEM, b"\x01" * size) for size in sizes)
    if extra:
        nested += attr(7, b"xy")  # not an element: not counted
    table = attr(ns.NFTA_SET_ELEM_LIST_TABLE, ns.name("t"))
    return table + attr(ns.NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, nested)


def test_a_dump_request_is_header_nfgenmsg_and_padded_string_attributes() -> None:
    raw = ns.request(ns.NFT_MSG_GETRULE, ns.NLM_F_DUMP, 7, ns.NFPROTO_INET,
                     [(ns.NFTA_RULE_TABLE, ns.name("ctrd"))])  # fmt: skip
    length, kind, flags, seq, pid = HEADER.unpack_from(raw)
    assert (length, kind, flags, seq, pid) == (len(raw), NFT | 7, 0x301, 7, 0)
    assert raw[16:20] == bytes([ns.NFPROTO_INET, 0, 0, 0])
    # "ctrd\0" is 5 bytes: attribute length 9, padded to 12
    assert raw[20:] == struct.pack("=HH", 9, 1) + b"ctrd\0" + b"\0\0\0"


def test_messages_of_one_datagram_are_split_at_their_aligned_lengths() -> None:
    first = reply(NFT | ns.NFT_MSG_GETCHAIN, 3, attr(ns.NFTA_CHAIN_TABLE, ns.name("abc")))
    datagram = first + reply(NFT | ns.NFT_MSG_GETCHAIN, 3) + done(3)
    found = list(ns.messages(datagram))
    assert [m.kind for m in found] == [NFT | ns.NFT_MSG_GETCHAIN] * 2 + [ns.NLMSG_DONE]
    assert ns.in_table(found[0], ns.NFTA_CHAIN_TABLE, "abc")
    assert not ns.in_table(found[0], ns.NFTA_CHAIN_TABLE, "ab")
    assert not ns.in_table(found[1], ns.NFTA_CHAIN_TABLE, "abc")


def test_an_error_message_carries_the_errno_and_an_ack_zero() -> None:
    assert ns.error_of(next(ns.messages(error(1, errno.ENOENT)))) == errno.ENOENT
    assert ns.error_of(next(ns.messages(error(1, 0)))) == 0


@given(st.lists(st.integers(min_value=0, max_value=40), max_size=60), st.booleans())
def test_elements_are_counted_whatever_their_sizes(sizes: list[int], extra: bool) -> None:
    message = next(ns.messages(reply(NFT | 12, 1, elements(sizes, extra=extra))))
    assert ns.count_elements(message) == len(sizes)


def test_a_truncated_attribute_is_a_protocol_error_not_a_loop() -> None:
    broken = attr(ns.NFTA_SET_ELEM_LIST_ELEMENTS, struct.pack("=HH", 0, 1))
    with pytest.raises(OSError, match="length 0"):
        ns.count_elements(next(ns.messages(reply(NFT | 12, 1, broken))))


class FakeSocket:
    """Answers each request with the datagrams scripted for it, seq taken from the request."""

    def __init__(self, *answers: list[bytes] | None) -> None:
        self._answers = list(answers)
        self._queue: list[bytes] = []
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        seq = HEADER.unpack_from(data)[3]
        script = self._answers.pop(0) or []
        self._queue.extend(d.replace(b"SEQ!", struct.pack("=I", seq)) for d in script)
        return len(data)

    def recv(self, size: int) -> bytes:
        return self._queue.pop(0)


def seq_marked(datagram: bytes) -> bytes:
    """The datagram with every message's seq (1) replaced by a marker the fake fills in."""
    out, offset = b"", 0
    while offset < len(datagram):
        length = HEADER.unpack_from(datagram, offset)[0]
        message = datagram[offset : offset + length]
        out += message[:8] + b"SEQ!" + message[12:]
        offset += (length + 3) & ~3
    return out


def talk(*answers: list[bytes] | None) -> ns._Conversation:
    return ns._Conversation(FakeSocket(*answers))  # type: ignore[arg-type]


def test_a_dump_is_read_until_done_across_datagrams_skipping_late_answers() -> None:
    late = reply(NFT | ns.NFT_MSG_GETRULE, 999)  # an earlier request's, not this one's
    rule = seq_marked(reply(NFT | ns.NFT_MSG_GETRULE, 1))
    conv = talk([late + rule, rule + seq_marked(done(1))])
    assert len(conv.ask(ns.NFT_MSG_GETRULE, dump=True)) == 2


def test_a_refused_request_raises_the_errno_as_oserror() -> None:
    conv = talk([seq_marked(error(1, errno.ENOENT))], [seq_marked(error(1, errno.EPERM))])
    assert not conv.table_exists("gone")
    with pytest.raises(PermissionError):
        conv.table_exists("forbidden")


def test_an_interrupted_dump_is_reported_so_it_is_taken_again() -> None:
    rule = reply(NFT | ns.NFT_MSG_GETRULE, 1, flags=ns.NLM_F_MULTI | ns.NLM_F_DUMP_INTR)
    with pytest.raises(ns.DumpInterrupted):
        talk([seq_marked(rule)]).ask(ns.NFT_MSG_GETRULE, dump=True)


def test_shape_counts_the_tables_chains_rules_present_maps_and_their_elements() -> None:
    table = seq_marked(reply(NFT | ns.NFT_MSG_NEWTABLE, 1, flags=0))
    mine = reply(NFT | 3, 1, attr(ns.NFTA_CHAIN_TABLE, ns.name("t")))
    theirs = reply(NFT | 3, 1, attr(ns.NFTA_CHAIN_TABLE, ns.name("other")))
    rules = reply(NFT | 6, 1) * 3
    conv = talk(
        [table],
        [seq_marked(mine + theirs + mine + done(1))],
        [seq_marked(rules + done(1))],
        [seq_marked(reply(NFT | 12, 1, elements([8, 8])) + reply(NFT | 12, 1, elements([8])))
         + seq_marked(done(1))],
        [seq_marked(error(1, errno.ENOENT))],  # the second map is missing
    )  # fmt: skip
    assert conv.shape("t", ["a", "b"]) == ns.Shape(chains=2, rules=3, maps=1, elements=3)


def test_no_table_has_no_shape() -> None:
    assert talk([seq_marked(error(1, errno.ENOENT))]).shape("t", ["a"]) is None
