"""How much ctrd's nftables table holds, counted straight from nf_tables' netlink dumps.

The firewall watch (`watch.py`) asks after every burst of ruleset changes, ctrd's own element
updates included, whether the table is still as ctrd wrote it. nft's listings cannot answer
that cheaply once the table holds many published ports: any listing of a table's rules (`list
table`, `list chain`, even `list tables`) makes libnftables fetch and decode every element of
every map first, ~5 ms for 1000 elements, ~25 ms as JSON. The kernel answers the same questions
in a few dumps whose messages only need counting: the chains of the table, its rules, and the
elements of each named map. No decoding of expressions or elements: only message and attribute
headers are read.

Invariants: read-only (GET requests only), one NETLINK_NETFILTER socket per call, closed
before returning. The counts are one generation's: the ruleset's generation id is read before
and after the dumps, and the dumps are taken again when it moved (someone changed the ruleset
meanwhile) or when the kernel marks a dump interrupted.
"""

from __future__ import annotations

import errno
import itertools
import socket
import struct
from collections.abc import Iterator, Sequence
from typing import NamedTuple

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFPROTO_INET = 1

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER

NFT_MSG_NEWTABLE = 0
NFT_MSG_GETTABLE = 1
NFT_MSG_GETCHAIN = 4
NFT_MSG_GETRULE = 7
NFT_MSG_GETSETELEM = 13
NFT_MSG_NEWGEN = 15
NFT_MSG_GETGEN = 16

NFTA_TABLE_NAME = 1
NFTA_CHAIN_TABLE = 1
NFTA_RULE_TABLE = 1
NFTA_SET_ELEM_LIST_TABLE = 1
NFTA_SET_ELEM_LIST_SET = 2
NFTA_SET_ELEM_LIST_ELEMENTS = 3
NFTA_LIST_ELEM = 1
NFTA_GEN_ID = 1

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_NFGEN = struct.Struct("=BBH")  # nfgenmsg: family, version, res_id
_ATTR = struct.Struct("=HH")  # nlattr: len, type
_ERROR = struct.Struct("=i")
_BUFFER = 1 << 17
_ATTEMPTS = 3


class Shape(NamedTuple):
    """What a table holds, counted: compared whole, so any count that moved is a change."""

    chains: int
    rules: int
    maps: int  # of the named maps asked about, those present
    elements: int  # in those maps together


class DumpInterrupted(Exception):
    """The ruleset changed while the kernel was dumping it."""


# --- messages (pure) ------------------------------------------------------------------------


def request(
    msg: int, flags: int, seq: int, family: int, fields: Sequence[tuple[int, bytes]]
) -> bytes:
    """One nf_tables request: nlmsghdr, nfgenmsg, then the attributes, each padded to 4."""
    body = _NFGEN.pack(family, 0, 0) + b"".join(_attr(kind, value) for kind, value in fields)
    kind = (NFNL_SUBSYS_NFTABLES << 8) | msg
    return _HEADER.pack(_HEADER.size + len(body), kind, NLM_F_REQUEST | flags, seq, 0) + body


def name(text: str) -> bytes:
    """A string attribute's value, NUL-terminated as the kernel's NLA_STRING policy expects."""
    return text.encode() + b"\0"


def _attr(kind: int, value: bytes) -> bytes:
    length = _ATTR.size + len(value)
    return _ATTR.pack(length, kind) + value + b"\0" * (-length % 4)


class Message(NamedTuple):
    kind: int  # nlmsg_type: NLMSG_* or (subsystem << 8 | NFT_MSG_*)
    flags: int
    seq: int
    payload: bytes  # after the header


def messages(data: bytes) -> Iterator[Message]:
    """The netlink messages packed in one datagram."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, flags, seq, _ = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size:
            raise OSError(errno.EPROTO, f"netlink message of length {length}")
        yield Message(kind, flags, seq, data[offset + _HEADER.size : offset + length])
        offset += (length + 3) & ~3


def attrs(payload: bytes, offset: int = 0) -> Iterator[tuple[int, bytes]]:
    """The (type, value) attributes in `payload` from `offset` (nested ones are values)."""
    while offset + _ATTR.size <= len(payload):
        length, kind = _ATTR.unpack_from(payload, offset)
        if length < _ATTR.size:
            raise OSError(errno.EPROTO, f"netlink attribute of length {length}")
        yield kind & NLA_TYPE_MASK, payload[offset + _ATTR.size : offset + length]
        offset += (length + 3) & ~3


def nft_attrs(message: Message) -> dict[int, bytes]:
    """An nf_tables message's top-level attributes (after its nfgenmsg), by type."""
    return dict(attrs(message.payload, _NFGEN.size))


