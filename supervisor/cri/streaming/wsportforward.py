"""Port-forward over WebSocket, in its two forms (`handler`, on route portforward/websocket).

- Tunnelled SPDY (`SPDY/3.1+portforward.k8s.io`, kubectl and crictl since Kubernetes 1.30):
  the binary messages carry, in order, the bytes of a SPDY/3.1 connection, which is served
  exactly as `portforward.serve_spdy` serves a SPDY upgrade (stream pairs, resets, errors).
  `TunnelReader` and `TunnelWriter` give `spdy.Session` the reader and writer it expects.
- Channel pairs (kubelet's older form; subprotocols `v4.channel.k8s.io`,
  `v4.base64.channel.k8s.io`, or none): the ports come from the URL's query (`?port=80&port=
  8080` or `port=80,8080`), else from the PortForward request (the payload's `ports`). Port i
  has channel 2i for data (both ways) and 2i+1 for errors (ours to write); the server first
  writes the port, 2 bytes little-endian, on both. Each port gets one connection in the pod
  (`dial`); what fails is said on its error channel. There is no per-channel end in this
  form: the WebSocket closes when every port's connection has ended (as kubelet's does), or
  when the client goes.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import structlog

from supervisor.cri.streaming import portforward, spdy, websocket
from supervisor.cri.streaming.dial import DialError, Target, dial
from supervisor.cri.streaming.portforward import Dialer, Pod

if TYPE_CHECKING:
    from supervisor.cri.streaming.server import Exchange

log = structlog.get_logger("ctrd.cri.portforward")

TUNNEL = "SPDY/3.1+portforward.k8s.io"
PAIRS = {
    "v4.channel.k8s.io": websocket.Codec(),
    "v4.base64.channel.k8s.io": websocket.Codec(base64=True),
    "": websocket.Codec(),
}
PROTOCOLS = (TUNNEL, *PAIRS)
TUNNEL_QUEUE = 16  # messages of a tunnel held before the WebSocket's reader waits


class BadPorts(ValueError):
    pass


def ports_of(query: dict[str, list[str]], payload: Any) -> list[int]:
    """The ports to forward: the query's `port` values (each may be a comma list), else the
    request's; BadPorts when one does not parse or none is given."""
    given = query.get("port", [])
    if not given:
        ports = [int(p) for p in getattr(payload, "ports", ())]
        if not ports:
            raise BadPorts('query parameter "port" is required')
        return ports
    ports = []
    for value in given:
        if not value:
            raise BadPorts('query parameter "port" cannot be empty')
        for text in value.split(","):
            port = portforward.parse_port(text.strip())
            if port is None:
                raise BadPorts(f"unable to parse {value!r} as a port")
            ports.append(port)
    return ports


async def handler(exchange: Exchange, dialer: Dialer = dial) -> None:
    """Both forms, by the subprotocol the client offers first."""
    pod = cast(Pod, exchange.payload)
    ports: list[int] = []
    if websocket.choose(exchange.request.values("sec-websocket-protocol"), PROTOCOLS) != TUNNEL:
        try:
            ports = ports_of(exchange.request.query, exchange.payload)
        except BadPorts as e:
            await exchange.respond(400, str(e))
            return
    ws = await websocket.upgrade(exchange, PROTOCOLS)
    if ws is None:
        return
    if ws.protocol == TUNNEL:
        await tunnel(ws, pod, dialer)
    else:
        await pairs(ws, PAIRS[ws.protocol], pod, ports, dialer)


# --- SPDY tunnelled in binary messages -------------------------------------------------------


class TunnelReader:
    """The SPDY bytes the client sent, message after message (what `Session` reads)."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(TUNNEL_QUEUE)
        self._rest = b""
        self._ended = False

    async def read(self, n: int = -1) -> bytes:
        while not self._rest:
            if self._ended:
                return b""
            self._rest = await self._queue.get()
            if not self._rest:
                self._ended = True
        size = len(self._rest) if n < 0 else n
        chunk, self._rest = self._rest[:size], self._rest[size:]
        return chunk

    async def pump(self, ws: websocket.WebSocket) -> None:
        """Binary messages in, until the WebSocket ends (then the reader's end)."""
        try:
            while (message := await ws.receive()) is not None:
                if message.data and not message.text:
                    await self._queue.put(message.data)
        finally:
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(b"")


class TunnelWriter:
    """What `Session` writes, each drained batch one binary message, in order."""

    def __init__(self, ws: websocket.WebSocket) -> None:
        self._ws = ws
        self._pending: list[bytes] = []
        self._closed = False

    def write(self, data: bytes) -> None:
        if not self._closed:
            self._pending.append(data)

    async def drain(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            await self._ws.send(data)  # written before its first await: order is kept

    def is_closing(self) -> bool:
        return self._closed or self._ws.closed

    def close(self) -> None:
        """The session's end: the WebSocket itself is closed by `tunnel`, with its close
        frame."""
        self._closed = True


async def tunnel(ws: websocket.WebSocket, pod: Pod, dialer: Dialer = dial) -> None:
    reader = TunnelReader()
    pumping = asyncio.create_task(reader.pump(ws))
    session = spdy.Session(
        cast(asyncio.StreamReader, reader),
        cast(asyncio.StreamWriter, TunnelWriter(ws)),
        portforward.check_stream,
    )
    try:
        await portforward.Forwarding(
            session, pod, dialer, lambda: ws.writer.transport.abort()
        ).run()
        await ws.close()
    finally:
        pumping.cancel()
        with contextlib.suppress(BaseException):
            await pumping


# --- channel pairs ---------------------------------------------------------------------------


async def pairs(
    ws: websocket.WebSocket,
    codec: websocket.Codec,
    pod: Pod,
    ports: Sequence[int],
    dialer: Dialer = dial,
) -> None:
    mux = websocket.Channels(ws, codec, readable=[2 * i for i in range(len(ports))])
    for i, port in enumerate(ports):
        prefix = struct.pack("<H", port)
        await mux.channel(2 * i).write(prefix)
        await mux.channel(2 * i + 1).write(prefix)
    reading = asyncio.create_task(mux.run())
    try:
        forwards = [
            _forward_port(mux.channel(2 * i), mux.channel(2 * i + 1), pod, port, dialer)
            for i, port in enumerate(ports)
        ]
        done = asyncio.gather(*forwards)
        lost = asyncio.create_task(mux.lost.wait())
        await asyncio.wait((done, lost), return_when=asyncio.FIRST_COMPLETED)
        if not done.done():
            done.cancel()
        with contextlib.suppress(BaseException):
            await done
        lost.cancel()
        await ws.close()
    finally:
        reading.cancel()
        with contextlib.suppress(BaseException):
            await reading


async def _forward_port(
    data: websocket.WsChannel, error: websocket.WsChannel, pod: Pod, port: int, dialer: Dialer
) -> None:
    try:
        sock = await dialer(Target(pod.netns, port))
    except DialError as e:
        message = f"error forwarding port {port} to pod {pod.sandbox_id}: {e}"
        log.info("cri_portforward_failed", id=pod.sandbox_id, error=message)
        await error.write(message.encode())
        return
    loop = asyncio.get_running_loop()

    async def to_pod() -> None:
        while chunk := await data.read():
            await loop.sock_sendall(sock, chunk)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)

    up = asyncio.create_task(to_pod())
    try:
        while chunk := await loop.sock_recv(sock, portforward.CHUNK):
            await data.write(chunk)
    except OSError:
        pass  # a reset from the pod: this port's connection is over
    finally:
        up.cancel()
        with contextlib.suppress(BaseException):
            await up
        sock.close()
