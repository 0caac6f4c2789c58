"""The gRPC server's metrics, as go-grpc-prometheus (which containerd uses) names them.

`GrpcMetrics` is a `Tap` (`supervisor.services.rpc`) and a collector (`registry.register`):
each method is known from its registration on, with its counters at zero (as
`grpc_prometheus.Register` does for containerd: started, messages and handled by each of the
17 codes), and its handling histogram from its first call (containerd serves none unless
`grpc_histogram = true`; at zero, the ~130 methods' buckets would double a scrape's ~3000
lines for nothing); each call adds to plain integers of its method's record, on
the event loop, and a scrape reads them on its own thread (int reads and dict copies under the
GIL; no lock on the call's path).

Families: grpc_server_started_total, grpc_server_handled_total (grpc_code in Go's words: OK,
Canceled, NotFound...), grpc_server_msg_received_total, grpc_server_msg_sent_total, and
grpc_server_handling_seconds (a histogram over Prometheus' default buckets, as containerd's
`grpc_histogram = true`), each by grpc_type, grpc_service and grpc_method.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import Any

import grpc
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

# client_golang's prometheus.DefBuckets (prometheus_client's defaults have four more).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BUCKET_LABELS = (*(f"{b:g}" for b in BUCKETS), "+Inf")  # "1", as Go prints it

# Go's codes.Code.String() for each status, in go-grpc-prometheus' order.
GO_CODES: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.OK: "OK",
    grpc.StatusCode.CANCELLED: "Canceled",
    grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange",
    grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss",
}


def split_method(name: str) -> tuple[str, str]:
    """'/pkg.Service/Method' -> ('pkg.Service', 'Method'), as go-grpc-prometheus splits it."""
    service, slash, method = name.lstrip("/").partition("/")
    return (service, method) if slash else ("unknown", "unknown")


class MethodCounts:
    """One method's numbers: a `MethodTap`, written on the event loop only."""

    def __init__(self, kind: str, service: str, method: str) -> None:
        self.labels = (kind, service, method)
        self.started = 0
        self.received = 0
        self.sent = 0
        self.handled = dict.fromkeys(GO_CODES.values(), 0)
        self.buckets = [0] * (len(BUCKETS) + 1)  # per bucket, not cumulative; the last +Inf
        self.seconds = 0.0

    def begin(self, context: grpc.aio.ServicerContext[Any, Any]) -> object:
        self.started += 1
        return None

    def end(
        self, token: object, code: grpc.StatusCode, seconds: float, received: int, sent: int
    ) -> None:
        name = GO_CODES.get(code, "Unknown")
        self.handled[name] += 1
        self.received += received
        self.sent += sent
        self.buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.seconds += seconds


class GrpcMetrics(Collector):
    """The tap that counts every call, and the collector that serves the counts."""

    def __init__(self) -> None:
        self._methods: dict[str, MethodCounts] = {}

    def method(self, name: str, kind: str) -> MethodCounts:
        counts = self._methods.get(name)
        if counts is None:
            counts = self._methods[name] = MethodCounts(kind, *split_method(name))
        return counts

    def describe(self) -> list[Any]:
        return list(self._families([]))

    def collect(self) -> Iterator[Any]:
        return self._families(list(self._methods.values()))

    @staticmethod
    def _families(methods: list[MethodCounts]) -> Iterator[Any]:
        labels = ["grpc_type", "grpc_service", "grpc_method"]
        started = CounterMetricFamily(
            "grpc_server_started_total",
            "Total number of RPCs started on the server.",
            labels=labels,
        )
        handled = CounterMetricFamily(
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            labels=[*labels, "grpc_code"],
        )
        received = CounterMetricFamily(
            "grpc_server_msg_received_total",
            "Total number of RPC stream messages received on the server.",
            labels=labels,
        )
        sent = CounterMetricFamily(
            "grpc_server_msg_sent_total",
            "Total number of gRPC stream messages sent by the server.",
            labels=labels,
        )
        histogram = HistogramMetricFamily(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level "
            "handled by the server.",
            labels=labels,
        )
        for m in methods:
            values = list(m.labels)
            started.add_metric(values, m.started)
            for code, count in list(m.handled.items()):
                handled.add_metric([*values, code], count)
            received.add_metric(values, m.received)
            sent.add_metric(values, m.sent)
            if not m.started:  # a method never called has no histogram yet (see the doc)
                continue
            cumulative, total = [], 0
            for label, count in zip(_BUCKET_LABELS, list(m.buckets), strict=True):
                total += count
                cumulative.append((label, float(total)))
            histogram.add_metric(values, cumulative, m.seconds)
        yield from (started, handled, received, sent, histogram)
