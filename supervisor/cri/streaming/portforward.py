"""Port-forward (`portforward.k8s.io`): the client's connections carried to ports inside a pod.

Over SPDY (`serve_spdy`), as client-go's port-forwarder drives it: for each connection it
accepts locally, the client opens two streams carrying the same `requestID` and `port`
headers, `streamType: error` first (which it half-closes at once and reads to its end), then
`streamType: data`. Old clients without `requestID` are paired by stream id (the error
stream's id; the data stream's id less 2). A stream with a bad port or type is refused
(RST_STREAM) before it is accepted. When both streams of a request are there, `dial` makes a
connection to the port on the pod's loopback, inside its network namespace (no helper
program), and bytes are copied both ways:

- the client's FIN on the data stream shuts the pod connection down for writing; the pod's
  end of data FINs the data stream; each direction ends on its own, so half-closed
  conversations work;
- once the pod has sent its last byte, the error stream is FINed too (clients wait for the
  error stream's end before they let go of the connection); the pair is done when the client
  has ended the data stream as well (FIN or RST);
- a reset from the pod (ECONNRESET, EPIPE) RSTs that pair's two streams, and only them; a
  reset of the data stream by the client resets the pod connection (SO_LINGER 0). Neither
  writes to the error stream: client-go tears down the whole session on any error text;
- what is written on the error stream is a real failure, in plain words: a port nothing
  listens on, a pod whose network namespace is gone, a pair not complete within
  `PAIR_TIMEOUT` (kubelet's stream creation timeout), a second stream of a kind for a request.

Many pairs run at once, each in a task of its own; the connection's end cancels them all and
closes every pod connection. The WebSocket forms are in `wsportforward`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import structlog

from supervisor.cri.streaming import spdy
from supervisor.cri.streaming.dial import DialError, Target, abort, dial

if TYPE_CHECKING:
    from supervisor.cri.streaming.server import Exchange

log = structlog.get_logger("ctrd.cri.portforward")

PROTOCOL = "portforward.k8s.io"
PAIR_TIMEOUT = 30.0  # seconds for a request's second stream to come (kubelet's)
CHUNK = 256 * 1024  # bytes read from the pod at once
CLOSE_WAIT = 1.0  # seconds a frame sent while ending may wait for room

STREAM_TYPE = "streamtype"
PORT = "port"
REQUEST_ID = "requestid"
ERROR, DATA = "error", "data"

Dialer = Callable[[Target], Awaitable[socket.socket]]


class Pod(Protocol):
    """Where a port-forward goes (the URL's payload, `part.PodTarget`): the sandbox (for
    messages) and its network namespace's pin ("" for a pod on the host's network)."""

    @property
    def sandbox_id(self) -> str: ...

    @property
    def netns(self) -> str: ...


def check_stream(stream: spdy.Stream) -> int | None:
    """None when the stream's headers name a stream type and a port we serve, else the
    RST_STREAM status that refuses it."""
    kind = stream.header(STREAM_TYPE)
    port = parse_port(stream.header(PORT))
    if kind not in (ERROR, DATA) or port is None:
        return spdy.RST_REFUSED_STREAM
    return None


def parse_port(text: str | None) -> int | None:
    if text is None or not text.isdigit():
        return None
    port = int(text)
    return port if 1 <= port <= 65535 else None


def request_id(stream: spdy.Stream) -> str:
    """The stream's request: its `requestID`, or for old clients one made of the stream ids
    (the error stream's id; the data stream is created right after it, id + 2)."""
    given = stream.header(REQUEST_ID)
    if given is not None:
        return given
    if stream.header(STREAM_TYPE) == DATA:
        return str(stream.id - 2)
    return str(stream.id)


@dataclass
class Pair:
    """The two streams of one forwarded connection."""

    request: str
    error: spdy.Stream | None = None
    data: spdy.Stream | None = None
    complete: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, stream: spdy.Stream) -> str | None:
        """None when taken, else why not (a stream of that type is there already)."""
        kind = stream.header(STREAM_TYPE)
        if kind == ERROR:
            if self.error is not None:
                return "error stream already assigned"
            self.error = stream
        else:
            if self.data is not None:
                return "data stream already assigned"
            self.data = stream
        if self.error is not None and self.data is not None:
            self.complete.set()
        return None


