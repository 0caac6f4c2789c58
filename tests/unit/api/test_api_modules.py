"""The generated API modules import cleanly and their messages round-trip."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from google.protobuf import any_pb2, timestamp_pb2

from supervisor.api.containerd.events import namespace_pb2 as events_pb2
from supervisor.api.containerd.services.containers.v1 import containers_pb2
from supervisor.api.containerd.services.introspection.v1 import introspection_pb2
from supervisor.api.containerd.services.namespaces.v1 import namespaces_pb2, namespaces_pb2_grpc
from supervisor.api.containerd.services.tasks.v1 import tasks_pb2
from supervisor.api.containerd.types.task import task_pb2

API_ROOT = Path(__file__).resolve().parents[3] / "supervisor" / "api"


def _generated_modules() -> list[str]:
    return sorted(
        ".".join(("supervisor", "api", *path.relative_to(API_ROOT).with_suffix("").parts))
        for path in API_ROOT.rglob("*_pb2*.py")
    )


@pytest.mark.parametrize("module", _generated_modules())
def test_generated_module_imports(module: str) -> None:
    importlib.import_module(module)


def test_namespace_with_labels_round_trips() -> None:
    namespace = namespaces_pb2.Namespace(name="default", labels={"a": "1", "b": "2"})
    decoded = namespaces_pb2.Namespace.FromString(namespace.SerializeToString())
    assert decoded == namespace
    assert dict(decoded.labels) == {"a": "1", "b": "2"}


def test_container_with_nested_runtime_and_any_round_trips() -> None:
    options = any_pb2.Any()
    options.Pack(events_pb2.NamespaceCreate(name="x"))
    container = containers_pb2.Container(
        id="c1",
        runtime=containers_pb2.Container.Runtime(name="io.containerd.runc.v2", options=options),
        created_at=timestamp_pb2.Timestamp(seconds=1_700_000_000),
        extensions={"ext": options},
    )
    decoded = containers_pb2.Container.FromString(container.SerializeToString())
    assert decoded == container
    assert decoded.runtime.options.TypeName() == "containerd.events.NamespaceCreate"


def test_task_status_enum_keeps_containerd_names() -> None:
    process = task_pb2.Process(container_id="c1", status=task_pb2.RUNNING)
    response = tasks_pb2.GetResponse(process=process)
    decoded = tasks_pb2.GetResponse.FromString(response.SerializeToString())
    assert task_pb2.Status.Name(decoded.process.status) == "RUNNING"


def test_introspection_uses_googleapis_status_type() -> None:
    plugin = introspection_pb2.Plugin(type="io.containerd.snapshotter.v1", id="overlayfs")
    plugin.init_err.code = 9
    assert type(plugin.init_err).__module__ == "google.rpc.status_pb2"


def test_messages_report_their_real_module() -> None:
    assert namespaces_pb2.Namespace.__module__ == namespaces_pb2.__name__


def test_grpc_module_exposes_stub_and_servicer() -> None:
    assert hasattr(namespaces_pb2_grpc, "NamespacesStub")
    assert hasattr(namespaces_pb2_grpc, "NamespacesServicer")
    assert hasattr(namespaces_pb2_grpc, "add_NamespacesServicer_to_server")
