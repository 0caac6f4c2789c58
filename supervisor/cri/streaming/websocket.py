"""WebSocket (RFC 6455) for the streaming server, and Kubernetes' channel protocols on it.

The pure core (no I/O):
- `accept_key(key)`: the `Sec-WebSocket-Accept` of a client's key; `choose(offered,
  supported)`: the client's first subprotocol that we serve ("" when it offers none and ""
  is served, as kubelet's server picks).
- `encode(opcode, payload, mask=None)` -> a frame's bytes (a server's frames are unmasked);
  `FrameParser(require_mask=True).feed(data)` -> complete frames, checked as the RFC says:
  a client's frames are masked, no reserved bits or opcodes, control frames final and at most
  125 bytes; a payload over MAX_PAYLOAD is refused. `Assembler` joins fragments into
  messages (text checked to be UTF-8). Both raise `ProtocolError(code, reason)`, the close
  code to answer with, and only that.
- `Codec`: Kubernetes' channel framing of a message: binary (`channel.k8s.io`,
  `v4.channel.k8s.io`, `v5.channel.k8s.io`: one channel byte, then the bytes) or base64
  (`base64.channel.k8s.io`, `v4.base64.channel.k8s.io`: the channel as an ASCII digit, then
  base64 text); v5 adds the close signal, a message `[255, channel]`: the client is done
  writing on that channel (stdin's end).

The I/O shell:
- `await upgrade(exchange, protocols)` -> `WebSocket` or None (it answered 400/403): checks
  `Sec-WebSocket-Version: 13` and the key, picks the subprotocol, writes the 101.
- `WebSocket.receive()` -> the next message (`Message`), None once the peer closed or the
  connection ended; pings are answered, a close is echoed. `send(data, text=False)`,
  `close(code)` (a close frame, then the connection's end). Every frame is written with one
  `write` call, so frames of concurrent senders never interleave.
- `Channels`: the channels of a `WebSocket` under a `Codec`: `channel(n)` -> a `WsChannel`
  (`read()` -> bytes, b"" at the client's close signal or the connection's end; `write(data)`
  -> one message on that channel; `close()` does nothing: only v5 clients signal closes, and
  only toward the server); `run()` reads and dispatches until the connection ends, then sets
  `lost`. What arrives on a channel nobody reads is dropped, as kubelet drops it.

Exec and attach over WebSocket (`remotecommand_handler(run)`): the channels 0 stdin, 1 stdout,
2 stderr, 3 error, 4 resize of kubelet's server; an empty message on the first output channel
right after the upgrade (the client's sign that the connection is up); the status on channel 3
as `remotecommand.serve` writes it (JSON for v4 and v5, text before); then a normal close.
Port-forward's WebSocket forms are in `wsportforward`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import enum
import hashlib
import struct
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from supervisor.cri.streaming import remotecommand

if TYPE_CHECKING:
    from supervisor.cri.streaming.server import Exchange, Handler

log = structlog.get_logger("ctrd.cri.websocket")

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_PAYLOAD = 32 * 1024 * 1024  # bytes of one message (x/net/websocket's default, kubelet's)
MAX_CONTROL = 125
READ_SIZE = 256 * 1024
STREAM_CLOSE = 255  # v5's close signal: [255, channel]
QUEUE_LIMIT = 64  # messages one channel holds unread before the reader waits
CLOSE_WAIT = 1.0  # seconds our close waits for the peer's


class Opcode(enum.IntEnum):
    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


class Close(enum.IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED = 1003
    NO_STATUS = 1005
    INVALID_DATA = 1007
    TOO_BIG = 1009
    INTERNAL_ERROR = 1011


class ProtocolError(Exception):
    """What the peer sent breaks the RFC; `code` is the close code to answer with."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


# --- handshake -------------------------------------------------------------------------------


def accept_key(key: str) -> str:
    digest = hashlib.sha1((key + GUID).encode("ascii"), usedforsecurity=False).digest()
    return base64.b64encode(digest).decode("ascii")


def valid_key(key: str | None) -> bool:
    """A key is 16 random bytes in base64 (RFC 6455 §4.1)."""
    if key is None:
        return False
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


def choose(offered: Sequence[str], supported: Sequence[str]) -> str | None:
    """The client's first protocol that is supported; "" when it offered none and "" is."""
    if not offered:
        return "" if "" in supported else None
    return next((p for p in offered if p and p in supported), None)


# --- frames ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    opcode: int
    payload: bytes
    fin: bool = True


