"""SPDY/3.1 framing and session: client-go's own bytes decode, every frame type round-trips,
header blocks share one zlib context per direction, pings are echoed, windows not enforced."""

from __future__ import annotations

import asyncio
import contextlib
import struct
import zlib
from collections.abc import AsyncIterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.cri.streaming import spdy

# What crictl 1.26 (client-go's SPDY executor) wrote after its upgrade request for
# `crictl exec CID echo hi`, captured with strace: three SYN_STREAMs (error, stdout,
# stderr; each header block a Z_SYNC_FLUSHed piece of ONE zlib stream with the SPDY/3
# dictionary), then its close: RST_STREAM CANCEL on each stream and a GOAWAY.
CLIENT_GO = bytes.fromhex(
    "80030001000000290000000100000000000078f9e3c6a7c26260606004a7b392a2d4c45c6851c29a0a0a"
    "6800000000ffff800300010000001900000003000000000000c22ac5565c92925f5a02000000ffff8003"
    "00010000001500000005000000000000c229975a5404000000ffff800300030000000800000001000000"
    "05800300030000000800000003000000058003000300000008000000050000000580030007000000080000"
    "000000000000"
)


def test_dictionary_is_spdy3s() -> None:
    assert len(spdy.DICTIONARY) == 1423
    assert zlib.adler32(spdy.DICTIONARY) == spdy.DICTIONARY_ID
    assert spdy.DICTIONARY.startswith(b"\0\0\0\x07options\0\0\0\x04head")
    assert spdy.DICTIONARY.endswith(b"charset=utf-8charset=iso-8859-1,utf-,*,enq=0.")


def test_client_gos_frames_decode() -> None:
    frames = list(spdy.FrameParser(spdy.HeaderCodec()).feed(CLIENT_GO))
    assert frames == [
        spdy.SynStream(1, (("streamtype", "error"),)),
        spdy.SynStream(3, (("streamtype", "stdout"),)),
        spdy.SynStream(5, (("streamtype", "stderr"),)),
        spdy.RstStream(1, spdy.RST_CANCEL),
        spdy.RstStream(3, spdy.RST_CANCEL),
        spdy.RstStream(5, spdy.RST_CANCEL),
        spdy.GoAway(0, spdy.GOAWAY_OK),
    ]


def test_client_gos_frames_decode_fed_a_byte_at_a_time() -> None:
    parser = spdy.FrameParser(spdy.HeaderCodec())
    frames = [f for i in range(len(CLIENT_GO)) for f in parser.feed(CLIENT_GO[i : i + 1])]
    assert len(frames) == 7
    assert frames[2] == spdy.SynStream(5, (("streamtype", "stderr"),))


def test_our_first_header_block_opens_a_zlib_stream_as_client_gos_does() -> None:
    """The zlib header: level 9 with the preset dictionary flag, then the dictionary's id
    (the bytes differ after it: Go's deflate is not zlib's, but any inflater takes both)."""
    ours = spdy.encode(spdy.SynStream(1, (("streamtype", "error"),)), spdy.HeaderCodec())
    assert (
        ours[18:24]
        == CLIENT_GO[18:24]
        == bytes.fromhex("78f9") + struct.pack(">I", spdy.DICTIONARY_ID)
    )
    assert ours[-4:] == CLIENT_GO[45:49] == b"\0\0\xff\xff"  # Z_SYNC_FLUSH's empty block


EVERY_KIND = [
    spdy.DataFrame(7, b"payload", spdy.FLAG_FIN),
    spdy.DataFrame(9, b""),
    spdy.SynStream(1, (("streamtype", "data"), ("port", "80"), ("requestid", "0")), 0, 3, 0, 2),
    spdy.SynReply(1, (("a", "b"),), spdy.FLAG_FIN),
    spdy.RstStream(3, spdy.RST_INTERNAL_ERROR),
    spdy.Settings(((0, 4, 100), (1, 7, 65536)), 1),
    spdy.Ping(5),
    spdy.GoAway(11, spdy.GOAWAY_PROTOCOL_ERROR),
    spdy.HeadersFrame(13, (("x", "y"),)),
    spdy.WindowUpdate(0, 1 << 20),
]


