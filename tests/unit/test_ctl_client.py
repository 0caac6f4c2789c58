"""ctrctl's client stubs, made from the services' descriptors, are the generated ones."""

from __future__ import annotations

import importlib

import pytest

from ctl.client import stub

API = "supervisor.api.containerd.services"
SERVICES = [
    ("images", "Images"), ("content", "Content"), ("snapshots", "Snapshots"), ("diff", "Diff"),
    ("containers", "Containers"), ("tasks", "Tasks"), ("leases", "Leases"),
]  # fmt: skip


class RecordingChannel:
    """Stands for a grpc.Channel: each multi-callable asked for is a record of how."""

    def __getattr__(self, kind: str):
        def make(path, request_serializer, response_deserializer, **options):
            return (kind, path, request_serializer, response_deserializer, options)

        return make


@pytest.mark.parametrize(("package", "service"), SERVICES)
def test_a_stub_from_the_descriptor_calls_as_the_generated_one(package, service):
    pb2 = importlib.import_module(f"{API}.{package}.v1.{package}_pb2")
    generated = getattr(importlib.import_module(f"{pb2.__name__}_grpc"), f"{service}Stub")
    expected = vars(generated(RecordingChannel()))
    assert vars(stub(RecordingChannel(), pb2, service)) == expected
    assert {kind for kind, *_ in expected.values()} >= {"unary_unary"}
