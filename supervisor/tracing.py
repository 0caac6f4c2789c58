"""OpenTelemetry tracing: spans per RPC, for the steps of a task's start, and in its shim.

Off unless `[tracing] endpoint` is set, and then nothing of OpenTelemetry is imported: `span`
hands back one shared no-op context manager, `inject` the parameters it was given, and the RPC
wrapper (`supervisor.services.rpc`) is built without the tap (`Tracing.method`). The cost of
tracing being off is one global lookup and a function call where a span would be.

On, the daemon keeps a tracer provider of its own (never OpenTelemetry's global one), batches
spans on the SDK's exporter thread and sends them by OTLP, over gRPC or HTTP/protobuf (the
`protocol` key, containerd's default "http/protobuf"; the HTTP exporter is a small one of ours
on urllib, so the `requests` stack is not needed). An RPC's span continues the caller's trace
when the call carries W3C `traceparent` metadata.

The shim: a shim call made under a span carries that span's W3C `traceparent` in its params
(`inject`); the shim, which stays stdlib-only, times its handling of such a request (and the
runtime commands it runs for it) and returns those timings as `spans` in its answer, which
`record_shim_spans` turns into child spans here. A request without `traceparent` costs the shim
nothing.

Invariants: a span never outlives its call (every start is ended in a `finally`); tracing
failing to export never fails or slows a call (export happens on the SDK's thread, and the
exporter's errors are the SDK's to log).
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import grpc

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExportResult
    from opentelemetry.trace import Tracer

PROTOCOLS = ("http/protobuf", "grpc")
HTTP_PATH = "/v1/traces"
EXPORT_TIMEOUT = 5.0  # seconds an export may take (on the exporter's thread; a stop waits for one)

_NOOP = contextlib.nullcontext()
_tracer: Tracer | None = None  # set by `Tracing` while it is open: tracing is on


# Values are NamedTuples, not frozen dataclasses, here: this module is imported by every
# daemon, tracing on or off, and each dataclass costs ~0.5 ms to make at import.
class Settings(NamedTuple):
    endpoint: str
    protocol: str = "http/protobuf"
    insecure: bool = False
    service_name: str = "ctrd"
    sampling_ratio: float = 1.0


def on() -> bool:
    return _tracer is not None


def span(name: str, **attributes: Any) -> contextlib.AbstractContextManager[Any]:
    """A span around a step, child of the current one; a shared no-op when tracing is off."""
    if _tracer is None:
        return _NOOP
    return _tracer.start_as_current_span(name, attributes=attributes or None)


def record_last(name: str, seconds: float) -> None:
    """A span for work that just ended after `seconds` (timed by someone else, on a thread),
    child of the current one."""
    if _tracer is None:
        return
    end = time.time_ns()
    _tracer.start_span(name, start_time=end - int(seconds * 1e9)).end(end_time=end)


def inject(params: dict[str, Any]) -> dict[str, Any]:
    """`params` for a shim call, with the current span's `traceparent` when there is one."""
    if _tracer is None:
        return params
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    if "traceparent" not in carrier:
        return params
    return {**params, "traceparent": carrier["traceparent"]}


def record_shim_spans(result: Any, **attributes: Any) -> None:
    """The spans a shim timed for a traced request, as children of the current span."""
    if _tracer is None or not isinstance(result, dict):
        return
    timed = result.pop("spans", None)
    if not isinstance(timed, list):
        return
    for entry in timed:
        try:
            name, start, end = str(entry["name"]), int(entry["start_ns"]), int(entry["end_ns"])
        except (KeyError, TypeError, ValueError):
            continue
        recorded = _tracer.start_span(name, start_time=start, attributes=attributes or None)
        recorded.end(end_time=end)


