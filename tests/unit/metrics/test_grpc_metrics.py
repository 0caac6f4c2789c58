"""gRPC server metrics: every registered method is served from its registration on, and each
call moves its started, handled (by code), messages and handling-time series, read back
through prometheus_client's own text parser."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from supervisor.api.containerd.services.version.v1 import version_pb2_grpc
from supervisor.errors import NotFound
from supervisor.metrics.grpc import GrpcMetrics, split_method
from supervisor.services.rpc import Registrar
from supervisor.services.version import VersionService

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _samples(metrics: GrpcMetrics) -> Samples:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(metrics)
    text = generate_latest(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def _fail(request: bytes, context: Any) -> bytes:
    raise NotFound("nothing here")


async def _three(request: bytes, context: Any) -> AsyncIterator[bytes]:
    for i in range(3):
        yield bytes([i])


async def _sum(requests: AsyncIterator[bytes], context: Any) -> bytes:
    return bytes([sum([len(r) async for r in requests])])


async def _echo(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    async for r in requests:
        yield r + r


def _test_service() -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
    return grpc.method_handlers_generic_handler(
        "test.Things",
        {
            "Fail": grpc.unary_unary_rpc_method_handler(_fail),
            "Three": grpc.unary_stream_rpc_method_handler(_three),
            "Sum": grpc.stream_unary_rpc_method_handler(_sum),
            "Echo": grpc.stream_stream_rpc_method_handler(_echo),
        },
    )


async def _exercise(metrics: GrpcMetrics, before: list[Samples]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        address = f"unix:{Path(tmp) / 'grpc.sock'}"
        server = grpc.aio.server()
        registrar = Registrar(server, [metrics])
        version_pb2_grpc.add_VersionServicer_to_server(VersionService(), registrar)
        registrar.add_generic_rpc_handlers([_test_service()])
        server.add_insecure_port(address)
        await server.start()
        try:
            before.append(_samples(metrics))
            async with grpc.aio.insecure_channel(address) as channel:
                version = channel.unary_unary("/containerd.services.version.v1.Version/Version")
                await version(b"")
                await version(b"")
                fail = channel.unary_unary("/test.Things/Fail")
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await fail(b"")
                assert failed.value.code() == grpc.StatusCode.NOT_FOUND
                assert [m async for m in channel.unary_stream("/test.Things/Three")(b"")] == [
                    b"\0",
                    b"\1",
                    b"\2",
                ]
                assert await channel.stream_unary("/test.Things/Sum")(iter([b"ab", b"c"])) == b"\3"
                echo = channel.stream_stream("/test.Things/Echo")(iter([b"a", b"b", b"c"]))
                assert [m async for m in echo] == [b"aa", b"bb", b"cc"]
        finally:
            await server.stop(None)


def test_registered_methods_are_served_at_zero_before_any_call() -> None:
    metrics = GrpcMetrics()
    before: list[Samples] = []
    asyncio.run(_exercise(metrics, before))
    labels = {
        "grpc_type": "unary",
        "grpc_service": "containerd.services.version.v1.Version",
        "grpc_method": "Version",
    }
    assert _value(before[0], "grpc_server_started_total", **labels) == 0
    assert _value(before[0], "grpc_server_handled_total", grpc_code="Canceled", **labels) == 0
    assert ("grpc_server_handling_seconds_count", frozenset(labels.items())) not in before[0]
    assert len([k for k in before[0] if k[0] == "grpc_server_handled_total"]) == 17


def test_calls_move_started_handled_messages_and_handling_time() -> None:
    metrics = GrpcMetrics()
    asyncio.run(_exercise(metrics, []))
    after = _samples(metrics)
    version = {
        "grpc_type": "unary",
        "grpc_service": "containerd.services.version.v1.Version",
        "grpc_method": "Version",
    }
    assert _value(after, "grpc_server_started_total", **version) == 2
    assert _value(after, "grpc_server_handled_total", grpc_code="OK", **version) == 2
    assert _value(after, "grpc_server_handling_seconds_count", **version) == 2
    assert _value(after, "grpc_server_handling_seconds_bucket", le="+Inf", **version) == 2
    assert 0 < _value(after, "grpc_server_handling_seconds_sum", **version) < 5
    assert _value(after, "grpc_server_msg_sent_total", **version) == 2

    fail = {"grpc_type": "unary", "grpc_service": "test.Things", "grpc_method": "Fail"}
    assert _value(after, "grpc_server_handled_total", grpc_code="NotFound", **fail) == 1
    assert _value(after, "grpc_server_handled_total", grpc_code="OK", **fail) == 0
    assert _value(after, "grpc_server_msg_received_total", **fail) == 1
    assert _value(after, "grpc_server_msg_sent_total", **fail) == 0

    three = {"grpc_type": "server_stream", "grpc_service": "test.Things", "grpc_method": "Three"}
    assert _value(after, "grpc_server_handled_total", grpc_code="OK", **three) == 1
    assert _value(after, "grpc_server_msg_sent_total", **three) == 3

    total = {"grpc_type": "client_stream", "grpc_service": "test.Things", "grpc_method": "Sum"}
    assert _value(after, "grpc_server_msg_received_total", **total) == 2
    assert _value(after, "grpc_server_handled_total", grpc_code="OK", **total) == 1

    echo = {"grpc_type": "bidi_stream", "grpc_service": "test.Things", "grpc_method": "Echo"}
    assert _value(after, "grpc_server_msg_received_total", **echo) == 3
    assert _value(after, "grpc_server_msg_sent_total", **echo) == 3


def test_method_names_split_as_go_grpc_prometheus_splits_them() -> None:
    assert split_method("/containerd.services.tasks.v1.Tasks/Start") == (
        "containerd.services.tasks.v1.Tasks",
        "Start",
    )
    assert split_method("nonsense") == ("unknown", "unknown")
