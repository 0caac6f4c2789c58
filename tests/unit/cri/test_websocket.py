"""WebSocket (RFC 6455) framing, and exec/attach over Kubernetes' channel protocols, checked
against aiohttp's client (an implementation of its own) through the real streaming server."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.cri.streaming import remotecommand, websocket
from supervisor.cri.streaming.server import StreamServer
from supervisor.cri.streaming.websocket import (
    Assembler,
    Close,
    Codec,
    Frame,
    FrameParser,
    Message,
    Opcode,
    ProtocolError,
    encode,
)

pytestmark = pytest.mark.timeout(30)


def test_the_accept_key_of_the_rfc_s_example():
    assert websocket.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_the_client_s_first_supported_protocol_is_chosen():
    supported = ("v5.channel.k8s.io", "v4.channel.k8s.io", "")
    assert websocket.choose(["v4.channel.k8s.io", "v5.channel.k8s.io"], supported) == (
        "v4.channel.k8s.io"
    )
    assert websocket.choose(["x", "v5.channel.k8s.io"], supported) == "v5.channel.k8s.io"
    assert websocket.choose([], supported) == ""  # none offered: kubelet's default
    assert websocket.choose([], ("v4.channel.k8s.io",)) is None
    assert websocket.choose(["x"], supported) is None


@given(
    opcode=st.sampled_from([Opcode.TEXT, Opcode.BINARY, Opcode.CONTINUATION]),
    payload=st.binary(max_size=70000),
    fin=st.booleans(),
    mask=st.binary(min_size=4, max_size=4),
    cuts=st.lists(st.integers(min_value=0, max_value=70020), max_size=4),
)
def test_a_masked_frame_comes_back_whole_however_it_is_cut(
    opcode: int, payload: bytes, fin: bool, mask: bytes, cuts: list[int]
):
    wire = encode(opcode, payload, fin=fin, mask=mask) + encode(Opcode.PING, b"x", mask=mask)
    parser = FrameParser()
    frames: list[Frame] = []
    last = 0
    for cut in sorted({c for c in cuts if c < len(wire)}):
        frames += parser.feed(wire[last:cut])
        last = cut
    frames += parser.feed(wire[last:])
    assert frames == [Frame(opcode, payload, fin), Frame(Opcode.PING, b"x", True)]


@given(st.binary(max_size=300), st.binary(min_size=4, max_size=4))
def test_masking_twice_gives_the_bytes_back(payload: bytes, key: bytes):
    masked = websocket.mask_bytes(payload, key)
    assert len(masked) == len(payload)
    assert websocket.mask_bytes(masked, key) == payload
    if payload:
        assert masked[0] == payload[0] ^ key[0]


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        (encode(Opcode.BINARY, b"x"), Close.PROTOCOL_ERROR),  # a client's frame unmasked
        (bytes([0x80 | 0x40 | 2, 0x80]) + b"mask", Close.PROTOCOL_ERROR),  # RSV1
        (bytes([0x80 | 0x3, 0x80]) + b"mask", Close.PROTOCOL_ERROR),  # opcode 3
        (encode(Opcode.PING, b"x" * 126, mask=b"mask"), Close.PROTOCOL_ERROR),
        (encode(Opcode.CLOSE, b"", fin=False, mask=b"mask"), Close.PROTOCOL_ERROR),
        (bytes([0x82, 0x80 | 127]) + (1 << 63).to_bytes(8, "big"), Close.PROTOCOL_ERROR),
        (bytes([0x82, 0x80 | 127]) + (1 << 40).to_bytes(8, "big"), Close.TOO_BIG),
    ],
)
def test_frames_the_rfc_forbids_are_refused_with_their_close_code(wire: bytes, code: int):
    with pytest.raises(ProtocolError) as caught:
        FrameParser().feed(wire)
    assert caught.value.code == code


def test_fragments_make_one_message_and_misplaced_ones_are_refused():
    joined = Assembler()
    assert joined.add(Frame(Opcode.TEXT, b"he", False)) is None
    assert joined.add(Frame(Opcode.CONTINUATION, b"ll", False)) is None
    assert joined.add(Frame(Opcode.CONTINUATION, b"o", True)) == Message(True, b"hello")
    with pytest.raises(ProtocolError):
        Assembler().add(Frame(Opcode.CONTINUATION, b"x", True))
    started = Assembler()
    started.add(Frame(Opcode.BINARY, b"x", False))
    with pytest.raises(ProtocolError):
        started.add(Frame(Opcode.BINARY, b"y", True))
    with pytest.raises(ProtocolError) as caught:
        Assembler().add(Frame(Opcode.TEXT, b"\xff", True))
    assert caught.value.code == Close.INVALID_DATA


def test_channel_codecs_binary_base64_and_v5_close_signal():
    assert Codec().encode(1, b"hi") == b"\x01hi"
    assert Codec(base64=True).encode(1, b"hi") == b"1aGk="
    got = Codec(base64=True).decode(Message(True, b"0aGk="))
    assert got is not None
    assert (got.channel, got.data) == (0, b"hi")
    closing = Codec(close_signal=True).decode(Message(False, b"\xff\x00"))
    assert closing is not None
    assert closing.closing
    assert closing.channel == 0
    assert Codec().decode(Message(False, b"")) is None
    with pytest.raises(ProtocolError):
        Codec(base64=True).decode(Message(True, b"0!!"))


# --- exec over WebSocket, through the streaming server, driven by aiohttp -------------------


@dataclass(frozen=True)
class Request:
    stdin: bool = True
    stdout: bool = True
    stderr: bool = True
    tty: bool = False


Run = Callable[[Any, remotecommand.Channels], Awaitable[None]]


async def echo_then_exit_3(_request: Any, channels: remotecommand.Channels) -> None:
    """Stdin back on stdout until stdin's end, a word on stderr, then exit code 3."""
    assert channels.stdin is not None
    assert channels.stdout is not None
    while data := await channels.stdin.read():
        await channels.stdout.write(data)
    if channels.stderr is not None:
        await channels.stderr.write(b"bye")
    raise remotecommand.ExitCode(3, ["sh"])