@pytest.mark.parametrize("frame", EVERY_KIND, ids=lambda f: type(f).__name__)
def test_every_frame_kind_round_trips(frame: spdy.Frame) -> None:
    assert list(
        spdy.FrameParser(spdy.HeaderCodec()).feed(spdy.encode(frame, spdy.HeaderCodec()))
    ) == [frame]


def test_control_frame_header_is_version_3_big_endian() -> None:
    raw = spdy.encode(spdy.Ping(0x01020304), spdy.HeaderCodec())
    assert raw == bytes.fromhex("8003 0006 00000004 01020304")


names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=20)
values = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=50
)


@given(st.lists(st.lists(st.tuples(names, values), max_size=6), min_size=1, max_size=5))
def test_header_blocks_round_trip_through_one_context_per_direction(
    blocks: list[list[tuple[str, str]]],
) -> None:
    sender, receiver = spdy.HeaderCodec(), spdy.HeaderCodec()
    parser = spdy.FrameParser(receiver)
    for i, block in enumerate(blocks):
        headers = tuple(dict(block).items())  # one value per name, order kept
        raw = spdy.encode(spdy.SynStream(2 * i + 1, headers), sender)
        assert list(parser.feed(raw)) == [spdy.SynStream(2 * i + 1, headers)]


def test_a_later_block_needs_the_connections_context() -> None:
    codec = spdy.HeaderCodec()
    spdy.encode(spdy.SynStream(1, (("streamtype", "error"),)), codec)
    second = spdy.encode(spdy.SynStream(3, (("streamtype", "error"),)), codec)
    with pytest.raises(spdy.ProtocolError):
        list(spdy.FrameParser(spdy.HeaderCodec()).feed(second))


def test_repeated_header_values_travel_nul_joined() -> None:
    block = spdy.pack_headers((("X-Accept", "a"), ("x-accept", "b")))
    assert block == struct.pack(">I", 1) + struct.pack(">I", 8) + b"x-accept" + (
        struct.pack(">I", 3) + b"a\0b"
    )
    assert spdy.unpack_headers(block) == (("x-accept", "a"), ("x-accept", "b"))
    assert spdy.header(spdy.unpack_headers(block), "X-ACCEPT") == "a"


@pytest.mark.parametrize(
    "raw",
    [
        bytes.fromhex("8002 0006 00000004 00000001"),  # SPDY/2
        bytes.fromhex("8003 0001 00000004 00000001"),  # SYN_STREAM too short
        bytes.fromhex("8003 0001 0000000e 00000001 00000000 0000") + b"\xffjunk",  # bad zlib
    ],
)
def test_bad_input_raises_protocol_error_only(raw: bytes) -> None:
    with pytest.raises(spdy.ProtocolError):
        list(spdy.FrameParser(spdy.HeaderCodec()).feed(raw))


def test_unknown_control_types_are_skipped() -> None:
    raw = bytes.fromhex("8003 00ff 00000002 abcd") + spdy.encode(spdy.Ping(1), spdy.HeaderCodec())
    assert list(spdy.FrameParser(spdy.HeaderCodec()).feed(raw)) == [spdy.Ping(1)]


# -- the session, over a real socket ---------------------------------------------------------


