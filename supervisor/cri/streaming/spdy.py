"""SPDY/3.1 as client-go (moby/spdystream) speaks it: the frames, the header blocks, a session.

The pure core (no I/O): the frames as frozen dataclasses (`DataFrame`, `SynStream`,
`SynReply`, `RstStream`, `Settings`, `Ping`, `GoAway`, `Headers`, `WindowUpdate`),
`HeaderCodec` (header blocks compressed with zlib and the SPDY/3 dictionary, ONE compressor
and ONE decompressor per direction for the whole connection, each block flushed with
Z_SYNC_FLUSH), `encode(frame, codec)` -> bytes and `FrameParser` (feed bytes, get the complete
frames; raises `ProtocolError` and only that on bad input). Header names are lowercase on
the wire; `header(headers, name)` finds one case-insensitively (Go canonicalises names).

The session (`Session`, asyncio, the server side of an upgraded connection):
- `Session(reader, writer, accept=...)` then `await session.run()` (or run it in a task):
  it reads frames until the connection ends. For each SYN_STREAM it makes a `Stream` and
  calls `accept(stream)` at once (synchronously, it must not block): None accepts (the
  session answers SYN_REPLY right away: the client waits for it before it creates its next
  stream), an `RST_*` status refuses (RST_STREAM). Accepted streams are handed out in order
  by `await session.next_stream()` (None once the connection has ended).
- PINGs from the client (odd ids) are echoed; echoes of ours are ignored. SETTINGS,
  WINDOW_UPDATE and HEADERS are accepted and ignored: flow-control windows are NOT enforced
  (spdystream never sends WINDOW_UPDATE; enforcing would deadlock after 64 KiB).
- A client's GOAWAY: no new streams; the open ones go on until the connection ends.
- `Stream.read()` -> the next bytes, b"" at end (the client's FIN, its RST_STREAM, or the
  connection's end); `Stream.write(data)` (DATA frames of at most MAX_CHUNK; a no-op once the
  stream is reset or the connection gone: check `stream.broken`), `Stream.close()` (half close:
  an empty DATA with FIN, once), `Stream.reset(status)` (RST_STREAM, CANCEL by default: the
  end of that stream only). `Stream.headers` are its SYN_STREAM's; `stream.header("port")`.
- A stream holds at most BUFFER_LIMIT unread bytes: past it the session stops reading the
  connection until the stream's reader catches up. So a handler must read every stream it
  accepted (or reset it).
- `await upgrade(exchange, protocols, accept)` -> (Session, the protocol) or None: the HTTP
  side (`server.Exchange`): picks the client's first `X-Stream-Protocol-Version` among
  `protocols`, answers 400 when the client names none, 403 with the
  `X-Accepted-Stream-Protocol-Versions` when none fits, else 101 and the Session (not run yet).
- `await session.close(status)` sends GOAWAY (the last stream id it saw) and closes the
  connection; every stream then reads b"" and its writes are dropped.

All frames go out through one writer in the order they were made (encoding and writing
happen with no await between them, so header blocks reach the peer in compression order).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

if TYPE_CHECKING:
    from supervisor.cri.streaming.server import Exchange

log = structlog.get_logger("ctrd.cri.spdy")

VERSION = 3
MAX_LENGTH = 0xFFFFFF  # a frame's 24-bit length
MAX_CHUNK = 32 * 1024  # bytes per DATA frame written
BUFFER_LIMIT = 4 * 1024 * 1024  # unread bytes one stream holds before the session pauses

# Frame flags.
FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02

# Control frame types.
SYN_STREAM = 1
SYN_REPLY = 2
RST_STREAM = 3
SETTINGS = 4
PING = 6
GOAWAY = 7
HEADERS = 8
WINDOW_UPDATE = 9

# RST_STREAM statuses.
RST_PROTOCOL_ERROR = 1
RST_INVALID_STREAM = 2
RST_REFUSED_STREAM = 3
RST_UNSUPPORTED_VERSION = 4
RST_CANCEL = 5
RST_INTERNAL_ERROR = 6
RST_FLOW_CONTROL_ERROR = 7
RST_STREAM_IN_USE = 8
RST_STREAM_ALREADY_CLOSED = 9

# GOAWAY statuses.
GOAWAY_OK = 0
GOAWAY_PROTOCOL_ERROR = 1
GOAWAY_INTERNAL_ERROR = 2


def _dictionary() -> bytes:
    """The SPDY/3 header compression dictionary (draft-mbelshe-httpbis-spdy-00 §2.6.10.1):
    65 length-prefixed words, then a run of status codes, reasons, dates and media types."""
    words = (  # noqa: SIM905 (the words read as the draft prints them)
        "options head post put delete trace accept accept-charset accept-encoding "
        "accept-language accept-ranges age allow authorization cache-control connection "
        "content-base content-encoding content-language content-length content-location "
        "content-md5 content-range content-type date etag expect expires from host if-match "
        "if-modified-since if-none-match if-range if-unmodified-since last-modified location "
        "max-forwards pragma proxy-authenticate proxy-authorization range referer retry-after "
        "server te trailer transfer-encoding upgrade user-agent vary via warning "
        "www-authenticate method get status 200_OK version HTTP/1.1 url public set-cookie "
        "keep-alive origin"
    ).split()
    head = b"".join(struct.pack(">I", len(w)) + w.replace("_", " ").encode() for w in words)
    tail = (
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417"
        "502504505203 Non-Authoritative Information204 No Content301 Moved Permanently"
        "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error"
        "501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct "
        "Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,"
        "image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
        "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8"
        "charset=iso-8859-1,utf-,*,enq=0."
    )
    return head + tail.encode()


DICTIONARY = _dictionary()
DICTIONARY_ID = 0xE3C6A7C2  # its Adler-32, which zlib streams name


class ProtocolError(Exception):
    """Bytes that are no SPDY/3 frame, or a header block that does not decode."""


Headers = tuple[tuple[str, str], ...]  # (lowercase name, value) pairs, in order


def header(headers: Headers, name: str) -> str | None:
    """The first value of `name` (case-insensitive), None if absent."""
    wanted = name.lower()
    return next((v for n, v in headers if n.lower() == wanted), None)


@dataclass(frozen=True)
class DataFrame:
    stream_id: int
    data: bytes = b""
    flags: int = 0


@dataclass(frozen=True)
class SynStream:
    stream_id: int
    headers: Headers = ()
    associated_id: int = 0
    priority: int = 0  # 0..7
    slot: int = 0
    flags: int = 0


@dataclass(frozen=True)
class SynReply:
    stream_id: int
    headers: Headers = ()
    flags: int = 0


@dataclass(frozen=True)
class RstStream:
    stream_id: int
    status: int


@dataclass(frozen=True)
class Settings:
    entries: tuple[tuple[int, int, int], ...] = ()  # (flags, id, value)
    flags: int = 0


@dataclass(frozen=True)
class Ping:
    ping_id: int


@dataclass(frozen=True)
class GoAway:
    last_good_id: int
    status: int = GOAWAY_OK


@dataclass(frozen=True)
class HeadersFrame:
    stream_id: int
    headers: Headers = ()
    flags: int = 0


@dataclass(frozen=True)
class WindowUpdate:
    stream_id: int
    delta: int


Frame = (
    DataFrame
    | SynStream
    | SynReply
    | RstStream
    | Settings
    | Ping
    | GoAway
    | HeadersFrame
    | WindowUpdate
)


class HeaderCodec:
    """The header blocks of one connection: a compressor for what we send, a decompressor for
    what we receive, each living as long as the connection (SPDY's zlib contexts are shared by
    all of a direction's blocks)."""

    def __init__(self) -> None:
        self._compress = zlib.compressobj(
            9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, DICTIONARY
        )
        self._decompress = zlib.decompressobj(15, DICTIONARY)

    def encode(self, headers: Headers) -> bytes:
        return self._compress.compress(pack_headers(headers)) + self._compress.flush(
            zlib.Z_SYNC_FLUSH
        )

    def decode(self, block: bytes) -> Headers:
        if not block:
            return ()
        try:
            raw = self._decompress.decompress(block)
        except zlib.error as e:
            raise ProtocolError(f"header block does not inflate: {e}") from None
        return unpack_headers(raw)


def pack_headers(headers: Headers) -> bytes:
    """The uncompressed block: a 32-bit pair count, then each name and value with a 32-bit
    length; a name given twice has its values joined by NUL (SPDY forbids repeated names)."""
    merged: dict[str, list[str]] = {}
    for name, value in headers:
        merged.setdefault(name.lower(), []).append(value)
    out = [struct.pack(">I", len(merged))]
    for name, values in merged.items():
        n = name.encode()
        v = "\0".join(values).encode()
        out.append(struct.pack(">I", len(n)) + n + struct.pack(">I", len(v)) + v)
    return b"".join(out)


def unpack_headers(raw: bytes) -> Headers:
    """Pairs of an uncompressed block, a NUL-joined value given as one pair per value."""
    view = memoryview(raw)
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(view):
            raise ProtocolError("header block is truncated")
        chunk = bytes(view[pos : pos + n])
        pos += n
        return chunk

    def length() -> int:
        value: int = struct.unpack(">I", take(4))[0]
        return value

    pairs: list[tuple[str, str]] = []
    for _ in range(length()):
        try:
            name = take(length()).decode().lower()
            value = take(length()).decode()
        except UnicodeDecodeError:
            raise ProtocolError("header block is not UTF-8") from None
        pairs.extend((name, v) for v in value.split("\0"))
    return tuple(pairs)


def _control(kind: int, flags: int, payload: bytes) -> bytes:
    if len(payload) > MAX_LENGTH:
        raise ValueError("control frame payload too large")
    return struct.pack(">HHI", 0x8000 | VERSION, kind, (flags << 24) | len(payload)) + payload


def encode(frame: Frame, codec: HeaderCodec) -> bytes:
    """The frame's bytes. Header blocks go through `codec`, so frames must be sent in the
    order they were encoded."""
    match frame:
        case DataFrame(stream_id, data, flags):
            if len(data) > MAX_LENGTH:
                raise ValueError("data frame payload too large")
            return struct.pack(">II", stream_id & 0x7FFFFFFF, (flags << 24) | len(data)) + data
        case SynStream(stream_id, headers, associated_id, priority, slot, flags):
            fixed = struct.pack(
                ">IIBB", stream_id & 0x7FFFFFFF, associated_id & 0x7FFFFFFF, priority << 5, slot
            )
            return _control(SYN_STREAM, flags, fixed + codec.encode(headers))
        case SynReply(stream_id, headers, flags):
            block = codec.encode(headers)
            return _control(SYN_REPLY, flags, struct.pack(">I", stream_id & 0x7FFFFFFF) + block)
        case RstStream(stream_id, status):
            return _control(RST_STREAM, 0, struct.pack(">II", stream_id & 0x7FFFFFFF, status))
        case Settings(entries, flags):
            body = b"".join(struct.pack(">II", (f << 24) | i, v) for f, i, v in entries)
            return _control(SETTINGS, flags, struct.pack(">I", len(entries)) + body)
        case Ping(ping_id):
            return _control(PING, 0, struct.pack(">I", ping_id))
        case GoAway(last_good_id, status):
            return _control(GOAWAY, 0, struct.pack(">II", last_good_id & 0x7FFFFFFF, status))
        case HeadersFrame(stream_id, headers, flags):
            block = codec.encode(headers)
            return _control(HEADERS, flags, struct.pack(">I", stream_id & 0x7FFFFFFF) + block)
        case WindowUpdate(stream_id, delta):
            payload = struct.pack(">II", stream_id & 0x7FFFFFFF, delta & 0x7FFFFFFF)
            return _control(WINDOW_UPDATE, 0, payload)
    raise TypeError(f"not a frame: {frame!r}")


class FrameParser:
    """Bytes in, complete frames out. Control frames of unknown types are skipped (SPDY says
    ignore them); a version other than 3 or a malformed payload raises ProtocolError."""

    def __init__(self, codec: HeaderCodec) -> None:
        self._codec = codec
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[Frame]:
        self._buffer += data
        while len(self._buffer) >= 8:
            first, second = struct.unpack_from(">II", self._buffer)
            length = second & 0xFFFFFF
            if len(self._buffer) < 8 + length:
                return
            payload = bytes(self._buffer[8 : 8 + length])
            del self._buffer[: 8 + length]
            flags = second >> 24
            if first & 0x80000000:
                frame = self._control(first, flags, payload)
                if frame is not None:
                    yield frame
            else:
                yield DataFrame(first & 0x7FFFFFFF, payload, flags)

    def _control(self, first: int, flags: int, payload: bytes) -> Frame | None:
        version, kind = (first >> 16) & 0x7FFF, first & 0xFFFF
        if version != VERSION:
            raise ProtocolError(f"SPDY version {version} is not 3")
        try:
            return self._decode(kind, flags, payload)
        except struct.error:
            raise ProtocolError(f"control frame type {kind} is too short") from None

    def _decode(self, kind: int, flags: int, payload: bytes) -> Frame | None:
        def ids(n: int) -> tuple[int, ...]:
            return tuple(v & 0x7FFFFFFF for v in struct.unpack_from(">" + "I" * n, payload))

        if kind == SYN_STREAM:
            stream_id, associated = ids(2)
            priority, slot = payload[8] >> 5, payload[9]
            headers = self._codec.decode(payload[10:])
            return SynStream(stream_id, headers, associated, priority, slot, flags)
        if kind == SYN_REPLY:
            return SynReply(ids(1)[0], self._codec.decode(payload[4:]), flags)
        if kind == HEADERS:
            return HeadersFrame(ids(1)[0], self._codec.decode(payload[4:]), flags)
        if kind == RST_STREAM:
            stream_id, status = struct.unpack_from(">II", payload)
            return RstStream(stream_id & 0x7FFFFFFF, status)
        if kind == SETTINGS:
            (count,) = struct.unpack_from(">I", payload)
            entries = []
            for i in range(count):
                head, value = struct.unpack_from(">II", payload, 4 + 8 * i)
                entries.append((head >> 24, head & 0xFFFFFF, value))
            return Settings(tuple(entries), flags)
        if kind == PING:
            return Ping(struct.unpack_from(">I", payload)[0])
        if kind == GOAWAY:
            last, status = struct.unpack_from(">II", payload)
            return GoAway(last & 0x7FFFFFFF, status)
        if kind == WINDOW_UPDATE:
            stream_id, delta = ids(2)
            return WindowUpdate(stream_id, delta)
        return None


class Stream:
    """One SPDY stream the client opened (see the module docstring for its methods)."""

    def __init__(self, session: Session, stream_id: int, headers: Headers) -> None:
        self.session = session
        self.id = stream_id
        self.headers = headers
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._ended = False  # nothing more will arrive: FIN, RST or connection end
        self._reset = False  # reset by either side, or the connection gone
        self._closed = False  # our FIN sent
        self._readable = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    def header(self, name: str) -> str | None:
        return header(self.headers, name)

    @property
    def broken(self) -> bool:
        """Reset (by either side) or its connection gone: writes go nowhere."""
        return self._reset or self.session.closed

    @property
    def remote_closed(self) -> bool:
        return self._ended

    async def read(self) -> bytes:
        """The next bytes the client sent, b"" at end."""
        while not self._chunks:
            if self._ended:
                return b""
            self._readable.clear()
            await self._readable.wait()
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._buffered < BUFFER_LIMIT:
            self._room.set()
        return chunk

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        for start in range(0, len(view), MAX_CHUNK):
            if self.broken or self._closed:
                return
            await self.session.send(DataFrame(self.id, bytes(view[start : start + MAX_CHUNK])))

    async def close(self) -> None:
        """Half close: our side sends no more (an empty DATA frame with FIN)."""
        if self._closed or self.broken:
            return
        self._closed = True
        await self.session.send(DataFrame(self.id, b"", FLAG_FIN))
        self.session._forget_if_done(self)

    async def reset(self, status: int = RST_CANCEL) -> None:
        """The end of this stream, both ways (RST_STREAM)."""
        if self.broken:
            return
        self._reset = True
        self._end()
        self.session._streams.pop(self.id, None)
        await self.session.send(RstStream(self.id, status))

    def _feed(self, data: bytes) -> None:
        if self._ended or not data:
            return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered >= BUFFER_LIMIT:
            self._room.clear()
        self._readable.set()

    def _end(self) -> None:
        self._ended = True
        self._room.set()
        self._readable.set()

    def _peer_reset(self) -> None:
        self._reset = True
        self._end()


Accept = Callable[[Stream], "int | None"]


class Session:
    """The server side of one SPDY/3.1 connection (see the module docstring)."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        accept: Accept | None = None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._accept: Accept = accept or (lambda _stream: None)
        self._codec = HeaderCodec()
        self._parser = FrameParser(self._codec)
        self._streams: dict[int, Stream] = {}
        self._incoming: asyncio.Queue[Stream | None] = asyncio.Queue()
        self._last_id = 0
        self._going_away = False
        self.closed = False

    @property
    def streams(self) -> dict[int, Stream]:
        """The streams still known, by id (a stream leaves once both sides ended it)."""
        return self._streams

    async def next_stream(self) -> Stream | None:
        """The next accepted stream, None once the connection has ended."""
        if self.closed and self._incoming.empty():
            return None
        return await self._incoming.get()

    async def send(self, frame: Frame) -> None:
        if self.closed:
            return
        self._writer.write(encode(frame, self._codec))
        try:
            await self._writer.drain()
        except (ConnectionError, OSError):
            self._lost()

    async def run(self) -> None:
        """Read and dispatch frames until the connection ends (or `close`)."""
        try:
            while not self.closed:
                data = await self._reader.read(1 << 16)
                if not data:
                    break
                for frame in self._parser.feed(data):
                    await self._dispatch(frame)
        except ProtocolError as e:
            log.warning("spdy_protocol_error", error=str(e))
            await self.send(GoAway(self._last_id, GOAWAY_PROTOCOL_ERROR))
        except (ConnectionError, OSError):
            pass
        finally:
            self._lost()

    async def close(self, status: int = GOAWAY_OK) -> None:
        """GOAWAY, then the connection's end."""
        if self.closed:
            return
        await self.send(GoAway(self._last_id, status))
        self._lost()

    def _lost(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            self._writer.close()
        for stream in list(self._streams.values()):
            stream._peer_reset()
        self._streams.clear()
        self._incoming.put_nowait(None)

    async def _dispatch(self, frame: Frame) -> None:
        match frame:
            case DataFrame(stream_id, data, flags):
                stream = self._streams.get(stream_id)
                if stream is None:
                    return  # a stream we reset or never had: its data is dropped
                stream._feed(data)
                if flags & FLAG_FIN:
                    stream._end()
                    self._forget_if_done(stream)
                elif not stream._room.is_set():
                    await stream._room.wait()
            case SynStream():
                await self._open(frame)
            case RstStream(stream_id, _status):
                stream = self._streams.pop(stream_id, None)
                if stream is not None:
                    stream._peer_reset()
            case Ping(ping_id):
                if ping_id % 2 == 1:
                    await self.send(frame)
            case GoAway():
                self._going_away = True
            case _:
                pass  # SETTINGS, WINDOW_UPDATE, HEADERS, SYN_REPLY: nothing to do

    async def _open(self, frame: SynStream) -> None:
        if self._going_away:
            await self.send(RstStream(frame.stream_id, RST_REFUSED_STREAM))
            return
        if frame.stream_id in self._streams or frame.stream_id <= self._last_id:
            await self.send(RstStream(frame.stream_id, RST_PROTOCOL_ERROR))
            return
        self._last_id = frame.stream_id
        stream = Stream(self, frame.stream_id, frame.headers)
        refused = self._accept(stream)
        if refused is not None:
            await self.send(RstStream(frame.stream_id, refused))
            return
        self._streams[stream.id] = stream
        await self.send(SynReply(stream.id))
        if frame.flags & FLAG_FIN:
            stream._end()
        self._incoming.put_nowait(stream)

    def _forget_if_done(self, stream: Stream) -> None:
        if stream._ended and stream._closed:
            self._streams.pop(stream.id, None)


PROTOCOL_HEADER = "X-Stream-Protocol-Version"
ACCEPTED_HEADER = "X-Accepted-Stream-Protocol-Versions"


async def upgrade(
    exchange: Exchange, protocols: tuple[str, ...], accept: Accept | None = None
) -> tuple[Session, str] | None:
    """The SPDY/3.1 handshake on an HTTP exchange (see the module docstring)."""
    offered = exchange.request.values(PROTOCOL_HEADER)
    if not offered:
        await exchange.respond(400, f"unable to upgrade: {PROTOCOL_HEADER} is required")
        return None
    chosen = next((p for p in offered if p in protocols), None)
    if chosen is None:
        await exchange.respond(
            403,
            f"unable to upgrade: unable to negotiate protocol: client supports {offered}, "
            f"server accepts {list(protocols)}",
            tuple((ACCEPTED_HEADER, p) for p in protocols),
        )
        return None
    await exchange.switch((("Upgrade", "SPDY/3.1"), (PROTOCOL_HEADER, chosen)))
    return Session(exchange.reader, exchange.writer, accept), chosen
