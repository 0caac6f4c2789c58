"""Every event and every container shows in ctrctl, whoever made it and whatever types it holds.

One daemon's journal gets events from the real `ctr` (runc v2 options, empty or with a binary;
`runtimeoptions.v1.Options` for another runtime), the real dockerd (`containerd.runc.v1.Options`
with its runc root, in the `moby` namespace), ctrctl, a Python client (containerd's legacy
`containerd.linux.runc.RuncOptions`), and containerd's own `publish` command (a made-up type,
and a known type whose bytes do not parse). `ctrctl events --since --until` must print all of
them and exit 0; `ctrctl inspect` must show containers made by each.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import any_pb2

from supervisor.api.containerd.linux.runc import runc_pb2
from supervisor.api.containerd.services.containers.v1 import containers_pb2, containers_pb2_grpc
from supervisor.api.ctrd.services.events.v1 import log_pb2, log_pb2_grpc
from tests.conftest import Ctrd, require_binary
from tests.integration.test_tasks import pull, run
from tests.support.dockerd import Dockerd, running

pytestmark = pytest.mark.integration

MADE_UP = "example.com/made.up.Event"
NONE = ("--network", "none")


@pytest.fixture
def dockerd(ctrd: Ctrd, short_tmp: Path) -> Iterator[Dockerd]:
    with running(short_tmp / "docker", ctrd.address) as engine:
        yield engine


def ctrctl(ctrd: Ctrd, *args: str, ns: str = "default") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ctl", "--address", ctrd.address, "--namespace", ns, *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def publish(ctrd: Ctrd, topic: str, event: any_pb2.Any) -> None:
    """containerd's own `publish` command (what shims use), its Any read from stdin."""
    subprocess.run(
        [require_binary("containerd"), "--address", ctrd.address, "publish",
         "--namespace", "default", "--topic", topic],
        input=event.SerializeToString(), check=True, capture_output=True, timeout=30,
    )  # fmt: skip


def create_with_stub(ctrd: Ctrd, cid: str, spec: any_pb2.Any) -> None:
    """A container as a client of the legacy runtime makes one, with an extension of a type
    no one here knows."""
    options = runc_pb2.RuncOptions(runtime="runc", runtime_root="/run/legacy")
    container = containers_pb2.Container(
        id=cid,
        runtime=containers_pb2.Container.Runtime(
            name="io.containerd.runtime.v1.linux",
            options=any_pb2.Any(
                type_url="containerd.linux.runc.RuncOptions", value=options.SerializeToString()
            ),
        ),
        spec=spec,
        extensions={"made-up": any_pb2.Any(type_url=MADE_UP, value=b"\x01\x02")},
    )
    ctrd.stub(containers_pb2_grpc.ContainersStub).Create(
        containers_pb2.CreateContainerRequest(container=container),
        metadata=(("containerd-namespace", "default"),),
    )


def logged_count(ctrd: Ctrd, since: float, until: float) -> int:
    request = log_pb2.ReplayRequest()
    request.since.FromNanoseconds(int(since * 1e9))
    request.until.FromNanoseconds(int(until * 1e9))
    return sum(1 for _ in ctrd.stub(log_pb2_grpc.EventLogStub).Replay(request, timeout=30))


def create_events(lines: list[str], ns: str) -> dict[str, dict[str, object]]:
    """The /containers/create events of a namespace, by container id."""
    found = {}
    for line in lines:
        _, namespace, topic, body = line.split(" ", 3)
        if (namespace, topic) == (ns, "/containers/create"):
            event = json.loads(body)
            found[event["id"]] = event
    return found


