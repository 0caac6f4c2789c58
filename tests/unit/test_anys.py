"""supervisor.anys: every Any decodes to JSON, or shows raw; nothing raises."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import any_pb2, descriptor_pool, timestamp_pb2
from hypothesis import given
from hypothesis import strategies as st

from supervisor import anys
from supervisor.api.containerd.events import container_pb2 as events
from supervisor.api.containerd.linux.runc import runc_pb2
from supervisor.api.containerd.runc.options import oci_pb2
from supervisor.api.containerd.services.containers.v1 import containers_pb2

REPO = Path(__file__).resolve().parents[2]
SPEC_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"


def pack(msg, url: str | None = None) -> any_pb2.Any:
    return any_pb2.Any(type_url=url or msg.DESCRIPTOR.full_name, value=msg.SerializeToString())


def our_message_names() -> list[str]:
    """Every message type of our API (nested ones included, map entries not)."""
    anys._import_all()
    names = []
    for path in sorted((REPO / "supervisor" / "api").rglob("*_pb2.py")):
        proto = path.relative_to(REPO / "supervisor" / "api").with_suffix("").as_posix()
        file = descriptor_pool.Default().FindFileByName(proto.removesuffix("_pb2") + ".proto")
        pending = list(file.message_types_by_name.values())
        while pending:
            desc = pending.pop()
            if not desc.GetOptions().map_entry:
                names.append(desc.full_name)
            pending.extend(desc.nested_types)
    return sorted(names)


def test_every_message_of_our_api_resolves_in_a_process_that_imported_none_of_them():
    names = our_message_names()
    assert {"containerd.runc.v1.Options", "containerd.linux.runc.RuncOptions",
            "containerd.linux.runc.CreateOptions", "runtimeoptions.v1.Options",
            "io.containerd.cgroups.v1.Metrics", "containerd.events.TaskExit",
            "ctrd.services.events.v1.LoggedEvent"} <= set(names)  # fmt: skip
    code = (
        "import json, sys; from supervisor import anys; names = json.load(sys.stdin); "
        "print(json.dumps([n for n in names if anys.message_class(n) is None]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], input=json.dumps(names), capture_output=True, text=True,
        check=True, cwd=REPO,
    )  # fmt: skip
    assert json.loads(out.stdout) == []


def test_every_message_of_our_api_is_found_among_its_packages_modules():
    """So that a type is found by importing a few modules, not all of them."""
    pool = descriptor_pool.Default()
    for name in our_message_names():
        desc = pool.FindMessageTypeByName(name)
        package = desc.file.package
        dirs = anys._PACKAGE_DIRS.get(package, (package.replace(".", "/"),))
        assert Path(desc.file.name).parent.as_posix() in dirs, name


def test_every_message_of_our_api_shows_with_its_type():
    for name in our_message_names():
        packed = any_pb2.Any(type_url=name, value=b"")
        assert anys.to_json(packed) == {"@type": name}, name


def test_the_events_unpack_finds_types_its_process_never_imported():
    """The daemon's filters read event fields through it: a type published by someone else
    must decode whatever modules the daemon had loaded."""
    options = runc_pb2.RuncOptions(runtime="runc", runtime_root="/r")
    code = (
        "import sys; from google.protobuf import any_pb2; from supervisor.events import unpack; "
        "got = unpack(any_pb2.Any(type_url='containerd.linux.runc.RuncOptions', "
        "value=sys.stdin.buffer.read())); print(got is not None and got.runtime_root)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], input=options.SerializeToString(), capture_output=True,
        check=True, cwd=REPO,
    )  # fmt: skip
    assert out.stdout.decode().strip() == "/r"


def test_a_nested_any_is_decoded_with_its_type():
    create = events.ContainerCreate(
        id="c1",
        runtime=events.ContainerCreate.Runtime(
            name="io.containerd.runc.v2", options=pack(oci_pb2.Options(binary_name="runc"))
        ),
    )
    assert anys.content(pack(create)) == {
        "id": "c1",
        "runtime": {
            "name": "io.containerd.runc.v2",
            "options": {"@type": "containerd.runc.v1.Options", "binaryName": "runc"},
        },
    }


def test_an_unknown_nested_any_shows_raw_as_ctr_shows_one():
    create = events.ContainerCreate(
        id="c1",
        runtime=events.ContainerCreate.Runtime(
            name="x", options=any_pb2.Any(type_url="example.com/made.Up", value=b"\x00\xff")
        ),
    )
    shown = anys.to_json(pack(create, "type.googleapis.com/containerd.events.ContainerCreate"))
    assert shown == {
        "@type": "type.googleapis.com/containerd.events.ContainerCreate",
        "id": "c1",
        "runtime": {"name": "x", "options": {"type_url": "example.com/made.Up", "value": "AP8="}},
    }


def test_a_containers_spec_extensions_and_options_all_decode_whatever_their_type():
    container = containers_pb2.Container(
        id="c1",
        runtime=containers_pb2.Container.Runtime(
            name="io.containerd.runtime.v1.linux",
            options=pack(runc_pb2.RuncOptions(runtime="runc", systemd_cgroup=True)),
        ),
        spec=any_pb2.Any(type_url=SPEC_URL, value=b'{"ociVersion":"1.0.2","process":{}}'),
        extensions={
            "known": pack(runc_pb2.CreateOptions(io_uid=7)),
            "made-up": any_pb2.Any(type_url="made.Up", value=b"\x01"),
            "empty": any_pb2.Any(),
        },
    )
    shown = anys.message_to_json(container)
    assert shown["runtime"]["options"] == {
        "@type": "containerd.linux.runc.RuncOptions", "runtime": "runc", "systemdCgroup": True,
    }  # fmt: skip
    assert shown["spec"] == {"@type": SPEC_URL, "ociVersion": "1.0.2", "process": {}}
    assert shown["extensions"] == {
        "known": {"@type": "containerd.linux.runc.CreateOptions", "ioUid": 7},
        "made-up": {"type_url": "made.Up", "value": "AQ=="},
        "empty": {},
    }
    assert anys.content(container.spec) == {"ociVersion": "1.0.2", "process": {}}


def test_an_unknown_type_shows_raw():
    packed = any_pb2.Any(type_url="example.com/made.Up", value=b"hello")
    raw = {"type_url": "example.com/made.Up", "value": base64.b64encode(b"hello").decode()}
    assert anys.content(packed) == raw
    assert anys.to_json(packed) == raw
    assert anys.unpack(packed) is None


@pytest.mark.parametrize(
    ("url", "value"),
    [
        ("containerd.events.ContainerCreate", b"\xff\xff\xff"),  # not a message's bytes
        ("containerd.events.ContainerCreate", b"\x0a\x02\xc3\x28"),  # id: invalid UTF-8
        (SPEC_URL, b"{not json"),
        (SPEC_URL, b"\xff"),
    ],
)
def test_bytes_that_do_not_parse_show_raw(url, value):
    packed = any_pb2.Any(type_url=url, value=value)
    raw = {"type_url": url, "value": base64.b64encode(value).decode()}
    assert anys.content(packed) == raw
    assert anys.to_json(packed) == raw


def test_a_timestamp_out_of_pythons_range_shows_raw():
    out_of_range = timestamp_pb2.Timestamp(seconds=2**62)
    packed = pack(out_of_range, "type.googleapis.com/google.protobuf.Timestamp")
    assert anys.to_json(packed) == anys.raw(packed)


def test_well_known_types_show_under_value_as_protobuf_shows_them():
    packed = pack(
        timestamp_pb2.Timestamp(seconds=5), "type.googleapis.com/google.protobuf.Timestamp"
    )
    assert anys.to_json(packed) == {
        "@type": "type.googleapis.com/google.protobuf.Timestamp", "value": "1970-01-01T00:00:05Z",
    }  # fmt: skip


def test_anys_nested_deeper_than_the_limit_show_raw_below_it():
    packed = pack(oci_pb2.Options(root="/r"))
    for _ in range(anys.MAX_DEPTH + 5):
        packed = pack(packed, "google.protobuf.Any")
    shown = anys.to_json(packed)
    for _ in range(anys.MAX_DEPTH):
        assert shown["@type"] == "google.protobuf.Any"
        shown = shown["value"]
    assert set(shown) == {"type_url", "value"}


KNOWN_URLS = ["containerd.events.ContainerCreate", "containerd.runc.v1.Options", SPEC_URL,
              "google.protobuf.Any", "containerd.services.containers.v1.Container"]  # fmt: skip


@given(url=st.one_of(st.sampled_from(KNOWN_URLS), st.text(max_size=40)), value=st.binary())
def test_nothing_raises_and_everything_is_json(url, value):
    packed = any_pb2.Any(type_url=url, value=value)
    json.dumps(anys.content(packed))
    json.dumps(anys.to_json(packed))
