"""`ctrctl events`: docker's time formats and filters; every event shows, whatever its type."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import any_pb2

from ctl.events import BadTime, build_filters, parse_time
from supervisor.api.containerd.events import container_pb2
from supervisor.api.containerd.linux.runc import runc_pb2
from supervisor.api.containerd.runc.options import oci_pb2
from supervisor.api.containerd.services.events.v1 import events_pb2
from supervisor.api.ctrd.services.events.v1 import log_pb2

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-28", 1795824000 * 10**9),
        ("2026-11-28T10:00:00Z", (1795824000 + 36000) * 10**9),
        ("2026-11-28T10:00:00+01:00", (1795824000 + 32400) * 10**9),
        ("2026-11-28T10:00:00.5Z", (1795824000 + 36000) * 10**9 + 500_000_000),
        ("1795830000", 1795830000 * 10**9),
        ("1795830000.000000001", 1795830000 * 10**9 + 1),
        ("10m", (10_000 - 600) * 10**9),
        ("1h30m", (10_000 - 5400) * 10**9),
        ("1.5s", int((10_000 - 1.5) * 10**9)),
    ],
)
def test_times_as_docker_takes_them(text, expected):
    assert parse_time(text, now=10_000.0) == expected


@pytest.mark.parametrize("text", ["yesterday", "10x", "", "1h30"])
def test_what_is_not_a_time_is_refused(text):
    with pytest.raises(BadTime):
        parse_time(text)


def test_filters_and_keys_or_values():
    assert build_filters(["container=a", "container=b", "type=/tasks/exit"], "ns") == [
        'event.container_id=="a",namespace=="ns",topic=="/tasks/exit"',
        'event.container_id=="b",namespace=="ns",topic=="/tasks/exit"',
    ]
    assert build_filters(["type=network", "type=volume"], None) == [
        'topic~="^/networks/"',
        'topic~="^/volumes/"',
    ]
    assert build_filters([], None) == []
    assert build_filters(["topic~=/tasks/"], None) == ["topic~=/tasks/"]
    assert build_filters(["topic~=/tasks/"], "ns") == ['namespace=="ns",topic~=/tasks/']
    with pytest.raises(ValueError, match="key=value"):
        build_filters(["nonsense"], None)


def format_in_a_fresh_client(*envelopes) -> list[str]:
    """format_event's lines, in a process that imported nothing but ctl.events first (as
    `ctrctl events` does), so no message module a test happened to import can help it."""
    code = (
        "import sys; from ctl.events import format_event; "
        "from supervisor.api.ctrd.services.events.v1.log_pb2 import LoggedEvent; "
        "events = [LoggedEvent.FromString(bytes.fromhex(h)) for h in sys.argv[1:]]; "
        "print('\\n'.join(format_event(e.envelope) for e in events))"
    )
    hexed = [log_pb2.LoggedEvent(envelope=e).SerializeToString().hex() for e in envelopes]
    out = subprocess.run(
        [sys.executable, "-c", code, *hexed], capture_output=True, text=True, cwd=REPO
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def envelope(topic: str, event: any_pb2.Any) -> events_pb2.Envelope:
    made = events_pb2.Envelope(namespace="default", topic=topic, event=event)
    made.timestamp.FromNanoseconds(1795824000 * 10**9 + 5)
    return made


def test_a_container_made_by_ctr_shows_with_its_runtime_options_decoded():
    options = oci_pb2.Options(binary_name="runc", root="/run/docker/runtime-runc")
    create = container_pb2.ContainerCreate(
        id="c1", image="busybox",
        runtime=container_pb2.ContainerCreate.Runtime(
            name="io.containerd.runc.v2",
            options=any_pb2.Any(type_url="containerd.runc.v1.Options",
                                value=options.SerializeToString()),
        ),
    )  # fmt: skip
    packed = any_pb2.Any(
        type_url="containerd.events.ContainerCreate", value=create.SerializeToString()
    )
    [line] = format_in_a_fresh_client(envelope("/containers/create", packed))
    when, ns, topic, body = line.split(" ", 3)
    assert (when, ns, topic) == ("2026-11-28T00:00:00.000000005Z", "default", "/containers/create")
    assert json.loads(body) == {
        "id": "c1", "image": "busybox",
        "runtime": {"name": "io.containerd.runc.v2", "options": {
            "@type": "containerd.runc.v1.Options", "binaryName": "runc",
            "root": "/run/docker/runtime-runc"}},
    }  # fmt: skip


def test_events_of_unknown_or_broken_types_show_raw_and_the_others_still_show():
    lines = format_in_a_fresh_client(
        envelope("/made/up", any_pb2.Any(type_url="example.com/made.Up", value=b"\x01\x02")),
        envelope("/tasks/exit", any_pb2.Any(type_url="containerd.events.TaskExit", value=b"\xff")),
        envelope("/legacy", any_pb2.Any(
            type_url="containerd.linux.runc.RuncOptions",
            value=runc_pb2.RuncOptions(runtime_root="/r").SerializeToString())),
    )  # fmt: skip
    bodies = [json.loads(line.split(" ", 3)[3]) for line in lines]
    assert bodies == [
        {"type_url": "example.com/made.Up", "value": "AQI="},
        {"type_url": "containerd.events.TaskExit", "value": "/w=="},
        {"runtimeRoot": "/r"},
    ]
