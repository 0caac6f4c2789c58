"""A SPDY/3.1 client for tests, as client-go's port-forwarder and remote-command executor use
SPDY (streams opened by SYN_STREAM, half-closed with an empty DATA+FIN, reset with RST_STREAM),
built on the daemon's own framing (`supervisor.cri.streaming.spdy`): it records, per stream,
the reply, the bytes, the FIN and the RST the server sent. `reader` and `writer` may be an
asyncio stream pair or anything with their `read`, `write`, `drain`, `close` methods (a
WebSocket tunnel)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from supervisor.cri.streaming import spdy


@dataclass
class StreamState:
    replied: bool = False
    data: bytearray = field(default_factory=bytearray)
    fin: bool = False
    rst: int | None = None


class SpdyClient:
    """The client side of a port-forward connection, as client-go's (just what tests need)."""

    def __init__(self, reader: Any, writer: Any) -> None:
        self.reader, self.writer = reader, writer
        self.codec = spdy.HeaderCodec()
        self.parser = spdy.FrameParser(self.codec)
        self.streams: dict[int, StreamState] = {}
        self.next_id = 1
        self.changed = asyncio.Condition()
        self.ended = False
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while data := await self.reader.read(1 << 16):
            for frame in self.parser.feed(data):
                state = self.streams.get(getattr(frame, "stream_id", 0))
                match frame:
                    case spdy.SynReply() if state:
                        state.replied = True
                    case spdy.DataFrame(_, payload, flags) if state:
                        state.data += payload
                        state.fin = state.fin or bool(flags & spdy.FLAG_FIN)
                    case spdy.RstStream(_, status) if state:
                        state.rst = status
                async with self.changed:
                    self.changed.notify_all()
        self.ended = True
        async with self.changed:
            self.changed.notify_all()

    async def send(self, frame: spdy.Frame) -> None:
        self.writer.write(spdy.encode(frame, self.codec))
        await self.writer.drain()

    async def open(self, kind: str, port: int | str, request: int | None) -> int:
        stream_id = self.next_id
        self.next_id += 2
        self.streams[stream_id] = StreamState()
        headers: list[tuple[str, str]] = [("streamtype", kind), ("port", str(port))]
        if request is not None:
            headers.append(("requestid", str(request)))
        await self.send(spdy.SynStream(stream_id, tuple(headers)))
        return stream_id

    async def until(self, condition: Callable[[], bool], within: float = 10) -> None:
        async with asyncio.timeout(within), self.changed:
            await self.changed.wait_for(lambda: condition() or self.ended)
        assert condition(), "the connection ended first"

    async def forward(self, port: int, request: int | None) -> tuple[int, int]:
        """A pair as client-go makes it: the error stream (half-closed at once), then data."""
        error = await self.open("error", port, request)
        await self.until(lambda: self.streams[error].replied or self.streams[error].rst)
        await self.send(spdy.DataFrame(error, b"", spdy.FLAG_FIN))
        data = await self.open("data", port, request)
        await self.until(lambda: self.streams[data].replied or self.streams[data].rst)
        return error, data

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()
        self.task.cancel()
        with contextlib.suppress(BaseException):
            await self.task
