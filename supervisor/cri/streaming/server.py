"""The CRI streaming server: HTTP/1.1 on `[cri] stream_server_address`:`stream_server_port`
(127.0.0.1 and a free port by default; TLS when `stream_tls_cert` and `stream_tls_key` are set),
answering only the URLs it handed out.

- `StreamServer.url(kind, payload)` keeps `payload` (the CRI request) under a single-use token
  (`tokens.Tokens`) and answers `<base>/<kind>/<token>`: kinds are "exec", "attach" and
  "portforward". The server starts at the first `await server.start()` (idempotent).
- Routing, the seam for the protocol modules: `server.route(kind, upgrade, handler)` where
  `upgrade` is "spdy" (the request carries `Upgrade: SPDY/3.1`) or "websocket" (`Upgrade:
  websocket`) and `handler` is `async def handler(exchange: Exchange) -> None`. A request
  `GET|POST /<kind>/<token>` whose (kind, upgrade) has a handler and whose token is good
  (consumed right then) is given to it; it owns the connection until it returns (the server
  closes the connection afterwards). Otherwise: 404 for an unknown path or token (expired,
  used, never issued) or a kind nothing is routed for, 400 "unable to upgrade: ..." for a
  request with no upgrade or one nothing is routed for, 405 for other methods.
- `Exchange`: `request` (`Request`: method, path, query, headers with lowercase names;
  `header(name)`, `values(name)` = every value of a repeated or comma-separated header),
  `payload` (what `url` kept), `reader`/`writer` (asyncio streams of the connection: bytes
  the client sent after the request head are still in `reader`; they belong to the upgraded
  protocol), `respond(status, text, headers)` (a plain response) and `switch(headers)` (writes
  `101 Switching Protocols` with those headers; `Connection: Upgrade` is added).
- `spdy.upgrade(exchange, protocols)` does the SPDY/3.1 handshake on an Exchange.
- Connection tasks are tracked: `stop()` cancels them and closes the listener; `connections`
  counts the live ones (tests check that none is left).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from supervisor.cri.streaming.tokens import Tokens

log = structlog.get_logger("ctrd.cri.streaming")

KINDS = ("exec", "attach", "portforward")
HEAD_LIMIT = 64 * 1024  # bytes of a request line and headers
HEAD_TIMEOUT = 30.0  # seconds a client has to send them

_REASONS = {
    101: "Switching Protocols",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
}


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: tuple[tuple[str, str], ...]  # (lowercase name, value), in order

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for n, v in self.headers if n == wanted), None)

    def values(self, name: str) -> list[str]:
        """Every value of `name`: repeated headers and comma-separated lists, in order."""
        wanted = name.lower()
        return [
            part.strip()
            for n, v in self.headers
            if n == wanted
            for part in v.split(",")
            if part.strip()
        ]

    @property
    def upgrade(self) -> str:
        """ "spdy", "websocket", or "" (no upgrade or another one)."""
        connection = {v.lower() for v in self.values("connection")}
        offered = {v.lower() for v in self.values("upgrade")}
        if "upgrade" not in connection:
            return ""
        if "spdy/3.1" in offered:
            return "spdy"
        if "websocket" in offered:
            return "websocket"
        return ""


class BadRequest(Exception):
    """A request head that is not HTTP/1.1."""


def parse_head(head: bytes) -> Request:
    """The request line and headers (the bytes up to and including the blank line)."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes anything
        raise BadRequest("request head is not text") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(f"not an HTTP/1.1 request line: {lines[0][:100]!r}")
    method, target, _version = parts
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise BadRequest(f"malformed header line: {line[:100]!r}")
        headers.append((name.lower(), value.strip()))
    url = urllib.parse.urlsplit(target)
    return Request(method, url.path, urllib.parse.parse_qs(url.query), tuple(headers))


def response(status: int, text: str = "", headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    """An HTTP/1.1 response's bytes: status line, headers, a text/plain body if any."""
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}"]
    lines += [f"{n}: {v}" for n, v in headers]
    body = text.encode()
    if status != 101:
        lines += ["Content-Type: text/plain; charset=utf-8", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass(frozen=True)
class Exchange:
    request: Request
    payload: Any
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def respond(
        self, status: int, text: str = "", headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        self.writer.write(response(status, text, headers))
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.drain()

    async def switch(self, headers: tuple[tuple[str, str], ...]) -> None:
        await self.respond(101, "", (("Connection", "Upgrade"), *headers))


Handler = Callable[[Exchange], Awaitable[None]]


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


class StreamServer:
    def __init__(
        self,
        address: str = "127.0.0.1",
        port: int = 0,
        tokens: Tokens | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._address = address
        self._port = port
        self._tls = tls
        self.tokens = tokens or Tokens()
        self._routes: dict[tuple[str, str], Handler] = {}
        self._server: asyncio.Server | None = None
        self._starting = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self.base_url = ""

    def route(self, kind: str, upgrade: str, handler: Handler) -> None:
        if kind not in KINDS or upgrade not in ("spdy", "websocket"):
            raise ValueError(f"no route for {kind!r} over {upgrade!r}")
        self._routes[(kind, upgrade)] = handler

    @property
    def connections(self) -> int:
        return len(self._tasks)

    async def start(self) -> None:
        async with self._starting:
            if self._server is not None:
                return
            self._server = await asyncio.start_server(
                self._connection, self._address, self._port, ssl=self._tls, limit=HEAD_LIMIT
            )
            host, port = self._server.sockets[0].getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            self.base_url = f"{'https' if self._tls else 'http'}://{shown}:{port}"
            log.info("cri_stream_server", url=self.base_url)

    async def url(self, kind: str, payload: Any) -> str:
        """A URL serving `payload` once (starting the server if need be)."""
        await self.start()
        return f"{self.base_url}/{kind}/{self.tokens.issue(kind, payload)}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("cri_stream_failed")
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(HEAD_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            request = parse_head(head)
        except (asyncio.LimitOverrunError, BadRequest, TimeoutError) as e:
            writer.write(response(400, f"bad request: {e}"))
            return
        exchange = Exchange(request, None, reader, writer)
        if request.method not in ("GET", "POST"):
            await exchange.respond(405, f"method {request.method} is not allowed")
            return
        parts = request.path.strip("/").split("/")
        if len(parts) != 2 or parts[0] not in KINDS:
            await exchange.respond(404, "404 page not found")
            return
        kind, token = parts
        served = sorted(u for k, u in self._routes if k == kind)
        if not served:
            await exchange.respond(404, "404 page not found")
            return
        handler = self._routes.get((kind, request.upgrade))
        if handler is None:
            wanted = " or ".join(served)
            await exchange.respond(400, f"unable to upgrade: {kind} is served over {wanted}")
            return
        payload = self.tokens.take(kind, token)
        if payload is None:
            await exchange.respond(404, "404 page not found")
            return
        log.debug("cri_stream", kind=kind, upgrade=request.upgrade)
        await handler(Exchange(request, payload, reader, writer))
