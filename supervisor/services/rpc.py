"""What every RPC shares: the namespace header, error mapping and the one log line per call.

`Interceptor` wraps each handler so that a typed `CtrdError` becomes its status code, a method
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
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
import structlog

from supervisor import errgrpc, headers, identifiers
from supervisor.errors import CtrdError, FailedPrecondition

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
    return identifiers.validate(ns)


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


class Interceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(details)
        if handler is None:
            return handler
        method: str = details.method
        ns = ""
        for key, value in details.invocation_metadata or ():
            if key == NAMESPACE_HEADER:
                ns = value if isinstance(value, str) else value.decode()
        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _unary(handler.unary_unary, method, ns), **kwargs
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _unary(handler.stream_unary, method, ns), **kwargs
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _streaming(handler.unary_stream, method, ns), **kwargs
            )
        return grpc.stream_stream_rpc_method_handler(
            _streaming(handler.stream_stream, method, ns), **kwargs
        )


def _unary(behavior: Callable[..., Any], method: str, ns: str) -> Callable[..., Any]:
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
            _log(method, ns, outcome, start, context)

    return call


def _streaming(behavior: Callable[..., Any], method: str, ns: str) -> Callable[..., Any]:
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
            _log(method, ns, outcome, start, context)

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
    ns: str,
    outcome: _Outcome,
    start: float,
    context: grpc.aio.ServicerContext[Any, Any],
) -> None:
    ms = round((time.monotonic() - start) * 1000, 2)
    if outcome.code == grpc.StatusCode.OK and context.code() not in (None, grpc.StatusCode.OK):
        outcome.code = context.code()
    code = outcome.code.name
    if outcome.code == grpc.StatusCode.OK:
        log.debug("rpc", method=method, ns=ns, code=code, ms=ms)
    else:
        log.info("rpc", method=method, ns=ns, code=code, ms=ms, error=outcome.error or None)