@contextlib.asynccontextmanager
async def serving(run: Run, request: Request) -> AsyncIterator[str]:
    server = StreamServer()
    server.route("exec", "websocket", websocket.remotecommand_handler(run))
    try:
        url = await server.url("exec", request)
        yield url.replace("http://", "ws://")
    finally:
        await server.stop()


async def receive(ws: aiohttp.ClientWebSocketResponse) -> bytes:
    message = await asyncio.wait_for(ws.receive(), 10)
    if message.type == aiohttp.WSMsgType.TEXT:
        return str(message.data).encode()
    assert message.type == aiohttp.WSMsgType.BINARY, message
    return bytes(message.data)


def test_v5_exec_stdin_close_signal_output_then_the_exit_status():
    async def run() -> None:
        async with serving(echo_then_exit_3, Request()) as url, aiohttp.ClientSession() as http:
            protocols = ("v5.channel.k8s.io", "v4.channel.k8s.io")
            async with http.ws_connect(url, protocols=protocols) as ws:
                assert ws.protocol == "v5.channel.k8s.io"
                assert await receive(ws) == b"\x01"  # the first output channel, empty
                await ws.send_bytes(b"\x00hello ")
                await ws.send_bytes(b"\x00world")
                out = b""
                while out != b"hello world":
                    message = await receive(ws)
                    assert message[0] == 1
                    out += message[1:]
                await ws.send_bytes(b"\xff\x00")  # v5: stdin is done
                assert await receive(ws) == b"\x02bye"
                status = await receive(ws)
                assert status[0] == 3
                assert json.loads(status[1:]) == {
                    "metadata": {},
                    "status": "Failure",
                    "message": "command terminated with non-zero exit code: "
                    "error executing command [sh], exit code 3",
                    "reason": "NonZeroExitCode",
                    "details": {"causes": [{"reason": "ExitCode", "message": "3"}]},
                }
                closing = await asyncio.wait_for(ws.receive(), 10)
                assert closing.type == aiohttp.WSMsgType.CLOSE
                assert ws.close_code == Close.NORMAL

    asyncio.run(run())


