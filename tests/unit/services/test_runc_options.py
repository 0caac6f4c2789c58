"""Which runtime binary and state root a task gets from `containerd.runc.v1.Options`."""

from __future__ import annotations

from google.protobuf import any_pb2

from supervisor.api.containerd.runc.options import oci_pb2
from supervisor.services.tasks import _runc_options


def packed(**fields: str) -> any_pb2.Any:
    value = oci_pb2.Options(**fields).SerializeToString()  # type: ignore[arg-type]
    return any_pb2.Any(type_url="containerd.runc.v1.Options", value=value)


def test_dockerd_options_name_the_binary_and_the_root():
    options = packed(binary_name="runc", root="/run/docker-exec/runtime-runc")
    assert _runc_options(options, options) == ("runc", "/run/docker-exec/runtime-runc")


def test_the_task_options_come_first_and_the_container_fills_in():
    task = packed(binary_name="crun")
    container = packed(binary_name="runc", root="/r")
    assert _runc_options(task, container) == ("crun", "/r")


def test_no_options_or_other_types_mean_the_defaults():
    other = any_pb2.Any(type_url="containerd.linux.runc.RuncOptions", value=b"\n\x04crun")
    assert _runc_options(None, other, any_pb2.Any()) == ("", "")
