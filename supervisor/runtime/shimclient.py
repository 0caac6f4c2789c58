"""The daemon's end of one connection to a shim (protocol: `shim.protocol`).

`ShimClient.call` sends a request and waits for its response; calls may overlap, responses are
matched by id in whatever order they come. Events the shim sends arrive on `events()`, in the
order sent. One reader task, owned by the client and cancelled by `close`, reads the socket.
When the connection ends (the shim died, or the peer broke the protocol) every call in flight
fails with Unavailable and `events()` ends: the caller reconnects and asks for a replay from
the last sequence number it recorded, so nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from typing import Any

import structlog

from shim import protocol
from supervisor import errors, tracing

log = structlog.get_logger("ctrd.shim")

READ_SIZE = 1 << 16

_ERRORS: dict[str, type[errors.CtrdError]] = {
    protocol.NOT_FOUND: errors.NotFound,
    protocol.ALREADY_EXISTS: errors.AlreadyExists,
    protocol.INVALID_ARGUMENT: errors.InvalidArgument,
    protocol.FAILED_PRECONDITION: errors.FailedPrecondition,
    protocol.UNAVAILABLE: errors.Unavailable,
    protocol.UNIMPLEMENTED: errors.Unimplemented,
    protocol.INTERNAL: errors.Internal,
    protocol.UNKNOWN: errors.Unknown,
}


class ShimClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str):
        self._reader = reader
        self._writer = writer
        self.name = name
        self._ids = itertools.count(1)
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._events: asyncio.Queue[protocol.Event | None] = asyncio.Queue()
        self._closed: str | None = None  # why the connection ended
        self._task = asyncio.create_task(self._read(), name=f"shim-reader {name}")

    @classmethod
    async def connect(cls, path: str, name: str = "") -> ShimClient:
        try:
            reader, writer = await asyncio.open_unix_connection(path)
        except OSError as e:
            raise errors.Unavailable(f"shim {name or path}: cannot connect: {e}") from None
        return cls(reader, writer, name or path)

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """The result of `method`; the shim's error as its typed error; Unavailable if gone."""
        if tracing.on():  # a span around the call, whose context the shim is handed
            with tracing.span(f"shim {method}", **{"ctrd.shim": self.name}):
                result = await self._call(method, tracing.inject(params or {}))
                tracing.record_shim_spans(result, **{"ctrd.shim": self.name})
                return result
        return await self._call(method, params)

    async def _call(self, method: str, params: dict[str, Any] | None) -> Any:
        if self._closed is not None:
            raise errors.Unavailable(f"shim {self.name}: {self._closed}")
        ident = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls[ident] = future
        try:
            self._writer.write(
                protocol.encode(protocol.Request(ident, method, params or {}).to_wire())
            )
            await self._writer.drain()
            return await future
        except (ConnectionError, OSError) as e:
            raise errors.Unavailable(f"shim {self.name}: {method}: {e}") from None
        finally:
            self._calls.pop(ident, None)
            # The connection may have ended (failing this call's future) while the request was
            # still being written, or the caller gave up: either way nobody awaits it now.
            if not future.done():
                future.cancel()
            elif not future.cancelled():
                future.exception()

    @property
    def closed_reason(self) -> str | None:
        """Why the connection ended; None while it is open."""
        return self._closed

    async def events(self) -> AsyncIterator[protocol.Event]:
        """Events as they arrive, until the connection ends."""
        while (event := await self._events.get()) is not None:
            yield event

    async def ended(self) -> None:
        """Wait until the shim closes the connection (as it does when exiting)."""
        await asyncio.wait({self._task})  # never raises what ended the reader

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

    async def _read(self) -> None:
        decoder = protocol.Decoder()
        why = "connection closed"
        try:
            while data := await self._reader.read(READ_SIZE):
                for raw in decoder.feed(data):
                    self._dispatch(protocol.parse(raw))
            if decoder.pending:
                why = "connection closed in the middle of a message"
        except protocol.ProtocolError as e:
            why = f"protocol error: {e}"
            log.warning("shim_protocol_error", id=self.name, error=str(e))
        except (ConnectionError, OSError) as e:
            why = f"connection lost: {e}"
        except asyncio.CancelledError:
            why = "connection closed by the daemon"
            raise
        finally:
            self._end(why)

    def _dispatch(self, message: protocol.Message) -> None:
        if isinstance(message, protocol.Event):
            self._events.put_nowait(message)
        elif isinstance(message, protocol.Response | protocol.ErrorResponse):
            future = self._calls.get(message.id)
            if future is None or future.done():
                log.warning("shim_unexpected_response", id=self.name, request=message.id)
            elif isinstance(message, protocol.Response):
                future.set_result(message.result)
            else:
                future.set_exception(_ERRORS[message.code](message.message))
        else:
            raise protocol.ProtocolError(f"a shim sent a request ({message.method})")

    def _end(self, why: str) -> None:
        self._closed = why
        for future in self._calls.values():
            if not future.done():
                future.set_exception(errors.Unavailable(f"shim {self.name}: {why}"))
        self._events.put_nowait(None)
