"""Our protos under proto/ must be wire-identical to containerd 1.6.20's.

Both sets are compiled with grpc_tools.protoc into FileDescriptorSets and
compared type by type: every message, enum and service containerd defines in a
``containerd.*`` or ``io.containerd.cgroups.*`` package (minus the packages we
deliberately do not implement) must exist in ours with the same fields, enum
values and methods, and we must not define anything in such a package that
containerd lacks.

containerd's protos come from the Debian package
golang-github-containerd-containerd-dev, the cgroups metrics protos (the
payload of Tasks.Metrics) from golang-github-containerd-cgroups-dev, which it
depends on.  Without them the tests fail; set
CTRD_ALLOW_MISSING_CONTAINERD_PROTOS=1 to skip them instead.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2

REPO_ROOT = Path(__file__).resolve().parents[3]
OUR_PROTO_ROOT = REPO_ROOT / "proto"

GOCODE_SRC = Path("/usr/share/gocode/src")
CONTAINERD_REPO = GOCODE_SRC / "github.com" / "containerd" / "containerd"
CONTAINERD_API = CONTAINERD_REPO / "api"
# gogoproto/gogo.proto, imported (weakly) by nearly every containerd proto.
GOGO_INCLUDE = GOCODE_SRC / "github.com" / "gogo" / "protobuf"
# Compiled on their side: the whole api/ tree plus runtime/ (which holds the runc
# shim options we implement, and shim APIs that EXCLUDED_PACKAGES must name).
CONTAINERD_PROTO_DIRS = (CONTAINERD_API, CONTAINERD_REPO / "runtime")
# The cgroups v1 and v2 Metrics messages, at the version containerd 1.6.20 builds with.
CGROUPS_REPO = GOCODE_SRC / "github.com" / "containerd" / "cgroups"
CGROUPS_PROTOS = (
    CGROUPS_REPO / "stats" / "v1" / "metrics.proto",
    CGROUPS_REPO / "v2" / "stats" / "metrics.proto",
)
# Where our protos live, one directory per top-level package name.
OUR_PROTO_TOPS = ("containerd", "io")

ALLOW_MISSING_ENV = "CTRD_ALLOW_MISSING_CONTAINERD_PROTOS"
MISSING_MESSAGE = (
    f"containerd's protos are not installed at {CONTAINERD_API} and {CGROUPS_REPO}: "
    "apt-get install golang-github-containerd-containerd-dev "
    f"(or set {ALLOW_MISSING_ENV}=1 to skip these tests)"
)
MISSING_ID = "containerd-protos-missing"

# containerd.* packages in their set that we deliberately do not implement.
EXCLUDED_PACKAGES = {
    "containerd.services.events.ttrpc.v1": "ttrpc event forwarding used by shims",
    "containerd.task.v2": "runtime v2 shim task API (ttrpc)",
    "containerd.runtime.linux.shim.v1": "runtime v1 shim API",
    "containerd.plugin": "fieldpath protoc plugin (option extensions, no messages)",
}


def _is_containerd_package(package: str) -> bool:
    return (
        package == "containerd"
        or package.startswith("containerd.")
        or package.startswith("io.containerd.cgroups.")
    )


def _in_scope(package: str) -> bool:
    return _is_containerd_package(package) and package not in EXCLUDED_PACKAGES


def _include_dir(module: str, marker: str) -> Path:
    """Directory that makes `marker` importable, located via an installed module."""
    spec = importlib.util.find_spec(module)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        for parent in Path(location).parents:
            if (parent / marker).is_file():
                return parent
    raise AssertionError(f"{marker} not found next to the {module} package")


def _well_known_includes() -> list[str]:
    grpc_tools_spec = importlib.util.find_spec("grpc_tools")
    assert grpc_tools_spec is not None, "grpcio-tools is not installed"
    assert grpc_tools_spec.origin is not None
    grpc_tools_include = Path(grpc_tools_spec.origin).parent / "_proto"
    googleapis_include = _include_dir("google.rpc", "google/rpc/status.proto")
    return [f"-I{grpc_tools_include}", f"-I{googleapis_include}"]


def _compile(includes: list[str], files: list[str]) -> descriptor_pb2.FileDescriptorSet:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.pb"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                *_well_known_includes(),
                *includes,
                f"--descriptor_set_out={out}",
                "--include_imports",
                *files,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, f"protoc failed:\n{result.stdout}{result.stderr}"
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


@dataclass(frozen=True)
class Index:
    """Message, enum and service descriptors of one set, by full name (no dot)."""

    messages: dict[str, descriptor_pb2.DescriptorProto]
    enums: dict[str, descriptor_pb2.EnumDescriptorProto]
    services: dict[str, descriptor_pb2.ServiceDescriptorProto]
    packages: frozenset[str]

    def names(self) -> set[str]:
        return {*self.messages, *self.enums, *self.services}


def _walk_messages(
    prefix: str, messages: Any
) -> Iterator[tuple[str, descriptor_pb2.DescriptorProto]]:
    for message in messages:
        name = f"{prefix}.{message.name}"
        yield name, message
        yield from _walk_messages(name, message.nested_type)


def _index(fds: descriptor_pb2.FileDescriptorSet) -> Index:
    """Index every in-scope type, nested ones included (e.g. map entries)."""
    messages: dict[str, descriptor_pb2.DescriptorProto] = {}
    enums: dict[str, descriptor_pb2.EnumDescriptorProto] = {}
    services: dict[str, descriptor_pb2.ServiceDescriptorProto] = {}
    packages = frozenset(f.package for f in fds.file)
    for file in fds.file:
        if not _in_scope(file.package):
            continue
        for enum in file.enum_type:
            enums[f"{file.package}.{enum.name}"] = enum
        for name, message in _walk_messages(file.package, file.message_type):
            messages[name] = message
            for enum in message.enum_type:
                enums[f"{name}.{enum.name}"] = enum
        for service in file.service:
            services[f"{file.package}.{service.name}"] = service
    return Index(messages, enums, services, packages)


@functools.cache
def _containerd_index() -> Index | None:
    if not CONTAINERD_API.is_dir() or not all(p.is_file() for p in CGROUPS_PROTOS):
        return None
    files = sorted(str(p) for d in CONTAINERD_PROTO_DIRS for p in d.rglob("*.proto"))
    files += [str(p) for p in CGROUPS_PROTOS]
    return _index(_compile([f"-I{GOCODE_SRC}", f"-I{GOGO_INCLUDE}"], files))


@functools.cache
def _our_index() -> Index:
    # protoc names each file relative to the include dir holding it.
    files = sorted(
        str(p) for top in OUR_PROTO_TOPS for p in (OUR_PROTO_ROOT / top).rglob("*.proto")
    )
    return _index(_compile([f"-I{OUR_PROTO_ROOT}"], files))


def _their_names(kind: str) -> list[str]:
    theirs = _containerd_index()
    if theirs is None:
        return [MISSING_ID]
    return sorted(getattr(theirs, kind))


def _theirs() -> Index:
    """containerd's index; fails (or, if allowed, skips) the calling test if absent.

    Called from test bodies rather than a fixture so that a missing package is
    reported as a test FAILURE, not a fixture error.
    """
    index = _containerd_index()
    if index is None:
        if os.environ.get(ALLOW_MISSING_ENV) == "1":
            pytest.skip(MISSING_MESSAGE)
        pytest.fail(MISSING_MESSAGE)
    return index


def _field_signature(field: descriptor_pb2.FieldDescriptorProto) -> dict[str, Any]:
    return {
        "name": field.name,
        "number": field.number,
        "type": descriptor_pb2.FieldDescriptorProto.Type.Name(field.type),
        "type_name": field.type_name,
        "label": descriptor_pb2.FieldDescriptorProto.Label.Name(field.label),
        "proto3_optional": field.proto3_optional,
        "oneof_index": field.oneof_index if field.HasField("oneof_index") else None,
        "json_name": field.json_name,
    }


def _message_signature(message: descriptor_pb2.DescriptorProto) -> dict[str, Any]:
    """Everything about a message that shows on the wire (nested types separately)."""
    return {
        "fields": {f.number: _field_signature(f) for f in message.field},
        "oneofs": [o.name for o in message.oneof_decl],
        "nested_types": sorted(n.name for n in message.nested_type),
        "nested_enums": sorted(e.name for e in message.enum_type),
        "map_entry": message.options.map_entry,
    }


def _enum_signature(enum: descriptor_pb2.EnumDescriptorProto) -> dict[str, int]:
    return {value.name: value.number for value in enum.value}


def _service_signature(service: descriptor_pb2.ServiceDescriptorProto) -> dict[str, Any]:
    return {
        method.name: {
            "input_type": method.input_type,
            "output_type": method.output_type,
            "client_streaming": method.client_streaming,
            "server_streaming": method.server_streaming,
        }
        for method in service.method
    }


def test_excluded_packages_are_all_real_containerd_packages() -> None:
    # Keeps the exclusion list honest: a typo here would silently widen it.
    theirs = _theirs()
    assert set(EXCLUDED_PACKAGES) <= theirs.packages


def test_compares_a_plausible_number_of_types() -> None:
    # Guards against the index silently coming out (nearly) empty.
    theirs = _theirs()
    assert len(theirs.messages) > 150
    assert len(theirs.services) == 11


def test_cgroups_metrics_are_compared() -> None:
    # ctr decodes Tasks.Metrics payloads with these: they must be in the comparison.
    theirs = _theirs()
    assert {"io.containerd.cgroups.v1.Metrics", "io.containerd.cgroups.v2.Metrics"} <= set(
        theirs.messages
    )


@pytest.mark.parametrize("name", _their_names("messages"))
def test_message_matches_containerd(name: str) -> None:
    theirs, ours = _theirs(), _our_index()
    assert name in ours.messages, f"message {name} is missing from our protos"
    assert _message_signature(ours.messages[name]) == _message_signature(theirs.messages[name])


@pytest.mark.parametrize("name", _their_names("enums"))
def test_enum_matches_containerd(name: str) -> None:
    theirs, ours = _theirs(), _our_index()
    assert name in ours.enums, f"enum {name} is missing from our protos"
    assert _enum_signature(ours.enums[name]) == _enum_signature(theirs.enums[name])


@pytest.mark.parametrize("name", _their_names("services"))
def test_service_matches_containerd(name: str) -> None:
    theirs, ours = _theirs(), _our_index()
    assert name in ours.services, f"service {name} is missing from our protos"
    assert _service_signature(ours.services[name]) == _service_signature(theirs.services[name])


def test_we_define_nothing_in_containerd_packages_that_containerd_lacks() -> None:
    theirs, ours = _theirs(), _our_index()
    assert sorted(ours.names() - theirs.names()) == []


def test_we_use_only_containerd_packages_that_containerd_has() -> None:
    theirs, ours = _theirs(), _our_index()
    ours_containerd = {p for p in ours.packages if _is_containerd_package(p)}
    assert sorted(ours_containerd - theirs.packages) == []
