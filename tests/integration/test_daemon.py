"""The daemon as a whole: start, stop, socket, lock, version and introspection, via real ctr."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2

from supervisor.api.containerd.services.images.v1 import images_pb2, images_pb2_grpc
from supervisor.api.containerd.services.introspection.v1 import (
    introspection_pb2,
    introspection_pb2_grpc,
)
from supervisor.api.containerd.services.tasks.v1 import tasks_pb2, tasks_pb2_grpc

pytestmark = pytest.mark.integration


def test_ctr_version_shows_our_server_and_a_persistent_uuid(ctrd):
    first = ctrd.ctr("version").stdout
    assert "Server:" in first
    assert "Version:  0.1.0" in first
    uuid = first.split("UUID:")[1].split()[0]
    assert len(uuid) == 36
    ctrd.restart()
    assert f"UUID: {uuid}" in ctrd.ctr("version").stdout


def test_ctr_plugins_ls_lists_our_services(ctrd):
    out = ctrd.ctr("plugins", "ls").stdout
    rows = [line.split() for line in out.splitlines()[1:]]
    assert ["io.containerd.grpc.v1", "namespaces", "-", "ok"] in rows
    assert ["io.containerd.metadata.v1", "sqlite", "-", "ok"] in rows
    assert {r[1] for r in rows if r[0] == "io.containerd.grpc.v1"} >= {
        "containers", "content", "diff", "events", "images", "introspection",
        "leases", "namespaces", "snapshots", "tasks", "version",
    }  # fmt: skip


def test_plugins_filter_selects_by_type(ctrd):
    stub = ctrd.stub(introspection_pb2_grpc.IntrospectionStub)
    answer = stub.Plugins(
        introspection_pb2.PluginsRequest(filters=["type==io.containerd.metadata.v1"])
    )
    assert [p.id for p in answer.plugins] == ["sqlite"]
    with pytest.raises(grpc.RpcError) as e:
        stub.Plugins(introspection_pb2.PluginsRequest(filters=["type=="]))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_plugins_export_the_directories_of_the_stores(ctrd):
    stub = ctrd.stub(introspection_pb2_grpc.IntrospectionStub)
    exports = {
        (p.type, p.id): dict(p.exports)
        for p in stub.Plugins(introspection_pb2.PluginsRequest()).plugins
        if p.exports
    }
    assert exports == {
        ("io.containerd.content.v1", "content"): {"root": str(ctrd.root / "content")},
        ("io.containerd.snapshotter.v1", "native"): {
            "root": str(ctrd.root / "snapshots" / "native")
        },
        ("io.containerd.snapshotter.v1", "overlayfs"): {
            "root": str(ctrd.root / "snapshots" / "overlayfs")
        },
        ("io.containerd.runtime.v2", "task"): {"root": str(ctrd.root), "state": str(ctrd.state)},
    }
    # The stores are built at their first use, or by the collector's first run at the latest.
    stores = [ctrd.root / "content" / "blobs", ctrd.root / "snapshots" / "overlayfs"]
    deadline = time.monotonic() + 5
    while not all(d.is_dir() for d in stores) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [d for d in stores if not d.is_dir()] == []


def test_socket_is_mode_0660(ctrd):
    mode = os.stat(ctrd.address).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o660


def test_sigterm_stops_cleanly_and_removes_the_socket(ctrd):
    assert ctrd.stop(signal.SIGTERM) == 0
    assert not os.path.exists(ctrd.address)
    ctrd.start()
    assert ctrd.stop(signal.SIGINT) == 0


def test_sigterm_as_soon_as_it_answers_still_stops_cleanly_zygote_and_all(short_tmp):
    import time

    address = str(short_tmp / "s.sock")
    argv = [sys.executable, "-m", "supervisor", "--root", str(short_tmp / "root"),
            "--state", str(short_tmp / "state"), "--address", address]  # fmt: skip
    for _ in range(3):
        daemon = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket(socket.AF_UNIX) as probe:
                try:
                    probe.connect(address)
                    break
                except OSError:
                    time.sleep(0.002)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(30) == 0  # stopped as it always does, not killed by the signal
    time.sleep(0.5)  # a zygote it left would be serving its socket still
    assert not (short_tmp / "state" / "zygote.sock").exists()
    assert not (short_tmp / "state" / "zygote.pid").exists()


def test_a_second_daemon_on_the_same_root_refuses_to_start(ctrd, short_tmp):
    other = subprocess.run(
        [sys.executable, "-m", "supervisor", "--root", str(ctrd.root),
         "--state", str(short_tmp / "state2"), "--address", str(short_tmp / "other.sock")],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert other.returncode == 1
    assert f'root "{ctrd.root}" is in use by another ctrd (pid {ctrd.proc.pid})' in other.stderr
    # The first daemon is unharmed.
    ctrd.ctr("version")


def test_a_daemon_on_a_socket_that_is_served_refuses_to_start(ctrd, short_tmp):
    other = subprocess.run(
        [sys.executable, "-m", "supervisor", "--root", str(short_tmp / "root2"),
         "--state", str(short_tmp / "state2"), "--address", ctrd.address],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert other.returncode == 1
    assert "is in use by another process" in other.stderr
    ctrd.ctr("version")


def test_a_stale_socket_file_is_replaced(short_tmp, make_ctrd):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(short_tmp / "ctrd.sock"))
    stale.close()  # the file stays, nobody listens: what a SIGKILLed daemon leaves
    daemon = make_ctrd()
    daemon.start()
    daemon.ctr("version")
    assert daemon.stop() == 0


def test_a_bad_config_file_is_a_clear_error(short_tmp):
    config = short_tmp / "config.toml"
    config.write_text('root = "/tmp/x"\n[grpc]\nadress = "/tmp/typo.sock"\n')
    result = subprocess.run(
        [sys.executable, "-m", "supervisor", "--config", str(config)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert "unknown key(s) adress" in result.stderr


def test_config_file_sets_root_state_and_address(short_tmp, make_ctrd):
    config = short_tmp / "config.toml"
    config.write_text(
        f'version = 2\nroot = "{short_tmp}/cfgroot"\nstate = "{short_tmp}/cfgstate"\n'
        f'[grpc]\naddress = "{short_tmp}/cfg.sock"\n[debug]\nlevel = "debug"\nformat = "json"\n'
    )
    daemon = make_ctrd()
    daemon.command = lambda: [sys.executable, "-m", "supervisor", "--config", str(config)]
    daemon.address = f"{short_tmp}/cfg.sock"
    daemon.start()
    assert (short_tmp / "cfgroot" / "meta.db").exists()
    assert (short_tmp / "cfgstate").is_dir()
    daemon.ctr("version")
    assert daemon.stop() == 0


def test_every_rpc_is_logged_once_with_method_namespace_code_and_duration(ctrd):
    ctrd.ctr("namespaces", "ls", ns="logged")
    ctrd.ctr("namespaces", "create", "bad!name", check=False)

    def rpcs_logged() -> list[dict[str, object]]:
        lines = [json.loads(line) for line in ctrd.log().splitlines() if line.startswith("{")]
        return [line for line in lines if line["event"] == "rpc"]

    # A failed call's line is written as its status goes out: it may follow ctr's exit.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        rpcs = rpcs_logged()
        if any(str(r["method"]).endswith("Namespaces/Create") for r in rpcs):
            break
        time.sleep(0.02)
    listed = [r for r in rpcs if r["method"].endswith("Namespaces/List")]
    assert len(listed) == 1
    assert listed[0]["ns"] == "logged"
    assert listed[0]["code"] == "OK"
    assert isinstance(listed[0]["ms"], float | int)
    failed = [r for r in rpcs if r["method"].endswith("Namespaces/Create")]
    assert failed[0]["code"] == "INVALID_ARGUMENT"
    assert failed[0]["level"] == "info"
    assert "bad!name" in failed[0]["error"]


def test_tasks_of_containers_that_do_not_exist_are_not_found(ctrd, md):
    stub = ctrd.stub(tasks_pb2_grpc.TasksStub)
    assert list(stub.List(tasks_pb2.ListTasksRequest(), metadata=md("default")).tasks) == []
    with pytest.raises(grpc.RpcError) as e:
        stub.Get(tasks_pb2.GetRequest(container_id="c1"), metadata=md("default"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        stub.Create(tasks_pb2.CreateTaskRequest(container_id="c1"), metadata=md("default"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert 'container "c1"' in e.value.details()


def test_a_namespaced_call_without_a_namespace_fails_as_containerds_does(ctrd, md):
    stub = ctrd.stub(images_pb2_grpc.ImagesStub)
    with pytest.raises(grpc.RpcError) as e:
        stub.List(images_pb2.ListImagesRequest())
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert e.value.details() == "namespace is required: failed precondition"
    with pytest.raises(grpc.RpcError) as e:
        stub.List(images_pb2.ListImagesRequest(), metadata=md("no/slash"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_ctrctl_version_prints_the_server_version(ctrd):
    result = subprocess.run(
        [sys.executable, "-m", "ctl", "--address", ctrd.address, "version"],
        capture_output=True, text=True, timeout=30, cwd=Path(__file__).parent,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Server:" in result.stdout
    assert "Version:  0.1.0" in result.stdout


def test_ctrctl_says_clearly_when_ctrd_is_not_running(short_tmp):
    result = subprocess.run(
        [sys.executable, "-m", "ctl", "--address", str(short_tmp / "none.sock"), "version"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 125
    assert f"cannot reach ctrd at {short_tmp}/none.sock" in result.stderr
    assert "Traceback" not in result.stderr


def test_version_rpc_reports_the_commit_it_runs_from(ctrd):
    from supervisor.api.containerd.services.version.v1 import version_pb2_grpc

    repo = Path(__file__).resolve().parents[2]
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=repo, check=True
    ).stdout.strip()
    answer = ctrd.stub(version_pb2_grpc.VersionStub).Version(empty_pb2.Empty())
    assert answer.version == "0.1.0"
    assert answer.revision == head


def test_methods_the_daemon_does_not_have_are_unimplemented_however_many(ctrd):
    # Unknown names are answered, never remembered: a client asking for made-up methods
    # gets UNIMPLEMENTED each time and the daemon goes on serving.
    for n in range(200):
        call = ctrd.channel.unary_unary(f"/containerd.services.nope.v1.Nope/Call{n}")
        with pytest.raises(grpc.RpcError) as raised:
            call(b"", timeout=5)
        assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "Server:" in ctrd.ctr("version").stdout