def test_base64_exec_and_a_plain_text_status_before_v4():
    async def ok(_request: Any, channels: remotecommand.Channels) -> None:
        assert channels.stdout is not None
        await channels.stdout.write(b"\x00binary\xff")

    async def run() -> None:
        request = Request(stdin=False, stderr=False)
        async with (
            serving(ok, request) as url,
            aiohttp.ClientSession() as http,
            http.ws_connect(url, protocols=("base64.channel.k8s.io",)) as ws,
        ):
            assert await receive(ws) == b"1"
            message = await receive(ws)
            assert message[:1] == b"1"
            assert base64.b64decode(message[1:]) == b"\x00binary\xff"
            closing = await asyncio.wait_for(ws.receive(), 10)
            assert closing.type == aiohttp.WSMsgType.CLOSE  # success: no status text

    asyncio.run(run())


def test_tty_resizes_arrive_on_channel_4_and_no_stderr_channel():
    sizes: list[tuple[int, int]] = []

    async def resized(_request: Any, channels: remotecommand.Channels) -> None:
        assert channels.stderr is None
        assert channels.resize is not None
        parser = remotecommand.ResizeParser()
        while len(sizes) < 2:
            data = await channels.resize.read()
            assert data
            sizes.extend(parser.feed(data))

    async def run() -> None:
        request = Request(tty=True)
        async with (
            serving(resized, request) as url,
            aiohttp.ClientSession() as http,
            http.ws_connect(url, protocols=("v4.channel.k8s.io",)) as ws,
        ):
            assert await receive(ws) == b"\x01"
            await ws.send_bytes(b'\x04{"Width":80,"Height":24}')
            await ws.send_bytes(b'\x04{"Width":120,"Height":40}')
            status = await receive(ws)
            assert json.loads(status[1:]) == {"metadata": {}, "status": "Success"}

    asyncio.run(run())
    assert sizes == [(80, 24), (120, 40)]


def test_the_client_going_away_is_seen_as_lost_and_nothing_is_left():
    seen: list[str] = []

    async def waits(_request: Any, channels: remotecommand.Channels) -> None:
        await channels.lost.wait()
        assert channels.stdin is not None
        assert await channels.stdin.read() == b""
        seen.append("lost")

    async def run() -> None:
        fds = len(os.listdir("/proc/self/fd"))
        server = StreamServer()
        server.route("exec", "websocket", websocket.remotecommand_handler(waits))
        url = (await server.url("exec", Request())).replace("http://", "ws://")
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(url, protocols=("v4.channel.k8s.io",))
            assert await receive(ws) == b"\x01"
            await ws.close()
        for _ in range(200):
            if seen and not server.connections:
                break
            await asyncio.sleep(0.01)
        assert seen == ["lost"]
        assert server.connections == 0
        await server.stop()
        assert len(os.listdir("/proc/self/fd")) <= fds

    asyncio.run(run())


def test_an_unsupported_protocol_or_version_is_refused_before_the_upgrade():
    async def run() -> None:
        async with serving(echo_then_exit_3, Request()) as url, aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
                await http.ws_connect(url, protocols=("v9.channel.k8s.io",))
            assert caught.value.status == 403
        async with serving(echo_then_exit_3, Request()) as url, aiohttp.ClientSession() as http:
            plain = url.replace("ws://", "http://")
            headers = {
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Version": "8",
                "Sec-WebSocket-Key": base64.b64encode(b"k" * 16).decode(),
            }
            async with http.get(plain, headers=headers) as response:
                assert response.status == 400
                assert response.headers["Sec-WebSocket-Version"] == "13"

    asyncio.run(run())


def test_a_ping_is_answered_with_its_payload():
    async def run() -> None:
        async def waits(_request: Any, channels: remotecommand.Channels) -> None:
            await channels.lost.wait()

        async with (
            serving(waits, Request()) as url,
            aiohttp.ClientSession() as http,
            http.ws_connect(url, autoping=False) as ws,
        ):
            assert ws.protocol is None  # none offered: kubelet's "" (binary channels)
            assert await receive(ws) == b"\x01"
            await ws.ping(b"are you there")
            pong = await asyncio.wait_for(ws.receive(), 10)
            assert pong.type == aiohttp.WSMsgType.PONG
            assert pong.data == b"are you there"

    asyncio.run(run())