class Peer:
    """The client's end: frames out, frames in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.out, self.parser = spdy.HeaderCodec(), spdy.FrameParser(spdy.HeaderCodec())
        self.frames: list[spdy.Frame] = []

    async def send(self, *frames: spdy.Frame) -> None:
        for frame in frames:
            self.writer.write(spdy.encode(frame, self.out))
        await self.writer.drain()

    async def receive(self, count: int = 1) -> list[spdy.Frame]:
        async with asyncio.timeout(5):
            while len(self.frames) < count:
                data = await self.reader.read(1 << 16)
                assert data, "connection closed"
                self.frames += self.parser.feed(data)
        got, self.frames = self.frames[:count], self.frames[count:]
        return got


@contextlib.asynccontextmanager
async def session(accept: spdy.Accept | None = None) -> AsyncIterator[tuple[spdy.Session, Peer]]:
    ready: asyncio.Future[spdy.Session] = asyncio.get_running_loop().create_future()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        made = spdy.Session(reader, writer, accept)
        ready.set_result(made)
        await made.run()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    made = await ready
    try:
        yield made, Peer(reader, writer)
    finally:
        writer.close()
        await made.close()
        server.close()


def test_a_stream_is_replied_at_once_and_carries_data_both_ways() -> None:
    async def run() -> None:
        async with session() as (made, peer):
            await peer.send(spdy.SynStream(1, (("streamType", "stdin"),)))
            assert await peer.receive() == [spdy.SynReply(1)]
            stream = await made.next_stream()
            assert stream is not None
            assert stream.header("STREAMTYPE") == "stdin"
            await peer.send(spdy.DataFrame(1, b"hello"), spdy.DataFrame(1, b"", spdy.FLAG_FIN))
            assert await stream.read() == b"hello"
            assert await stream.read() == b""
            await stream.write(b"back")
            await stream.close()
            assert await peer.receive(2) == [
                spdy.DataFrame(1, b"back"),
                spdy.DataFrame(1, b"", spdy.FLAG_FIN),
            ]

    asyncio.run(run())


def test_client_pings_are_echoed_and_echoes_of_ours_ignored() -> None:
    async def run() -> None:
        async with session() as (_made, peer):
            await peer.send(spdy.Ping(2), spdy.Ping(7))
            assert await peer.receive() == [spdy.Ping(7)]

    asyncio.run(run())


def test_a_refused_stream_is_reset_and_never_handed_out() -> None:
    async def run() -> None:
        async with session(lambda s: None if s.header("port") else spdy.RST_REFUSED_STREAM) as (
            made,
            peer,
        ):
            await peer.send(spdy.SynStream(1, ()), spdy.SynStream(3, (("port", "80"),)))
            assert await peer.receive(2) == [
                spdy.RstStream(1, spdy.RST_REFUSED_STREAM),
                spdy.SynReply(3),
            ]
            stream = await made.next_stream()
            assert stream is not None
            assert stream.id == 3

    asyncio.run(run())


def test_a_client_reset_ends_only_that_stream() -> None:
    async def run() -> None:
        async with session() as (made, peer):
            await peer.send(spdy.SynStream(1, ()), spdy.SynStream(3, ()))
            await peer.receive(2)
            first, second = await made.next_stream(), await made.next_stream()
            assert first is not None
            assert second is not None
            await peer.send(spdy.RstStream(1, spdy.RST_CANCEL), spdy.DataFrame(3, b"x"))
            assert await first.read() == b""
            assert first.broken
            assert await second.read() == b"x"
            await first.write(b"dropped")  # no frame for a reset stream
            await second.write(b"y")
            assert await peer.receive() == [spdy.DataFrame(3, b"y")]

    asyncio.run(run())


def test_a_megabyte_goes_out_without_any_window_update() -> None:
    async def run() -> None:
        async with session() as (made, peer):
            await peer.send(spdy.Settings(((0, 7, 65536),)), spdy.SynStream(1, ()))
            await peer.receive()
            stream = await made.next_stream()
            assert stream is not None
            await asyncio.wait_for(stream.write(b"z" * (1 << 20)), 5)
            frames = await peer.receive(32)
            assert sum(len(f.data) for f in frames if isinstance(f, spdy.DataFrame)) == 1 << 20

    asyncio.run(run())


def test_the_connections_end_ends_every_stream_and_next_stream() -> None:
    async def run() -> None:
        async with session() as (made, peer):
            await peer.send(spdy.SynStream(1, ()))
            await peer.receive()
            stream = await made.next_stream()
            assert stream is not None
            peer.writer.close()
            assert await asyncio.wait_for(stream.read(), 5) == b""
            assert await asyncio.wait_for(made.next_stream(), 5) is None

    asyncio.run(run())


def test_close_sends_goaway_with_the_last_stream_id() -> None:
    async def run() -> None:
        async with session() as (made, peer):
            await peer.send(spdy.SynStream(5, ()))
            await peer.receive()
            await made.close()
            assert await peer.receive() == [spdy.GoAway(5, spdy.GOAWAY_OK)]

    asyncio.run(run())