def test_ctrctl_events_prints_every_event_whoever_made_it_and_whatever_its_type(
    ctrd, busybox_image, dockerd
):
    ref = pull(ctrd, busybox_image)
    since = time.time()
    run(ctrd, "--rm", ref, "by-ctr", "true")
    run(ctrd, "--rm", "--runc-binary", "runc", ref, "by-ctr-binary", "true")
    ctrd.ctr("containers", "create", "--runtime", "io.containerd.runc.v1",
             "--runtime-config-path", "/etc/made-up.toml", ref, "by-ctr-v1", "true")  # fmt: skip
    made = ctrctl(ctrd, "run", "-d", ref, "true")
    assert made.returncode == 0, made.stderr
    by_ctrctl = made.stdout.strip()
    dockerd.docker("run", "--rm", *NONE, "--name", "by-docker", "busybox", "true")
    create_with_stub(ctrd, "by-stub", any_pb2.Any())
    publish(ctrd, "/made/up", any_pb2.Any(type_url=MADE_UP, value=b"\x08\x01"))
    publish(ctrd, "/tasks/exit", any_pb2.Any(type_url="containerd.events.TaskExit", value=b"\xff"))
    until = time.time()

    shown = ctrctl(ctrd, "events", "-A", "--since", f"{since:.3f}", "--until", f"{until:.3f}")

    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert len(lines) == logged_count(ctrd, since, until), shown.stdout
    for line in lines:
        json.loads(line.split(" ", 3)[3])
    created = create_events(lines, "default")
    assert created["by-ctr"]["runtime"] == {
        "name": "io.containerd.runc.v2", "options": {"@type": "containerd.runc.v1.Options"},
    }  # fmt: skip
    assert created["by-ctr-binary"]["runtime"]["options"] == {
        "@type": "containerd.runc.v1.Options", "binaryName": "runc",
    }  # fmt: skip
    assert created["by-ctr-v1"]["runtime"] == {
        "name": "io.containerd.runc.v1",
        "options": {"@type": "runtimeoptions.v1.Options", "configPath": "/etc/made-up.toml"},
    }
    assert created[by_ctrctl]["runtime"]["options"]["@type"] == "containerd.runc.v1.Options"
    assert created["by-stub"]["runtime"]["options"] == {
        "@type": "containerd.linux.runc.RuncOptions", "runtime": "runc",
        "runtimeRoot": "/run/legacy",
    }  # fmt: skip
    [by_docker] = create_events(lines, "moby").values()
    assert by_docker["runtime"] == {
        "name": "io.containerd.runc.v2",
        "options": {"@type": "containerd.runc.v1.Options", "binaryName": "runc",
                    "root": str(dockerd.exec_root / "runtime-runc")},
    }  # fmt: skip
    bodies = {(line.split(" ", 3)[2], line.split(" ", 3)[3]) for line in lines}
    assert ("/made/up", json.dumps({"type_url": MADE_UP, "value": "CAE="})) in {
        (topic, json.dumps(json.loads(body))) for topic, body in bodies
    }
    assert any(
        topic == "/tasks/exit" and json.loads(body) == {
            "type_url": "containerd.events.TaskExit", "value": "/w==",
        }
        for topic, body in bodies
    )  # fmt: skip
    ctrd.ctr("containers", "rm", "by-ctr-v1", "by-stub")
    assert ctrctl(ctrd, "rm", "-f", by_ctrctl).returncode == 0


def test_ctrctl_inspect_shows_containers_of_ctr_dockerd_and_of_unknown_types(
    ctrd, busybox_image, dockerd
):
    ref = pull(ctrd, busybox_image)
    ctrd.ctr("containers", "create", ref, "by-ctr", "true")
    create_with_stub(ctrd, "by-stub", any_pb2.Any(type_url=MADE_UP, value=b"\xff\x00"))
    docker_id = dockerd.docker("run", "-d", *NONE, "busybox", "sleep", "1000").stdout.strip()

    shown = {
        "by-ctr": ctrctl(ctrd, "inspect", "by-ctr"),
        "by-stub": ctrctl(ctrd, "inspect", "by-stub"),
        "by-docker": ctrctl(ctrd, "inspect", docker_id, ns="moby"),
    }

    assert {name: out.returncode for name, out in shown.items()} == dict.fromkeys(shown, 0), {
        name: out.stderr for name, out in shown.items()
    }
    [info] = json.loads(shown["by-ctr"].stdout)
    assert info["spec"]["process"]["args"] == ["true"]
    assert info["runtime"] == "io.containerd.runc.v2"
    assert info["runtimeOptions"] == {"@type": "containerd.runc.v1.Options"}
    [info] = json.loads(shown["by-stub"].stdout)
    assert info["spec"] == {"type_url": MADE_UP, "value": "/wA="}
    assert info["extensions"] == {"made-up": {"type_url": MADE_UP, "value": "AQI="}}
    assert info["runtimeOptions"]["@type"] == "containerd.linux.runc.RuncOptions"
    # ps lists a container whose spec is no OCI spec too (its command left blank).
    listed = ctrctl(ctrd, "ps", "-a", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    rows = {row["id"]: row for row in json.loads(listed.stdout)}
    assert (rows["by-stub"]["command"], rows["by-ctr"]["command"]) == ("", "true")
    [info] = json.loads(shown["by-docker"].stdout)
    assert info["spec"]["process"]["args"] == ["sleep", "1000"]
    assert info["runtimeOptions"]["root"] == str(dockerd.exec_root / "runtime-runc")
    assert info["state"]["status"] == "running"
    dockerd.docker("rm", "-f", docker_id)
    ctrd.ctr("containers", "rm", "by-ctr", "by-stub")
