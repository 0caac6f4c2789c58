"""What every RPC shares: the namespace header, error mapping and the one log line per call.

`Registrar` wraps each handler so that a typed `CtrdError` becomes its status code, a method
not implemented yet answers UNIMPLEMENTED, an unexpected exception is logged with its traceback
and answered UNKNOWN, and every call ends with one `rpc` log line (method, ns, code, ms).
Successful calls are logged at debug level, failed ones at info: a busy daemon serves thousands
of reads a second and their log lines would drown the ones worth reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import structlog

from supervisor import errgrpc, headers, identifiers
from supervisor.errors import CtrdError, FailedPrecondition, InvalidArgument

NAMESPACE_HEADER = headers.NAMESPACE
LEASE_HEADER = headers.LEASE

log = structlog.get_logger("ctrd.rpc")


def header(context: grpc.aio.ServicerContext[Any, Any], name: str) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == name:
            return value if isinstance(value, str) else value.decode()
    return None


def namespace(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The request's namespace; namespaced calls without one fail as containerd's do."""
    ns = header(context, NAMESPACE_HEADER)
    if not ns:
        raise FailedPrecondition("namespace is required")
    try:
        return identifiers.validate(ns)
    except InvalidArgument as e:
        raise InvalidArgument(f"namespace validation: {e.detail}") from None


def lease(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    return header(context, LEASE_HEADER) or None


T = TypeVar("T")


async def emitted(
    work: Callable[[Callable[[T], None]], Awaitable[None]], name: str
) -> AsyncIterator[T]:
    """What `work` emits, as it emits it, for a server-streaming RPC: `work` runs as a task of
    its own (so a slow client never holds it up), its error ends the stream, and a client
    that goes away cancels it."""
    queue: asyncio.Queue[T | None] = asyncio.Queue()

    async def run() -> None:
        try:
            await work(queue.put_nowait)
        finally:
            queue.put_nowait(None)

    task = asyncio.create_task(run(), name=name)
    try:
        while (message := await queue.get()) is not None:
            yield message
        await task  # raises what the work raised
    finally:
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, CtrdError):
            await task


class _Outcome:
    """The status a call ended with, filled in by the wrapper as it learns it."""

    def __init__(self) -> None:
        self.code = grpc.StatusCode.OK
        self.error = ""


if TYPE_CHECKING:  # generic in grpc-stubs only
    Handler = grpc.RpcMethodHandler[Any, Any]
    GenericHandler = grpc.GenericRpcHandler[Any, Any]


class Registrar:
    """The server as the generated `add_*Servicer_to_server` functions see it: each method's
    handler is wrapped once, as it is registered. (An interceptor would build the wrapped
    handler on every call: ~0.1 ms of a call's ~0.8 ms.)"""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Sequence[GenericHandler]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_Generic(h) for h in handlers))

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, Handler]) -> None:
        self._server.add_registered_method_handlers(  # type: ignore[attr-defined]
            service, {name: wrap(f"/{service}/{name}", h) for name, h in handlers.items()}
        )


class Deferred:
    """A servicer built by `build` at its first call (and its modules imported then).

    The generated `add_*Servicer_to_server` take each method of the servicer as they register
    it: here each is a stand-in that, when called, builds the servicer once and calls its
    method, which returns what the real one does (a coroutine or an async iterator).
    """

    def __init__(self, build: Callable[[], Any]) -> None:
        self._build = build
        self._servicer: Any = None

    def servicer(self) -> Any:
        if self._servicer is None:
            self._servicer = self._build()
        return self._servicer

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)

        def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            return getattr(self.servicer(), name)(request, context)

        return call


class _Generic(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """A generic handler whose methods' handlers are wrapped, each the first time it is used."""

    def __init__(self, inner: GenericHandler) -> None:
        self._inner = inner
        self._wrapped: dict[str, Handler] = {}  # only methods it has: any name may be asked

    def service(self, details: grpc.HandlerCallDetails) -> Handler | None:
        method: str = details.method
        if method not in self._wrapped:
            handler = self._inner.service(details)
            if handler is None:
                return None
            self._wrapped[method] = wrap(method, handler)
        return self._wrapped[method]


def wrap(method: str, handler: Handler) -> Handler:
    """The handler with errors mapped to status codes and one log line per call."""
    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(_unary(handler.unary_unary, method), **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(_unary(handler.stream_unary, method), **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            _streaming(handler.unary_stream, method), **kwargs
        )
    assert handler.stream_stream is not None
    return grpc.stream_stream_rpc_method_handler(
        _streaming(handler.stream_stream, method), **kwargs
    )


def _unary(behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        outcome = _Outcome()
        start = time.monotonic()
        try:
            result = behavior(request, context)
            if inspect.isawaitable(result):
                result = await result
            return result
        except BaseException as e:
            await _abort(e, context, outcome, method)
            raise
        finally:
            _log(method, outcome, start, context)

    return call


def _streaming(behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        outcome = _Outcome()
        start = time.monotonic()
        try:
            result = behavior(request, context)
            if inspect.isawaitable(result):
                await result
            else:
                async for item in result:
                    yield item
        except BaseException as e:
            await _abort(e, context, outcome, method)
            raise
        finally:
            _log(method, outcome, start, context)

    return call


async def _abort(
    error: BaseException,
    context: grpc.aio.ServicerContext[Any, Any],
    outcome: _Outcome,
    method: str,
) -> None:
    """Turn an exception into the call's status; returns only for ones grpc handles itself."""
    if isinstance(error, CtrdError):
        outcome.code, outcome.error = errgrpc.code_of(error), str(error)
    elif isinstance(error, NotImplementedError):
        outcome.code = grpc.StatusCode.UNIMPLEMENTED
        outcome.error = f"{method} is not implemented by ctrd"
    elif isinstance(error, grpc.aio.AbortError):
        outcome.code = context.code() or grpc.StatusCode.UNKNOWN
        return
    elif isinstance(error, GeneratorExit):  # the client went away in the middle of a stream
        outcome.code = grpc.StatusCode.CANCELLED
        return
    elif isinstance(error, BaseException) and not isinstance(error, Exception):
        outcome.code = grpc.StatusCode.CANCELLED  # cancellation, or the server shutting down
        return
    else:
        log.exception("rpc_failed", method=method)
        outcome.code, outcome.error = grpc.StatusCode.UNKNOWN, f"{type(error).__name__}: {error}"
    await context.abort(outcome.code, outcome.error)


def _log(
    method: str,
    outcome: _Outcome,
    start: float,
    context: grpc.aio.ServicerContext[Any, Any],
) -> None:
    ms = round((time.monotonic() - start) * 1000, 2)
    if outcome.code == grpc.StatusCode.OK and context.code() not in (None, grpc.StatusCode.OK):
        outcome.code = context.code()
    code = outcome.code.name
    ns = header(context, NAMESPACE_HEADER) or ""
    if outcome.code == grpc.StatusCode.OK:
        log.debug("rpc", method=method, ns=ns, code=code, ms=ms)
    else:
        log.info("rpc", method=method, ns=ns, code=code, ms=ms, error=outcome.error or None)