def error_of(message: Message) -> int:
    """The errno an NLMSG_ERROR carries (0 for an acknowledgement)."""
    (code,) = _ERROR.unpack_from(message.payload)
    return -int(code)


def count_elements(message: Message) -> int:
    """The set elements one NEWSETELEM message of a dump carries."""
    nested = nft_attrs(message).get(NFTA_SET_ELEM_LIST_ELEMENTS, b"")
    # a walk over the headers alone: thousands of elements, no slice made for any of them
    count = offset = 0
    unpack, end = _ATTR.unpack_from, len(nested) - _ATTR.size
    while offset <= end:
        length, kind = unpack(nested, offset)
        if length < _ATTR.size:
            raise OSError(errno.EPROTO, f"netlink attribute of length {length}")
        count += kind & NLA_TYPE_MASK == NFTA_LIST_ELEM
        offset += (length + 3) & ~3
    return count


def in_table(message: Message, attr: int, table: str) -> bool:
    return nft_attrs(message).get(attr) == name(table)


# --- asking the kernel ----------------------------------------------------------------------


class _Conversation:
    """Requests on one socket, one at a time, each answered in full before the next."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._seq = itertools.count(1)

    def ask(
        self,
        msg: int,
        *,
        dump: bool,
        fields: Sequence[tuple[int, bytes]] = (),
        family: int = NFPROTO_INET,
    ) -> list[Message]:
        """The answer's messages; OSError with the kernel's errno when it refuses."""
        seq = next(self._seq)
        self._sock.send(request(msg, NLM_F_DUMP if dump else 0, seq, family, fields))
        answer: list[Message] = []
        while True:
            for message in messages(self._sock.recv(_BUFFER)):
                if message.seq != seq:
                    continue  # a late answer to an earlier request
                if message.kind == NLMSG_ERROR:
                    code = error_of(message)
                    if code:
                        raise OSError(code, errno.errorcode.get(code, str(code)))
                    return answer
                if message.flags & NLM_F_DUMP_INTR:
                    raise DumpInterrupted
                if message.kind == NLMSG_DONE:
                    return answer
                answer.append(message)
                if not dump and not message.flags & NLM_F_MULTI:
                    return answer

    def generation(self) -> int:
        (reply,) = self.ask(NFT_MSG_GETGEN, dump=False, family=socket.AF_UNSPEC)
        return int.from_bytes(nft_attrs(reply)[NFTA_GEN_ID], "big")

    def table_exists(self, table: str) -> bool:
        try:
            self.ask(NFT_MSG_GETTABLE, dump=False, fields=[(NFTA_TABLE_NAME, name(table))])
        except FileNotFoundError:
            return False
        return True

    def shape(self, table: str, maps: Sequence[str]) -> Shape | None:
        if not self.table_exists(table):
            return None
        chains = sum(
            in_table(m, NFTA_CHAIN_TABLE, table) for m in self.ask(NFT_MSG_GETCHAIN, dump=True)
        )
        rules = len(self.ask(NFT_MSG_GETRULE, dump=True, fields=[(NFTA_RULE_TABLE, name(table))]))
        present = elements = 0
        for map_name in maps:
            try:
                where = [
                    (NFTA_SET_ELEM_LIST_TABLE, name(table)),
                    (NFTA_SET_ELEM_LIST_SET, name(map_name)),
                ]
                dumped = self.ask(NFT_MSG_GETSETELEM, dump=True, fields=where)
            except FileNotFoundError:
                continue
            present += 1
            elements += sum(count_elements(m) for m in dumped)
        return Shape(chains, rules, present, elements)


def _socket() -> socket.socket:
    return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)


def table_exists(table: str) -> bool:
    """Whether the `inet` table is there (one GET, however large the table)."""
    with _socket() as sock:
        return _Conversation(sock).table_exists(table)


def shape(table: str, maps: Sequence[str]) -> Shape | None:
    """The `inet` table's chains, rules, named maps among `maps` and their elements, as of one
    generation of the ruleset; None when there is no such table."""
    with _socket() as sock:
        talk = _Conversation(sock)
        for attempt in range(_ATTEMPTS):
            try:
                before = talk.generation()
                found = talk.shape(table, maps)
            except DumpInterrupted:
                continue
            # changed meanwhile: again; changing all along: these counts (the changes wake the
            # watch again, which asks again)
            if talk.generation() == before or attempt == _ATTEMPTS - 1:
                return found
        raise DumpInterrupted(f"the ruleset kept changing while table {table} was counted")
