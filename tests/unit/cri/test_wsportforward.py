"""Port-forward over WebSocket: kubelet's channel pairs and SPDY tunnelled in binary messages,
driven by aiohttp's client through the real streaming server to a pod-side server on
loopback."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest

from supervisor.cri.streaming import spdy, wsportforward
from supervisor.cri.streaming.server import StreamServer
from tests.support.spdy_client import SpdyClient

pytestmark = pytest.mark.timeout(30)


@dataclass(frozen=True)
class Target:
    sandbox_id: str
    netns: str
    ports: tuple[int, ...] = ()


@contextlib.asynccontextmanager
async def serving(target: Target) -> AsyncIterator[tuple[str, StreamServer]]:
    server = StreamServer()
    server.route("portforward", "websocket", wsportforward.handler)
    try:
        url = await server.url("portforward", target)
        yield url.replace("http://", "ws://"), server
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def receive(ws: aiohttp.ClientWebSocketResponse) -> bytes:
    message = await asyncio.wait_for(ws.receive(), 10)
    if message.type == aiohttp.WSMsgType.TEXT:
        return str(message.data).encode()
    assert message.type == aiohttp.WSMsgType.BINARY, message
    return bytes(message.data)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ports_from_the_query_or_else_from_the_request():
    assert wsportforward.ports_of({"port": ["80", "81,82"]}, None) == [80, 81, 82]
    assert wsportforward.ports_of({}, Target("p", "", (8080,))) == [8080]
    for query in ({"port": ["x"]}, {"port": [""]}, {"port": ["0"]}, {}):
        with pytest.raises(wsportforward.BadPorts):
            wsportforward.ports_of(query, Target("p", ""))


@pytest.mark.parametrize("protocol", ["v4.channel.k8s.io", "v4.base64.channel.k8s.io"])
def test_channel_pairs_carry_the_port_then_the_bytes_both_ways(protocol: str):
    b64 = "base64" in protocol

    def framed(channel: int, data: bytes) -> bytes:
        return bytes([0x30 + channel]) + base64.b64encode(data) if b64 else bytes([channel]) + data

    async def run() -> None:
        async with echo_server() as port, serving(Target("pod", "", (port,))) as (url, server):
            async with aiohttp.ClientSession() as http:
                ws = await http.ws_connect(url, protocols=(protocol,))
                assert ws.protocol == protocol
                prefix = struct.pack("<H", port)
                assert sorted([await receive(ws), await receive(ws)]) == [
                    framed(0, prefix),
                    framed(1, prefix),
                ]
                if b64:
                    await ws.send_str(framed(0, b"over the socket").decode())
                else:
                    await ws.send_bytes(framed(0, b"over the socket"))
                assert await receive(ws) == framed(0, b"over the socket")
                await ws.close()
            for _ in range(200):
                if not server.connections:
                    break
                await asyncio.sleep(0.01)
            assert server.connections == 0

    asyncio.run(run())


def test_a_port_nothing_listens_on_is_said_on_its_error_channel():
    async def run() -> None:
        port = free_port()
        url_query = f"?port={port}"
        async with serving(Target("abc", "")) as (url, _), aiohttp.ClientSession() as http:
            ws = await http.ws_connect(url + url_query, protocols=("v4.channel.k8s.io",))
            messages = [await receive(ws) for _ in range(3)]
            assert messages[2][0] == 1
            assert (
                messages[2][1:]
                .decode()
                .startswith(
                    f"error forwarding port {port} to pod abc: nothing listens on port {port}"
                )
            )
            closing = await asyncio.wait_for(ws.receive(), 10)
            assert closing.type == aiohttp.WSMsgType.CLOSE
            await ws.close()

    asyncio.run(run())


def test_no_port_at_all_is_a_400_before_the_upgrade():
    async def run() -> None:
        async with serving(Target("abc", "")) as (url, _), aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
                await http.ws_connect(url, protocols=("v4.channel.k8s.io",))
            assert caught.value.status == 400

    asyncio.run(run())


class WsStream:
    """An aiohttp WebSocket as the reader and writer of a SpdyClient (binary messages)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.pending: list[bytes] = []

    async def read(self, _n: int) -> bytes:
        message = await self.ws.receive()
        if message.type != aiohttp.WSMsgType.BINARY:
            return b""
        return bytes(message.data)

    def write(self, data: bytes) -> None:
        self.pending.append(data)

    async def drain(self) -> None:
        data, self.pending = b"".join(self.pending), []
        await self.ws.send_bytes(data)

    def close(self) -> None:
        pass

    async def wait_closed(self) -> None:
        await self.ws.close()


def test_spdy_tunnelled_in_websocket_messages_forwards_pairs_as_spdy_does():
    async def run() -> None:
        async with echo_server() as port, serving(Target("pod", "")) as (url, server):
            async with aiohttp.ClientSession() as http:
                ws = await http.ws_connect(url, protocols=(wsportforward.TUNNEL,))
                assert ws.protocol == wsportforward.TUNNEL
                stream = WsStream(ws)
                client = SpdyClient(stream, stream)
                pairs = [await client.forward(port, request) for request in range(3)]
                for i, (_, data) in enumerate(pairs):
                    await client.send(spdy.DataFrame(data, b"tunnel %d" % i, spdy.FLAG_FIN))
                for i, (error, data) in enumerate(pairs):
                    await client.until(
                        lambda e=error, d=data: client.streams[d].fin and client.streams[e].fin
                    )
                    assert client.streams[data].data == b"tunnel %d" % i
                    assert client.streams[error].data == b""
                await client.close()
            for _ in range(200):
                if not server.connections:
                    break
                await asyncio.sleep(0.01)
            assert server.connections == 0

    asyncio.run(run())