class Tracing:
    """Tracing on: the provider, its exporter, and the RPC tap (`supervisor.services.rpc.Tap`).
    One at a time in a process (it sets the module's tracer); `close` flushes and ends it."""

    def __init__(self, settings: Settings) -> None:
        global _tracer
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        self.settings = settings
        self.provider: TracerProvider = TracerProvider(
            resource=Resource.create({"service.name": settings.service_name}),
            sampler=ParentBased(TraceIdRatioBased(settings.sampling_ratio)),
        )
        self.provider.add_span_processor(BatchSpanProcessor(_exporter(settings)))
        self.tracer = self.provider.get_tracer("ctrd")
        _tracer = self.tracer

    def method(self, name: str, kind: str) -> _RpcSpans:
        return _RpcSpans(self.tracer, name, kind)

    def close(self) -> None:
        """Flush what is batched and stop (blocking: call it off the event loop)."""
        global _tracer
        if _tracer is self.tracer:
            _tracer = None
        self.provider.shutdown()


class _RpcSpans:
    """One method's server spans, named as otelgrpc names them (`package.Service/Method`) and
    current while the call runs, so that the steps under it are its children."""

    def __init__(self, tracer: Tracer, method: str, kind: str) -> None:
        self._tracer = tracer
        self._name = method.lstrip("/")
        service, _, rpc_method = self._name.rpartition("/")
        self._attributes = {
            "rpc.system": "grpc",
            "rpc.service": service,
            "rpc.method": rpc_method,
            "rpc.grpc.kind": kind,
        }

    def begin(self, context: grpc.aio.ServicerContext[Any, Any]) -> object:
        from opentelemetry import context as otel_context
        from opentelemetry import trace

        parent = _remote_parent(context.invocation_metadata() or ())
        started = self._tracer.start_span(
            self._name, context=parent, kind=trace.SpanKind.SERVER, attributes=self._attributes
        )
        return _Call(started, otel_context.attach(trace.set_span_in_context(started, parent)))

    def end(
        self, token: object, code: grpc.StatusCode, seconds: float, received: int, sent: int
    ) -> None:
        from opentelemetry import trace

        assert isinstance(token, _Call)
        started = token.span
        started.set_attribute("rpc.grpc.status_code", code.value[0])
        if code is not grpc.StatusCode.OK:
            started.set_status(trace.Status(trace.StatusCode.ERROR, code.name))
        started.end()
        # Undone where it was done. A stream closed from another context (grpc closes some
        # from a task of its own) leaves it in the call's task, which ends with the call.
        # (The token is the contextvars one: reset here, not by `detach`, which logs a
        # traceback for what is expected.)
        with contextlib.suppress(ValueError):
            token.attached.var.reset(token.attached)


class _Call(NamedTuple):
    span: Any  # the call's span
    attached: contextvars.Token[Any]  # what made it current (`opentelemetry.context.attach`)


def _remote_parent(metadata: Any) -> Any:
    """The caller's span context from `traceparent`/`tracestate` metadata, if it sent one."""
    carrier = {k: v for k, v in metadata if k in ("traceparent", "tracestate")}
    if not carrier:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract(
        {k: v if isinstance(v, str) else v.decode() for k, v in carrier.items()}
    )


def _exporter(settings: Settings) -> Any:
    if settings.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(
            endpoint=settings.endpoint, insecure=settings.insecure, timeout=int(EXPORT_TIMEOUT)
        )
    return HttpExporter(settings.endpoint)


class HttpExporter:
    """OTLP over HTTP/protobuf (POST `/v1/traces`, `application/x-protobuf`), on urllib: the
    SDK's exporter thread calls it, so blocking here blocks nobody."""

    def __init__(self, endpoint: str) -> None:
        url = endpoint if "://" in endpoint else f"http://{endpoint}"
        scheme, _, rest = url.partition("://")
        host, slash, path = rest.partition("/")
        self.url = f"{scheme}://{host}{slash + path if path else HTTP_PATH}"

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        import urllib.request

        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
        from opentelemetry.sdk.trace.export import SpanExportResult

        body = encode_spans(spans).SerializeToString()
        request = urllib.request.Request(
            self.url, data=body, method="POST",
            headers={"Content-Type": "application/x-protobuf"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=EXPORT_TIMEOUT) as answer:
                answer.read()
        except OSError:  # URLError and HTTPError are OSErrors
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