class End(enum.Enum):
    """How one direction of a forwarded connection ended."""

    EOF = "eof"
    POD_RESET = "pod"  # ECONNRESET, EPIPE from the pod's side
    CLIENT_RESET = "client"  # the client's RST_STREAM, or its connection gone


async def serve_spdy(exchange: Exchange, dialer: Dialer = dial) -> None:
    """The SPDY/3.1 port-forward of one upgraded connection (to the pod its payload names),
    until the client goes."""
    upgraded = await spdy.upgrade(exchange, (PROTOCOL,), check_stream)
    if upgraded is None:
        return
    session, _protocol = upgraded
    await Forwarding(session, exchange.payload, dialer, stuck(exchange.writer)).run()


def stuck(writer: asyncio.StreamWriter) -> Callable[[], None]:
    """What ends a connection whose client stopped reading: the transport aborted when bytes
    are still waiting to go (a plain close would wait for them for ever)."""

    def abort() -> None:
        if writer.transport.get_write_buffer_size():
            writer.transport.abort()

    return abort


class Forwarding:
    """The pairs of one SPDY session (see the module docstring)."""

    def __init__(
        self,
        session: spdy.Session,
        pod: Pod,
        dialer: Dialer = dial,
        abort: Callable[[], None] = lambda: None,
    ) -> None:
        self._session = session
        self._pod = pod
        self._dial = dialer
        self._abort = abort  # at the end, for a client that stopped reading (`stuck`)
        self._pairs: dict[str, Pair] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def active(self) -> int:
        """Pairs waiting for a stream or forwarding (tests check that none is left)."""
        return len(self._tasks)

    async def run(self) -> None:
        reading = asyncio.create_task(self._session.run())
        try:
            while (stream := await self._session.next_stream()) is not None:
                self._take(stream)
        finally:
            for task in list(self._tasks):
                task.cancel()
            for task in list(self._tasks):
                with contextlib.suppress(BaseException):
                    await task
            await _bounded(self._session.close())
            self._abort()
            reading.cancel()
            with contextlib.suppress(BaseException):
                await reading

    def _spawn(self, work: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _take(self, stream: spdy.Stream) -> None:
        key = request_id(stream)
        pair = self._pairs.get(key)
        if pair is None:
            pair = self._pairs[key] = Pair(key)
            self._spawn(self._pair(pair))
        refused = pair.add(stream)
        if refused is not None:
            message = f"error processing stream for request {key}: {refused}"
            log.warning("cri_portforward_stream_refused", id=self._pod.sandbox_id, error=message)
            self._spawn(_refuse(stream, pair, message))

    async def _pair(self, pair: Pair) -> None:
        """Wait for the pair's second stream, then forward; the pair is forgotten once
        complete (a later stream with its id starts a new pair)."""
        try:
            async with asyncio.timeout(PAIR_TIMEOUT):
                await pair.complete.wait()
        except TimeoutError:
            self._pairs.pop(pair.request, None)
            message = f"timed out waiting for the streams of request {pair.request}"
            log.warning("cri_portforward_incomplete", id=self._pod.sandbox_id, error=message)
            if pair.data is not None:
                await pair.data.reset()
            if pair.error is not None:
                await _report(pair.error, message)
            return
        self._pairs.pop(pair.request, None)
        assert pair.error is not None
        assert pair.data is not None
        await self._forward(pair.error, pair.data)

    async def _forward(self, error: spdy.Stream, data: spdy.Stream) -> None:
        port = parse_port(data.header(PORT)) or 0
        draining = asyncio.create_task(_drain(error))
        try:
            try:
                sock = await self._dial(Target(self._pod.netns, port))
            except DialError as e:
                message = f"error forwarding port {port} to pod {self._pod.sandbox_id}: {e}"
                log.info("cri_portforward_failed", id=self._pod.sandbox_id, error=message)
                await _report(error, message)
                await data.close()
                await _drain(data)
                return
            await _copy_both_ways(sock, error, data, self._pod)
        finally:
            draining.cancel()
            with contextlib.suppress(BaseException):
                await draining


async def _copy_both_ways(
    sock: socket.socket, error: spdy.Stream, data: spdy.Stream, pod: Pod
) -> None:
    """Forward between the pod's connection and the data stream until both directions end
    (see the module docstring); the socket is closed at the end, however it ends."""
    up = asyncio.create_task(_client_to_pod(sock, data))
    down = asyncio.create_task(_pod_to_client(sock, data))
    reset: End | None = None
    try:
        pending = {up, down}
        while pending and reset is None:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.result() is not End.EOF:
                    reset = task.result()
                elif task is down:
                    await error.close()  # the pod said all it had to say
    finally:
        for task in (up, down):
            task.cancel()
        for task in (up, down):
            with contextlib.suppress(BaseException):
                await task
        if reset is not None:
            log.info("cri_portforward_reset", id=pod.sandbox_id, stream=data.id, by=reset.value)
            abort(sock)
            await _bounded(data.reset())
            await _bounded(error.reset())
        else:
            sock.close()
            await _bounded(error.close())


async def _client_to_pod(sock: socket.socket, data: spdy.Stream) -> End:
    loop = asyncio.get_running_loop()
    while chunk := await data.read():
        try:
            await loop.sock_sendall(sock, chunk)
        except OSError:
            return End.POD_RESET
    if data.broken:  # the client's RST_STREAM, or its connection gone
        return End.CLIENT_RESET
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
    return End.EOF


async def _pod_to_client(sock: socket.socket, data: spdy.Stream) -> End:
    loop = asyncio.get_running_loop()
    while True:
        try:
            chunk = await loop.sock_recv(sock, CHUNK)
        except OSError:
            return End.POD_RESET
        if not chunk:
            await data.close()
            return End.EOF
        if data.broken:
            return End.CLIENT_RESET
        # One DATA frame per read (up to CHUNK), not the session's 32 KiB pieces: the client
        # (spdystream) hands each frame through a queue and a channel, so fewer frames move
        # the same bytes faster.
        await data.session.send(spdy.DataFrame(data.id, chunk))


async def _bounded(work: Awaitable[None], seconds: float = CLOSE_WAIT) -> None:
    """`work` (a frame sent at the end) given at most `seconds`: a client that stopped
    reading must not hold the cleanup (nor the daemon's stop) for ever. A task of its own:
    in a task being cancelled, `asyncio.timeout` (3.11) raises CancelledError, not
    TimeoutError, and the rest of the cleanup would be skipped."""
    task = asyncio.ensure_future(work)
    await asyncio.wait((task,), timeout=seconds)
    task.cancel()
    with contextlib.suppress(BaseException):
        await task


async def _drain(stream: spdy.Stream) -> None:
    """Read what the client sends on a stream we do not read otherwise (the session stops
    reading the connection when a stream's unread bytes pile up)."""
    while await stream.read():
        pass


async def _report(error: spdy.Stream, message: str) -> None:
    await error.write(message.encode())
    await error.close()


async def _refuse(stream: spdy.Stream, pair: Pair, message: str) -> None:
    """A second stream of one type for a request: kubelet writes why on the pair's error
    stream (which ends the client's session); the extra stream is reset."""
    if pair.error is not None and pair.error is not stream:
        await pair.error.write(message.encode())
    await stream.reset()
