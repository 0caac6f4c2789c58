"""proto/runtime/v1/api.proto is the CRI's wire format as Kubernetes 1.26 defines it.

The upstream file (k8s.io/cri-api v0.26 `pkg/apis/runtime/v1/api.proto`) is not on this
machine, so its facts were read into `cri_v1_26.txt`: every service with its methods (and
which stream), every enum with its values, every message (nested ones and map entries too)
with each field's name, number and type. Our compiled descriptors must hold exactly those,
nothing missing, nothing extra, nothing renumbered.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from supervisor.api.runtime.v1 import api_pb2

FACTS = Path(__file__).with_name("cri_v1_26.txt")
PACKAGE = "runtime.v1"
Field = descriptor_pb2.FieldDescriptorProto


@functools.cache
def upstream() -> dict[tuple[str, str], str]:
    """(kind, name) -> the rest of the line, from the facts file."""
    out: dict[tuple[str, str], str] = {}
    for line in FACTS.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        kind, name, *rest = line.split(" ", 2)
        out[(kind, name)] = rest[0] if rest else ""
    return out


def _type(field: Field) -> str:
    name = field.type_name.removeprefix(f".{PACKAGE}.") if field.type_name else ""
    kind = name or Field.Type.Name(field.type).removeprefix("TYPE_").lower()
    return ("repeated+" if field.label == Field.LABEL_REPEATED else "") + kind


def _ours() -> dict[tuple[str, str], str]:
    """The same lines, made from our generated module's descriptor."""
    file = descriptor_pb2.FileDescriptorProto()
    api_pb2.DESCRIPTOR.CopyToProto(file)
    assert file.package == PACKAGE
    out: dict[tuple[str, str], str] = {}

    def enum(prefix: str, e: descriptor_pb2.EnumDescriptorProto) -> None:
        out[("enum", prefix + e.name)] = " ".join(f"{v.name}={v.number}" for v in e.value)

    def message(prefix: str, m: descriptor_pb2.DescriptorProto) -> None:
        name = prefix + m.name
        out[("message", name)] = " ".join(f"{f.name}={f.number}:{_type(f)}" for f in m.field)
        for e in m.enum_type:
            enum(f"{name}.", e)
        for n in m.nested_type:
            message(f"{name}.", n)

    def method(m: descriptor_pb2.MethodDescriptorProto) -> str:
        into = ("stream+" if m.client_streaming else "") + m.input_type.split(".")[-1]
        back = ("stream+" if m.server_streaming else "") + m.output_type.split(".")[-1]
        return f"{m.name}({into})->{back}"

    for service in file.service:
        out[("service", service.name)] = " ".join(method(m) for m in service.method)
    for e in file.enum_type:
        enum("", e)
    for m in file.message_type:
        message("", m)
    return out


def test_facts_cover_the_whole_api() -> None:
    kinds = [kind for kind, _ in upstream()]
    assert kinds.count("service") == 2
    assert kinds.count("message") > 150
    assert kinds.count("enum") >= 8


@pytest.mark.parametrize(("kind", "name"), sorted(upstream()))
def test_type_matches_kubernetes_1_26(kind: str, name: str) -> None:
    ours = _ours()
    assert (kind, name) in ours, f"{kind} {name} is missing from proto/runtime/v1/api.proto"
    assert ours[(kind, name)] == upstream()[(kind, name)]


def test_we_define_nothing_kubernetes_lacks() -> None:
    assert sorted(set(_ours()) - set(upstream())) == []


def test_version_response_round_trips_with_its_field_numbers() -> None:
    response = api_pb2.VersionResponse(version="0.1.0", runtime_name="ctrd")
    # field 2 (runtime_name), length-delimited: tag 0x12
    assert b"\x12\x04ctrd" in response.SerializeToString()
    assert api_pb2.VersionResponse.FromString(response.SerializeToString()) == response
