"""Port-forward over SPDY (`portforward.k8s.io`) driven as client-go drives it, against real
sockets: the streaming server, the upgrade, pairs of streams, a pod-side server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from supervisor.cri.streaming import portforward, spdy
from supervisor.cri.streaming.part import PodTarget as Pod
from supervisor.cri.streaming.server import StreamServer
from tests.support.spdy_client import SpdyClient

pytestmark = pytest.mark.timeout(30)


POD = Pod("pod1", "")


@dataclass
class Node:
    server: StreamServer
    forwardings: list[portforward.Forwarding]

    async def connect(self, pod: Pod = POD) -> SpdyClient:
        url = await self.server.url("portforward", pod)
        host, rest = url.removeprefix("http://").split("/", 1)
        address, port = host.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(address, int(port))
        writer.write(
            f"POST /{rest} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\n"
            "Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: portforward.k8s.io\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head
        assert b"X-Stream-Protocol-Version: portforward.k8s.io" in head
        return SpdyClient(reader, writer)


@contextlib.asynccontextmanager
async def node() -> AsyncIterator[Node]:
    server = StreamServer()
    made: list[portforward.Forwarding] = []

    async def handle(exchange: object) -> None:
        from supervisor.cri.streaming.server import Exchange

        assert isinstance(exchange, Exchange)
        upgraded = await spdy.upgrade(exchange, (portforward.PROTOCOL,), portforward.check_stream)
        assert upgraded is not None
        forwarding = portforward.Forwarding(
            upgraded[0], exchange.payload, abort=portforward.stuck(exchange.writer)
        )
        made.append(forwarding)
        await forwarding.run()

    server.route("portforward", "spdy", handle)
    await server.start()
    try:
        yield Node(server, made)
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def pod_server(
    serve: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[int]:
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def eventually(condition: Callable[[], bool], within: float = 10) -> None:
    """Polls: what the condition looks at changes without the client hearing of it."""
    for _ in range(int(within / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    assert condition()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_many_pairs_at_once_each_reach_the_pod():
    async def run() -> None:
        async with node() as n, pod_server(echo) as port:
            client = await n.connect()
            pairs = [await client.forward(port, request) for request in range(10)]
            for i, (_, data) in enumerate(pairs):
                await client.send(spdy.DataFrame(data, f"hello {i}".encode() * 1000))
            for i, (_, data) in enumerate(pairs):
                want = f"hello {i}".encode() * 1000
                await client.until(lambda d=data, w=want: bytes(client.streams[d].data) == w)
            for error, data in pairs:
                await client.send(spdy.DataFrame(data, b"", spdy.FLAG_FIN))
                await client.until(
                    lambda e=error, d=data: client.streams[d].fin and client.streams[e].fin
                )
                assert client.streams[error].data == b""  # nothing went wrong
                assert client.streams[error].rst is None
            await eventually(lambda: n.forwardings[0].active == 0)
            await client.close()

    asyncio.run(run())


def test_a_reset_from_the_pod_resets_only_that_pair():
    async def run() -> None:
        async def reset_or_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            first = await reader.read(5)
            if first == b"reset":
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                return
            writer.write(first)
            await echo(reader, writer)

        async with node() as n, pod_server(reset_or_echo) as port:
            client = await n.connect()
            kept = await client.forward(port, 0)
            lost = await client.forward(port, 1)
            await client.send(spdy.DataFrame(lost[1], b"reset"))
            await client.until(lambda: client.streams[lost[1]].rst is not None)
            await client.until(lambda: client.streams[lost[0]].rst is not None)
            assert client.streams[lost[1]].rst == spdy.RST_CANCEL
            assert client.streams[lost[0]].data == b""  # no error text: the session goes on
            await client.send(spdy.DataFrame(kept[1], b"still here"))
            await client.until(lambda: client.streams[kept[1]].data == b"still here")
            after = await client.forward(port, 2)  # new connections keep working
            await client.send(spdy.DataFrame(after[1], b"again"))
            await client.until(lambda: client.streams[after[1]].data == b"again")
            assert client.streams[kept[1]].rst is None
            assert not client.ended
            await client.close()

    asyncio.run(run())


def test_a_reset_from_the_client_resets_the_pod_connection():
    async def run() -> None:
        seen: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def watch(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while await reader.read(65536):
                    pass
                seen.set_result("eof")
            except ConnectionResetError:
                seen.set_result("reset")
            writer.close()

        async with node() as n, pod_server(watch) as port:
            client = await n.connect()
            error, data = await client.forward(port, 0)
            await client.send(spdy.DataFrame(data, b"partial request"))
            await asyncio.sleep(0.1)
            await client.send(spdy.RstStream(data, spdy.RST_CANCEL))
            assert await asyncio.wait_for(seen, 5) == "reset"
            await client.until(lambda: client.streams[error].rst is not None)
            await eventually(lambda: n.forwardings[0].active == 0)
            await client.close()

    asyncio.run(run())


def test_half_close_the_client_ends_its_request_and_still_gets_the_whole_answer():
    async def run() -> None:
        async def answer_after_eof(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            request = await reader.read()  # to the client's end
            await asyncio.sleep(0.2)
            writer.write(b"got " + request + b"." * 1_000_000)
            await writer.drain()
            writer.close()

        async with node() as n, pod_server(answer_after_eof) as port:
            client = await n.connect()
            error, data = await client.forward(port, 7)
            await client.send(spdy.DataFrame(data, b"question", spdy.FLAG_FIN))
            await client.until(lambda: client.streams[data].fin)
            assert bytes(client.streams[data].data) == b"got question" + b"." * 1_000_000
            await client.until(lambda: client.streams[error].fin)
            assert client.streams[error].data == b""
            await eventually(lambda: n.forwardings[0].active == 0)
            assert n.forwardings[0]._session.streams == {}
            await client.close()

    asyncio.run(run())


def test_a_port_nothing_listens_on_is_said_on_the_error_stream():
    async def run() -> None:
        port = free_port()
        async with node() as n:
            client = await n.connect(Pod("abc123", ""))
            error, data = await client.forward(port, 0)
            await client.until(lambda: client.streams[error].fin and client.streams[data].fin)
            assert client.streams[error].data.decode() == (
                f"error forwarding port {port} to pod abc123: nothing listens on port {port} "
                f"inside the pod's network namespace (127.0.0.1:{port}: connection refused; "
                f"[::1]:{port}: connection refused)"
            )
            await client.close()

    asyncio.run(run())


@pytest.mark.parametrize("port", ["0", "65536", "http", ""])
def test_a_stream_with_a_bad_port_is_refused(port: str):
    async def run() -> None:
        async with node() as n:
            client = await n.connect()
            stream = await client.open("error", port, 0)
            await client.until(lambda: client.streams[stream].rst is not None)
            assert client.streams[stream].rst == spdy.RST_REFUSED_STREAM
            assert not client.streams[stream].replied
            await client.close()

    asyncio.run(run())


def test_old_clients_without_request_ids_are_paired_by_stream_ids():
    async def run() -> None:
        async with node() as n, pod_server(echo) as port:
            client = await n.connect()
            error, data = await client.forward(port, None)
            assert data == error + 2
            await client.send(spdy.DataFrame(data, b"old", spdy.FLAG_FIN))
            await client.until(lambda: client.streams[data].fin)
            assert client.streams[data].data == b"old"
            await client.close()

    asyncio.run(run())


def test_a_pair_left_incomplete_is_told_so_on_its_error_stream(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(portforward, "PAIR_TIMEOUT", 0.3)

    async def run() -> None:
        async with node() as n, pod_server(echo) as port:
            client = await n.connect()
            error = await client.open("error", port, 5)
            await client.until(lambda: client.streams[error].fin, within=5)
            text = client.streams[error].data.decode()
            assert text == "timed out waiting for the streams of request 5"
            await eventually(lambda: n.forwardings[0].active == 0)
            await client.close()

    asyncio.run(run())


def test_the_connection_s_end_closes_every_pod_connection():
    async def run() -> None:
        closed = 0
        all_closed = asyncio.Event()

        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal closed
            with contextlib.suppress(ConnectionError):
                await reader.read()
            closed += 1
            if closed == 5:
                all_closed.set()
            writer.close()

        async with node() as n, pod_server(hold) as port:
            client = await n.connect()
            for request in range(5):
                await client.forward(port, request)
            await asyncio.sleep(0.1)
            assert n.forwardings[0].active == 5
            await client.close()
            await asyncio.wait_for(all_closed.wait(), 5)
            for _ in range(500):
                if not (n.forwardings[0].active or n.server.connections):
                    break
                await asyncio.sleep(0.01)
            assert n.forwardings[0].active == 0
            assert n.server.connections == 0

    asyncio.run(run())


def test_a_client_that_stops_reading_does_not_hold_the_server_s_stop():
    async def run() -> None:
        async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while True:
                    writer.write(b"z" * 65536)
                    await writer.drain()

        async with node() as n, pod_server(flood) as port:
            client = await n.connect()
            await client.forward(port, 0)
            client.task.cancel()  # reads no more: the server's writes pile up
            await asyncio.sleep(0.5)
            async with asyncio.timeout(10):
                await n.server.stop()
            assert n.server.connections == 0
            client.writer.close()

    asyncio.run(run())
