"""Kubernetes' remote-command protocols (exec and attach), independent of the transport.

Protocols, newest first: `v5.channel.k8s.io` (over SPDY the same as v4), `v4.channel.k8s.io`
(the error stream carries a JSON `metav1.Status`, the exit code in it), `v3.channel.k8s.io`
(adds the resize stream), `v2.channel.k8s.io`, `channel.k8s.io` (errors as plain text).
`VERSIONS` maps each to its number.

The transport-independent seam (what the SPDY handler here and a WebSocket one build):
- `Channels`: the protocol `version` (1..5), the `error` channel and, when the request asked
  for them, `stdin`, `stdout`, `stderr` and `resize` (each a `Channel`: `read()` -> bytes, b""
  at the client's end; `write(data)`; `close()` = our end of it), and `lost`, an Event set
  when the client's connection has gone.
- `serve(channels, work)`: awaits `work` (the exec or the attach, which returns only once
  everything it output has been written to the channels, and raises `ExitCode` for a command
  that ended with a non-zero code),
  then writes the status (`status_message`) on the error channel and closes every channel.
  A `CtrdError` from `work` becomes a Failure status with its words (InternalError).
- `ResizeParser`: the resize channel's JSON objects (`{"Width":W,"Height":H}`), one after the
  other, possibly split across reads; sizes with a zero are dropped.

Over SPDY (`handler(run)` -> a `server.Handler`): the upgrade picks the client's first
protocol of `PROTOCOLS`; streams are accepted by their `streamType` header (error, stdin,
stdout, stderr, resize; anything else or a second of a kind is refused); the handler waits
(STREAMS_TIMEOUT) for those the request implies (`expected`: error always, stdin, stdout,
stderr as asked, resize when tty and the version is 3 or more), then runs `run(payload,
channels)` through `serve` and ends the session (GOAWAY) once the status is written. A client
that never creates its streams gets the connection closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from supervisor import errors
from supervisor.cri.streaming import spdy
from supervisor.cri.streaming.server import Exchange, Handler

log = structlog.get_logger("ctrd.cri.streaming")

PROTOCOLS = (
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
)
VERSIONS = {p: 5 - i for i, p in enumerate(PROTOCOLS)}
STREAM_TYPES = ("error", "stdin", "stdout", "stderr", "resize")
STREAMS_TIMEOUT = 30.0  # seconds for the client to create its streams


class Channel(Protocol):
    async def read(self) -> bytes: ...

    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class Channels:
    version: int
    error: Channel
    stdin: Channel | None = None
    stdout: Channel | None = None
    stderr: Channel | None = None
    resize: Channel | None = None
    lost: asyncio.Event = field(default_factory=asyncio.Event)


class ExitCode(Exception):
    """A command that ended with a non-zero code: the status says so."""

    def __init__(self, code: int, cmd: list[str]) -> None:
        super().__init__(f"error executing command [{' '.join(cmd)}], exit code {code}")
        self.code = code


def status_message(version: int, failure: Exception | None) -> bytes:
    """What the error channel carries: v4+ a JSON Status (Success too), before v4 the error's
    text and nothing on success."""
    if failure is None:
        if version < 4:
            return b""
        return json.dumps({"metadata": {}, "status": "Success"}).encode()
    if isinstance(failure, ExitCode):
        message = f"command terminated with non-zero exit code: {failure}"
        if version < 4:
            return message.encode()
        status: dict[str, Any] = {
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": str(failure.code)}]},
        }
        return json.dumps(status).encode()
    text = failure.detail if isinstance(failure, errors.CtrdError) else str(failure)
    if version < 4:
        return text.encode()
    status = {
        "metadata": {},
        "status": "Failure",
        "message": f"Internal error occurred: {text}",
        "reason": "InternalError",
        "details": {"causes": [{"message": text}]},
        "code": 500,
    }
    return json.dumps(status).encode()


class ResizeParser:
    def __init__(self) -> None:
        self._buffer = ""
        self._decoder = json.JSONDecoder()

    def feed(self, data: bytes) -> list[tuple[int, int]]:
        """The sizes (width, height) complete in what came so far."""
        self._buffer += data.decode("utf-8", "replace")
        sizes: list[tuple[int, int]] = []
        while True:
            text = self._buffer.lstrip()
            if not text:
                self._buffer = ""
                return sizes
            try:
                value, end = self._decoder.raw_decode(text)
            except ValueError:
                self._buffer = text
                return sizes
            self._buffer = text[end:]
            if isinstance(value, dict):
                width, height = value.get("Width"), value.get("Height")
                if isinstance(width, int) and isinstance(height, int) and width > 0 < height:
                    sizes.append((min(width, 0xFFFF), min(height, 0xFFFF)))


async def serve(channels: Channels, work: Awaitable[None]) -> None:
    failure: Exception | None = None
    try:
        await work
    except Exception as e:
        failure = _unwrapped(e)
        if not isinstance(failure, errors.CtrdError | ExitCode):
            log.exception("cri_stream_work_failed")
    message = status_message(channels.version, failure)
    if message:
        await channels.error.write(message)
    for channel in (channels.stdout, channels.stderr, channels.error, channels.stdin):
        if channel is not None:
            with contextlib.suppress(Exception):
                await channel.close()


def _unwrapped(error: Exception) -> Exception:
    """The one error a task group raised (its ExceptionGroup of one), else `error`."""
    while isinstance(error, ExceptionGroup) and len(error.exceptions) == 1:
        inner = error.exceptions[0]
        if not isinstance(inner, Exception):
            break
        error = inner
    return error


def expected(version: int, stdin: bool, stdout: bool, stderr: bool, tty: bool) -> set[str]:
    wanted = {"error"}
    wanted |= {name for name, on in (("stdin", stdin), ("stdout", stdout)) if on}
    if stderr and not tty:
        wanted.add("stderr")
    if tty and version >= 3:
        wanted.add("resize")
    return wanted


Run = Callable[[Any, Channels], Awaitable[None]]


def handler(run: Run) -> Handler:
    """The SPDY handler of exec or attach: `run(payload, channels)` does the work (see the
    module docstring); the payload (an ExecRequest or AttachRequest) says what it asked for."""

    async def handle(exchange: Exchange) -> None:
        seen: set[str] = set()

        def accept(stream: spdy.Stream) -> int | None:
            kind = (stream.header("streamtype") or "").lower()
            if kind not in STREAM_TYPES or kind in seen:
                return spdy.RST_REFUSED_STREAM
            seen.add(kind)
            return None

        upgraded = await spdy.upgrade(exchange, PROTOCOLS, accept)
        if upgraded is None:
            return
        session, protocol = upgraded
        version = VERSIONS[protocol]
        request = exchange.payload
        wanted = expected(
            version,
            bool(getattr(request, "stdin", False)),
            bool(getattr(request, "stdout", False)),
            bool(getattr(request, "stderr", False)),
            bool(getattr(request, "tty", False)),
        )
        lost = asyncio.Event()
        async with asyncio.TaskGroup() as group:
            reading = group.create_task(session.run())
            reading.add_done_callback(lambda _: lost.set())
            streams = await _collect(session, wanted)
            if streams is None:
                await session.close()
                return
            channels = Channels(
                version,
                streams["error"],
                streams.get("stdin"),
                streams.get("stdout"),
                streams.get("stderr"),
                streams.get("resize"),
                lost,
            )
            await serve(channels, run(request, channels))
            await session.close()

    return handle


async def _collect(session: spdy.Session, wanted: set[str]) -> dict[str, spdy.Stream] | None:
    """The streams by type once all `wanted` are there; None if the client went away or was
    too slow."""
    streams: dict[str, spdy.Stream] = {}
    try:
        async with asyncio.timeout(STREAMS_TIMEOUT):
            while not wanted <= streams.keys():
                stream = await session.next_stream()
                if stream is None:
                    return None
                streams[(stream.header("streamtype") or "").lower()] = stream
    except TimeoutError:
        log.warning("cri_stream_timeout", missing=sorted(wanted - streams.keys()))
        return None
    return streams