def mask_bytes(payload: bytes, key: bytes) -> bytes:
    """`payload` XOR the repeated 4-byte `key` (masking and unmasking are the same)."""
    n = len(payload)
    if not n:
        return b""
    repeated = (key * (n // 4 + 1))[:n]
    value = int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")
    return value.to_bytes(n, "little")


def encode(
    opcode: int, payload: bytes = b"", *, fin: bool = True, mask: bytes | None = None
) -> bytes:
    """One frame's bytes; `mask` (4 bytes) for a client's frame."""
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    mask_bit = 0x80 if mask is not None else 0
    if n < 126:
        head = struct.pack(">BB", first, mask_bit | n)
    elif n < 1 << 16:
        head = struct.pack(">BBH", first, mask_bit | 126, n)
    else:
        head = struct.pack(">BBQ", first, mask_bit | 127, n)
    if mask is not None:
        return head + mask + mask_bytes(payload, mask)
    return head + payload


_OPCODES = {int(o) for o in Opcode}


class FrameParser:
    """Bytes in, checked frames out (see the module docstring)."""

    def __init__(self, *, require_mask: bool = True, max_payload: int = MAX_PAYLOAD) -> None:
        self._require_mask = require_mask
        self._max = max_payload
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        self._buffer += data
        frames = []
        while (frame := self._next()) is not None:
            frames.append(frame)
        return frames

    def _next(self) -> Frame | None:
        buf = self._buffer
        if len(buf) < 2:
            return None
        first, second = buf[0], buf[1]
        fin, opcode, masked, n = (
            bool(first & 0x80),
            first & 0x0F,
            bool(second & 0x80),
            second & 0x7F,
        )
        if first & 0x70:
            raise ProtocolError(Close.PROTOCOL_ERROR, "reserved bits set with no extension")
        if opcode not in _OPCODES:
            raise ProtocolError(Close.PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
        if masked != self._require_mask:
            which = "masked" if self._require_mask else "unmasked"
            raise ProtocolError(Close.PROTOCOL_ERROR, f"frames must be {which}")
        pos = 2
        if n == 126:
            if len(buf) < 4:
                return None
            (n,) = struct.unpack_from(">H", buf, 2)
            pos = 4
        elif n == 127:
            if len(buf) < 10:
                return None
            (n,) = struct.unpack_from(">Q", buf, 2)
            pos = 10
            if n >> 63:
                raise ProtocolError(Close.PROTOCOL_ERROR, "payload length has its top bit set")
        if opcode >= Opcode.CLOSE and (n > MAX_CONTROL or not fin):
            raise ProtocolError(Close.PROTOCOL_ERROR, "control frames are final, <= 125 bytes")
        if n > self._max:
            raise ProtocolError(Close.TOO_BIG, f"frame of {n} bytes is too big")
        key = b""
        if masked:
            if len(buf) < pos + 4:
                return None
            key = bytes(buf[pos : pos + 4])
            pos += 4
        if len(buf) < pos + n:
            return None
        payload = bytes(buf[pos : pos + n])
        del buf[: pos + n]
        if masked:
            payload = mask_bytes(payload, key)
        return Frame(opcode, payload, fin)


@dataclass(frozen=True)
class Message:
    text: bool
    data: bytes


class Assembler:
    """Data frames into messages: a message starts with TEXT or BINARY and goes on with
    CONTINUATION frames until one is final; control frames are not its business."""

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        self._max = max_payload
        self._opcode: int | None = None
        self._parts: list[bytes] = []
        self._size = 0

    def add(self, frame: Frame) -> Message | None:
        if frame.opcode == Opcode.CONTINUATION:
            if self._opcode is None:
                raise ProtocolError(Close.PROTOCOL_ERROR, "continuation of no message")
        elif self._opcode is not None:
            raise ProtocolError(Close.PROTOCOL_ERROR, "a new message before the last ended")
        else:
            self._opcode = frame.opcode
        self._parts.append(frame.payload)
        self._size += len(frame.payload)
        if self._size > self._max:
            raise ProtocolError(Close.TOO_BIG, f"message of over {self._max} bytes")
        if not frame.fin:
            return None
        data = b"".join(self._parts)
        text = self._opcode == Opcode.TEXT
        self._opcode, self._parts, self._size = None, [], 0
        if text:
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                raise ProtocolError(Close.INVALID_DATA, "text message is not UTF-8") from None
        return Message(text, data)


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack(">H", code) + reason.encode("utf-8")[: MAX_CONTROL - 2]


def parse_close(payload: bytes) -> int:
    """The code of a close frame's payload (NO_STATUS if it has none)."""
    if not payload:
        return Close.NO_STATUS
    if len(payload) < 2:
        raise ProtocolError(Close.PROTOCOL_ERROR, "close payload of one byte")
    code: int = struct.unpack_from(">H", payload)[0]
    return code


# --- the connection --------------------------------------------------------------------------


class WebSocket:
    """The server side of one WebSocket connection (see the module docstring)."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        protocol: str = "",
        max_payload: int = MAX_PAYLOAD,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.protocol = protocol
        self._parser = FrameParser(max_payload=max_payload)
        self._assembler = Assembler(max_payload)
        self._frames: deque[Frame] = deque()
        self._close_sent = False
        self._peer_done = asyncio.Event()  # the peer's close frame came, or the connection ended
        self._receiving = 0
        self.closed = False  # the peer closed, or the connection ended

    async def receive(self) -> Message | None:
        self._receiving += 1
        try:
            return await self._receive()
        finally:
            self._receiving -= 1

    async def _receive(self) -> Message | None:
        while not self.closed:
            try:
                if not self._frames:
                    data = await self._read()
                    if not data:
                        self._lost()
                        return None
                    self._frames.extend(self._parser.feed(data))
                    continue
                message = await self._handle(self._frames.popleft())
            except ProtocolError as e:
                await self._send_close(e.code, e.reason)
                self._lost()
                return None
            if message is not None:
                return message
        return None

    async def _read(self) -> bytes:
        try:
            return await self.reader.read(READ_SIZE)
        except (ConnectionError, OSError):
            return b""

    async def _handle(self, frame: Frame) -> Message | None:
        if frame.opcode == Opcode.PING:
            await self._send_frame(encode(Opcode.PONG, frame.payload))
            return None
        if frame.opcode == Opcode.PONG:
            return None
        if frame.opcode == Opcode.CLOSE:
            code = parse_close(frame.payload)
            await self._send_close(Close.NORMAL if code == Close.NO_STATUS else code)
            self._lost()
            return None
        return self._assembler.add(frame)

    async def send(self, data: bytes, text: bool = False) -> None:
        await self._send_frame(encode(Opcode.TEXT if text else Opcode.BINARY, data))

    async def _send_frame(self, frame: bytes) -> None:
        if self._close_sent or self.writer.is_closing():
            return
        self.writer.write(frame)
        try:
            await self.writer.drain()
        except (ConnectionError, OSError):
            self._lost()

    async def _send_close(self, code: int, reason: str = "") -> None:
        if not self._close_sent:
            await self._send_frame(encode(Opcode.CLOSE, close_payload(code, reason)))
            self._close_sent = True

    async def close(self, code: int = Close.NORMAL, reason: str = "") -> None:
        """Our close frame (once); then, while a `receive` is running, up to CLOSE_WAIT
        seconds for the peer's (the RFC's closing handshake: the client's own close must not
        find the connection gone); then the connection's end."""
        await self._send_close(code, reason)
        if self._receiving and not self._peer_done.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_WAIT):
                    await self._peer_done.wait()
        self._lost()

    def _lost(self) -> None:
        self.closed = True
        self._peer_done.set()
        with contextlib.suppress(Exception):
            self.writer.close()


async def upgrade(exchange: Exchange, protocols: Sequence[str]) -> WebSocket | None:
    """The RFC 6455 handshake on an HTTP exchange (see the module docstring)."""
    request = exchange.request
    if request.header("sec-websocket-version") != "13":
        await exchange.respond(
            400, "unable to upgrade: Sec-WebSocket-Version must be 13",
            (("Sec-WebSocket-Version", "13"),),
        )  # fmt: skip
        return None
    key = request.header("sec-websocket-key")
    if not valid_key(key):
        await exchange.respond(400, "unable to upgrade: a bad Sec-WebSocket-Key")
        return None
    assert key is not None
    offered = request.values("sec-websocket-protocol")
    chosen = choose(offered, protocols)
    if chosen is None:
        await exchange.respond(
            403,
            f"requested protocol(s) are not supported: {offered}; "
            f"supports {[p for p in protocols if p]}",
        )
        return None
    headers = [("Upgrade", "websocket"), ("Sec-WebSocket-Accept", accept_key(key))]
    if chosen:
        headers.append(("Sec-WebSocket-Protocol", chosen))
    await exchange.switch(tuple(headers))
    return WebSocket(exchange.reader, exchange.writer, chosen)


# --- Kubernetes' channels --------------------------------------------------------------------


@dataclass(frozen=True)
class Codec:
    base64: bool = False
    close_signal: bool = False

    def encode(self, channel: int, data: bytes) -> bytes:
        if self.base64:
            return bytes([0x30 + channel]) + base64.b64encode(data)
        return bytes([channel]) + data

    def decode(self, message: Message) -> Received | None:
        """What a message carries; None for an empty one (it names no channel)."""
        data = message.data
        if not data:
            return None
        if self.close_signal and data[0] == STREAM_CLOSE:
            if len(data) != 2:
                raise ProtocolError(Close.PROTOCOL_ERROR, "a close signal names one channel")
            return Received(data[1], b"", closing=True)
        if self.base64:
            try:
                return Received(data[0] - 0x30, base64.b64decode(data[1:], validate=True))
            except (binascii.Error, ValueError):
                raise ProtocolError(Close.INVALID_DATA, "a message is not base64") from None
        return Received(data[0], data[1:])


@dataclass(frozen=True)
class Received:
    """A message on a channel: its bytes, or (v5) the client's close signal for it."""

    channel: int
    data: bytes
    closing: bool = False


# The remote-command subprotocols over WebSocket: (codec, protocol version for the status).
REMOTECOMMAND = {
    "v5.channel.k8s.io": (Codec(close_signal=True), 5),
    "v4.channel.k8s.io": (Codec(), 4),
    "v4.base64.channel.k8s.io": (Codec(base64=True), 4),
    "channel.k8s.io": (Codec(), 1),
    "base64.channel.k8s.io": (Codec(base64=True), 1),
    "": (Codec(), 1),
}
STDIN, STDOUT, STDERR, ERROR, RESIZE = range(5)


class WsChannel:
    """One channel of a `Channels` (see the module docstring)."""

    def __init__(self, channels: Channels, number: int, readable: bool) -> None:
        self._channels = channels
        self.number = number
        self.readable = readable
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE_LIMIT)
        self._ended = False

    async def read(self) -> bytes:
        if self._ended:
            return b""
        data = await self._queue.get()
        if not data:
            self._ended = True
        return data

    async def write(self, data: bytes) -> None:
        await self._channels.send(self.number, data)

    async def close(self) -> None:
        return None

    async def _deliver(self, data: bytes) -> None:
        if self.readable and not self._ended:
            await self._queue.put(data)

    def _end(self) -> None:
        """Nothing more will come: a reader gets b"" after what is queued."""
        if self.readable:
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(b"")


class Channels:
    """The numbered channels of one WebSocket (see the module docstring)."""

    def __init__(self, ws: WebSocket, codec: Codec, readable: Sequence[int] = ()) -> None:
        self.ws = ws
        self.codec = codec
        self.lost = asyncio.Event()
        self._readable = set(readable)
        self._channels: dict[int, WsChannel] = {}

    def channel(self, number: int) -> WsChannel:
        found = self._channels.get(number)
        if found is None:
            found = self._channels[number] = WsChannel(self, number, number in self._readable)
        return found

    async def send(self, number: int, data: bytes) -> None:
        await self.ws.send(self.codec.encode(number, data), text=self.codec.base64)

    async def run(self) -> None:
        try:
            while (message := await self.ws.receive()) is not None:
                try:
                    decoded = self.codec.decode(message)
                except ProtocolError as e:
                    await self.ws.close(e.code, e.reason)
                    break
                if decoded is None:
                    continue
                channel = self._channels.get(decoded.channel)
                if channel is None:
                    continue  # a channel nobody serves: dropped
                if decoded.closing:
                    channel._end()
                elif decoded.data:
                    await channel._deliver(decoded.data)
        finally:
            self.lost.set()
            for channel in self._channels.values():
                channel._end()


def remotecommand_handler(run: remotecommand.Run) -> Handler:
    """The WebSocket handler of exec or attach: `run(payload, channels)` as over SPDY."""

    async def handle(exchange: Exchange) -> None:
        ws = await upgrade(exchange, tuple(REMOTECOMMAND))
        if ws is None:
            return
        codec, version = REMOTECOMMAND[ws.protocol]
        request = exchange.payload
        stdin = bool(getattr(request, "stdin", False))
        stdout = bool(getattr(request, "stdout", False))
        tty = bool(getattr(request, "tty", False))
        stderr = bool(getattr(request, "stderr", False)) and not tty
        readable = [STDIN] if stdin else []
        if tty:
            readable.append(RESIZE)
        mux = Channels(ws, codec, readable)
        channels = remotecommand.Channels(
            version,
            mux.channel(ERROR),
            mux.channel(STDIN) if stdin else None,
            mux.channel(STDOUT) if stdout else None,
            mux.channel(STDERR) if stderr else None,
            mux.channel(RESIZE) if tty else None,
            mux.lost,
        )
        first = STDOUT if stdout else STDERR if stderr else ERROR
        await mux.send(first, b"")  # the client's sign that the streams are up
        reading = asyncio.create_task(mux.run())
        try:
            await remotecommand.serve(channels, run(request, channels))
            await ws.close()
        finally:
            reading.cancel()
            with contextlib.suppress(BaseException):
                await reading

    return handle
