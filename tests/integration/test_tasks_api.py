"""Containers and tasks through the gRPC API: containerd's integration/client cases (§C).

The cases that apply on a Linux host without CRIU, named after containerd's tests. Containers
come from the busybox image (`ctr containers create` writes the record, spec and snapshot);
everything else goes through the Tasks, Containers, Snapshots and Events stubs in namespace
`testing`. The `api` fixture kills and deletes whatever a test left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import any_pb2

from supervisor.api.containerd.runc.options import oci_pb2
from supervisor.api.containerd.services.containers.v1 import containers_pb2
from supervisor.api.containerd.services.tasks.v1 import tasks_pb2 as pb
from supervisor.api.containerd.types.task import task_pb2 as types_pb
from tests.support.tasks import (
    Api,
    Subscription,
    cgroups_of,
    code_of,
    exit_filter,
    logging_runc,
    pid_gone,
    wait_for,
)

pytestmark = pytest.mark.integration

NS = "testing"
NOT_FOUND = grpc.StatusCode.NOT_FOUND
UNKNOWN = grpc.StatusCode.UNKNOWN
SLEEP = ("sleep", "1000")
RESOURCES_URL = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"


@pytest.fixture
def api(ctrd, busybox_image) -> Iterator[Api]:
    with Api(ctrd, NS, busybox_image.ref) as made:
        yield made


def run_to_exit(api: Api, cid: str, *args: str, **spec_kw) -> tuple[str, pb.DeleteResponse]:
    """Run `args` with stdout and stderr to a log file; its output and the task's Delete."""
    api.container(cid, *args, **spec_kw)
    uri, path = api.log_file(f"{cid}.log")
    api.create(cid, stdout=uri, stderr=uri)
    api.start(cid)
    api.wait(cid)
    deleted = api.delete(cid)
    return path.read_text(), deleted


# --- start, output, wait, kill --------------------------------------------------------------------


def test_container_start_wait_before_start_gets_exit_status(api):
    api.container("start", "sh", "-c", "exit 7")
    created = api.create("start")
    assert created.pid >= 1
    waiting = api.wait_later("start")
    time.sleep(0.2)  # the Wait is registered before Start
    assert api.start("start") == created.pid
    assert waiting.result().exit_status == 7
    assert api.delete("start").exit_status == 7


def test_container_output_through_a_fifo(api):
    api.container("out", "echo", "kingkoye")
    out = api.output("out-stdout")
    api.create("out", stdout=out.uri)
    out.start()
    api.start("out")
    assert api.wait("out").exit_status == 0
    assert out.text() == "kingkoye\n"
    api.delete("out")


def late_reader(fifo: Path, delay: float) -> tuple[threading.Thread, list[bytes]]:
    """A client's reading end of `fifo`, opened on a thread of its own after `delay` (ctr and
    docker open theirs on a goroutine, which may run late): what it reads, once it ends."""
    os.mkfifo(fifo, 0o600)
    received: list[bytes] = []

    def read() -> None:
        time.sleep(delay)
        with open(fifo, "rb") as f:  # blocks until the shim holds its end
            received.append(f.read())

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread, received


def unblock(fifo: Path) -> None:
    """Wake a reader still waiting to open `fifo` (it then reads an end of file)."""
    with contextlib.suppress(OSError):
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def test_output_waits_for_a_reader_that_opens_late(api):
    """A FIFO's contents go with its last open end: had the shim let go of its end at the exit
    before the client opened its own, the output would be lost."""
    api.container("late", "echo", "late-but-there")
    fifo = api.dir / "late-stdout"
    thread, received = late_reader(fifo, 0.3)
    try:
        api.create("late", stdout=str(fifo))
        api.start("late")
        assert api.wait("late").exit_status == 0
        thread.join(10)
        assert received == [b"late-but-there\n"]
    finally:
        unblock(fifo)
    api.delete("late")


def test_output_does_not_wait_long_for_a_reader_that_never_comes(api):
    api.container("noreader", "sh", "-c", "echo lost; exit 4")
    fifo = api.dir / "noreader-stdout"
    os.mkfifo(fifo, 0o600)
    started = time.monotonic()
    api.create("noreader", stdout=str(fifo))
    assert time.monotonic() - started < 5
    api.start("noreader")
    assert api.wait("noreader").exit_status == 4
    api.delete("noreader")


def test_container_output_to_a_file(api):
    output, deleted = run_to_exit(api, "outf", "echo", "kingkoye")
    assert (output, deleted.exit_status) == ("kingkoye\n", 0)


def test_container_wait_and_kill(api):
    api.container("wk", *SLEEP)
    api.create("wk")
    api.start("wk")
    # A Wait whose deadline passes (containerd: an already-cancelled context) is an error.
    assert code_of(lambda: api.wait("wk", timeout=0.3)) == grpc.StatusCode.DEADLINE_EXCEEDED
    waiting = api.wait_later("wk")
    api.kill("wk", signal.SIGKILL)
    assert waiting.result().exit_status == 128 + signal.SIGKILL
    assert code_of(lambda: api.kill("wk", signal.SIGKILL)) == NOT_FOUND
    api.delete("wk")


def test_wait_stopped_task_returns_the_same_status_at_once(api):
    api.container("ws", "sh", "-c", "exit 7")
    api.create("ws")
    api.start("ws")
    assert api.wait("ws").exit_status == 7
    time.sleep(0.3)
    began = time.monotonic()
    again = api.wait("ws", timeout=2)
    assert (again.exit_status, time.monotonic() - began < 1) == (7, True)
    api.delete("ws")


def test_container_exited_at_is_after_start(api):
    api.container("at", "true")
    api.create("at")
    before = time.time_ns()
    api.start("at")
    waited = api.wait("at")
    process = api.get("at")
    assert process.status == types_pb.STOPPED
    assert process.exited_at.ToNanoseconds() > before
    assert waited.exited_at.ToNanoseconds() > before
    assert api.delete("at").exited_at.ToNanoseconds() > before


def test_short_running_task_has_a_pid(api):
    api.container("short", "true")
    api.create("short")
    assert api.start("short") > 0
    api.wait("short")
    assert api.delete("short").pid > 0


def test_container_no_stdin(api):
    output, deleted = run_to_exit(api, "nostdin", "sh", "-c", "cat; echo done")
    assert (output, deleted.exit_status) == ("done\n", 0)


def test_container_hostname(api):
    def hostname(spec):
        spec["hostname"] = "myhostname"

    output, deleted = run_to_exit(api, "host", "hostname", edit=hostname)
    assert (output, deleted.exit_status) == ("myhostname\n", 0)


def test_shim_sock_length(ctrd, busybox_image):
    ns, cid = "n" * 76, "c" * 64
    with Api(ctrd, ns, busybox_image.ref) as long_api:
        output, deleted = run_to_exit(long_api, cid, "echo", "long")
    assert (output, deleted.exit_status) == ("long\n", 0)


# --- task states ----------------------------------------------------------------------------------


def test_task_states_and_refused_transitions(api):
    # Refused transitions are plain errors in containerd's shim: UNKNOWN, as there.
    api.container("st", *SLEEP)
    api.create("st")
    assert api.get("st").status == types_pb.CREATED
    pause = pb.PauseTaskRequest(container_id="st")
    assert code_of(lambda: api.tasks.Pause(pause, metadata=api.md)) == UNKNOWN
    api.start("st")
    assert api.get("st").status == types_pb.RUNNING
    assert code_of(lambda: api.start("st")) == UNKNOWN
    api.tasks.Pause(pause, metadata=api.md)
    assert api.get("st").status == types_pb.PAUSED
    api.tasks.Resume(pb.ResumeTaskRequest(container_id="st"), metadata=api.md)
    assert api.get("st").status == types_pb.RUNNING
    api.kill("st")
    api.wait("st")
    assert api.get("st").status == types_pb.STOPPED
    api.delete("st")
    assert code_of(lambda: api.get("st")) == NOT_FOUND


def test_delete_running_task_is_refused(api):
    api.container("drun", *SLEEP)
    api.create("drun")
    api.start("drun")
    assert code_of(lambda: api.delete("drun")) == UNKNOWN
    assert api.get("drun").status == types_pb.RUNNING


def test_task_force_delete(api):
    api.container("tfd", *SLEEP)
    api.create("tfd")
    api.start("tfd")
    assert code_of(lambda: api.delete("tfd")) == UNKNOWN
    # containerd's WithProcessKill: kill, wait, delete.
    api.kill("tfd")
    api.wait("tfd")
    assert api.delete("tfd").exit_status == 128 + signal.SIGKILL
    assert code_of(lambda: api.get("tfd")) == NOT_FOUND


def test_kill_container_deleted_by_runc(api, ctrd):
    api.container("byrunc", *SLEEP)
    api.create("byrunc")
    api.start("byrunc")
    waiting = api.wait_later("byrunc")
    runc_root = ctrd.state / "runc" / NS
    subprocess.run(
        ["runc", "--root", str(runc_root), "delete", "--force", "byrunc"],
        check=True, capture_output=True, timeout=10,
    )  # fmt: skip
    assert code_of(lambda: api.kill("byrunc", signal.SIGKILL)) == NOT_FOUND
    waiting.result(timeout=2)
    api.delete("byrunc")


def test_container_no_binary_exists_and_no_exit_event(api, ctrd):
    """TestContainerNoBinaryExists and TestRegressionIssue6429."""
    api.container("nobin", "nosuchbinary")
    with Subscription(ctrd, [exit_filter(NS)]) as exits:
        try:
            api.create("nobin")
        except grpc.RpcError:
            pass  # runc create fails: nothing to clean up
        else:
            with pytest.raises(grpc.RpcError):
                api.start("nobin")
            api.delete("nobin")
        assert code_of(lambda: api.get("nobin")) == NOT_FOUND
        assert not (ctrd.state / "tasks" / NS / "nobin").exists()
        time.sleep(3)
        assert exits.exits() == []
    api.remove("nobin")
    get = containers_pb2.GetContainerRequest(id="nobin")
    assert code_of(lambda: api.containers.Get(get, metadata=api.md)) == NOT_FOUND


def test_regression_issue_4769_one_exit_event(api, ctrd):
    api.container("once", "true")
    api.create("once")
    with Subscription(ctrd, [exit_filter(NS)]) as exits:
        api.start("once")
        api.wait("once")
        exits.wait(1)
        api.delete("once")
        time.sleep(3)
        assert [(e.container_id, e.id, e.exit_status) for e in exits.exits()] == [
            ("once", "once", 0)
        ]


# --- exec -----------------------------------------------------------------------------------------


def test_container_exec_exit_status(api):
    api.container("ex", *SLEEP)
    api.create("ex")
    api.start("ex")
    api.exec("ex", "six", "sh", "-c", "exit 6")
    waiting = api.wait_later("ex", "six")
    assert api.start("ex", "six") > 0
    assert waiting.result().exit_status == 6
    assert api.delete_process("ex", "six").exit_status == 6
    api.kill("ex")
    assert api.wait("ex").exit_status == 128 + signal.SIGKILL
    api.delete("ex")


def test_wait_stopped_process_returns_the_same_status_at_once(api):
    api.container("wsp", *SLEEP)
    api.create("wsp")
    api.start("wsp")
    api.exec("wsp", "six", "sh", "-c", "exit 6")
    api.start("wsp", "six")
    assert api.wait("wsp", "six").exit_status == 6
    time.sleep(0.3)
    began = time.monotonic()
    assert api.wait("wsp", "six", timeout=2).exit_status == 6
    assert time.monotonic() - began < 1
    assert api.delete_process("wsp", "six").exit_status == 6


def test_large_exec_args(api):
    api.container("large", *SLEEP)
    api.create("large")
    api.start("large")
    uri, path = api.log_file("large.log")
    api.exec("large", "echo", "echo", "a" * 20000, stdout=uri)
    api.start("large", "echo")
    assert api.wait("large", "echo").exit_status == 0
    api.delete_process("large", "echo")
    assert path.read_text() == "a" * 20000 + "\n"


def test_container_exec_no_binary_exists(api):
    api.container("exnb", *SLEEP)
    api.create("exnb")
    pid = api.start("exnb")
    api.exec("exnb", "nobin", "nosuchbinary")
    with pytest.raises(grpc.RpcError):
        api.start("exnb", "nobin")
    init = api.get("exnb")
    assert (init.status, init.pid) == (types_pb.RUNNING, pid)
    api.delete_process("exnb", "nobin")


def test_process_force_delete(api):
    api.container("pfd", *SLEEP)
    api.create("pfd")
    api.start("pfd")
    api.exec("pfd", "x", *SLEEP)
    api.start("pfd", "x")
    assert code_of(lambda: api.delete_process("pfd", "x")) == UNKNOWN
    api.kill("pfd", exec_id="x")
    assert api.wait("pfd", "x").exit_status == 128 + signal.SIGKILL
    assert api.delete_process("pfd", "x").exit_status == 128 + signal.SIGKILL
    assert code_of(lambda: api.get("pfd", "x")) == NOT_FOUND
    assert api.get("pfd").status == types_pb.RUNNING


def test_delete_container_exec_created_returns_0(api):
    api.container("exc", *SLEEP)
    api.create("exc")
    api.start("exc")
    api.exec("exc", "never", "sh", "-c", "exit 9")
    assert api.get("exc", "never").status == types_pb.CREATED
    assert api.delete_process("exc", "never").exit_status == 0
    assert code_of(lambda: api.get("exc", "never")) == NOT_FOUND


def test_container_load_unexisting_process(api):
    api.container("unk", *SLEEP)
    api.create("unk")
    api.start("unk")
    assert code_of(lambda: api.get("unk", "nope")) == NOT_FOUND
    assert code_of(lambda: api.kill("unk", exec_id="nope")) == NOT_FOUND
    assert code_of(lambda: api.wait("unk", "nope", timeout=5)) == NOT_FOUND


def test_container_exec_large_output_with_tty(api):
    api.container("tty", *SLEEP)
    api.create("tty")
    api.start("tty")
    for i in range(5):
        out = api.output(f"seq-{i}")
        api.exec("tty", f"seq{i}", "seq", "-s", " ", "1000000", stdout=out.uri, terminal=True)
        out.start()
        api.start("tty", f"seq{i}")
        assert api.wait("tty", f"seq{i}", timeout=30).exit_status == 0
        api.delete_process("tty", f"seq{i}")
        assert "999999 1000000" in out.text(timeout=5), i


def test_exec_exit_is_published_before_init_exit(api, ctrd):
    api.container("order", *SLEEP)
    api.create("order")
    api.start("order")
    api.exec("order", "long", *SLEEP)
    api.start("order", "long")
    shim = api.shim_pid("order")
    with Subscription(ctrd, [exit_filter(NS)]) as exits:
        api.kill("order", signal.SIGKILL)
        api.wait("order")
        exits.wait(2)
        assert [(e.id, e.exit_status) for e in exits.exits()] == [
            ("long", 128 + signal.SIGKILL),
            ("order", 128 + signal.SIGKILL),
        ]
    # No zombies: the shim (a subreaper) reaped whatever the container left.
    wait_for(lambda: zombies_of(shim) == [], 2, "zombie children of the shim")
    api.delete_process("order", "long")
    api.delete("order")


def zombies_of(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] == "Z" and int(fields[1]) == parent:
            found.append(int(entry))
    return found


# --- processes, stdin, terminal -------------------------------------------------------------------


def test_container_pids(api):
    api.container("pids", "sh", "-c", "sleep 1000 & wait")
    api.create("pids")
    pid = api.start("pids")
    wait_for(lambda: len(api.pids("pids")) == 2, 2, "sh and its sleep")
    assert pid in api.pids("pids")


def test_container_close_io(api):
    api.container("cat", "cat")
    stdin, writer = api.stdin("cat-stdin")
    api.create("cat", stdin=stdin)
    api.start("cat")
    waiting = api.wait_later("cat")
    os.write(writer, b"hello\n")
    api.close_fd(writer)
    api.tasks.CloseIO(pb.CloseIORequest(container_id="cat", stdin=True), metadata=api.md)
    assert waiting.result(timeout=5).exit_status == 0
    api.delete("cat")


def test_close_io_ends_stdin_while_the_client_still_holds_the_fifo(api):
    """containerd's shim closes the process's stdin on CloseIO, whoever else holds the FIFO."""
    api.container("cat2", "cat")
    stdin, _writer = api.stdin("cat2-stdin")
    api.create("cat2", stdin=stdin)
    api.start("cat2")
    waiting = api.wait_later("cat2", timeout=5)
    api.tasks.CloseIO(pb.CloseIORequest(container_id="cat2", stdin=True), metadata=api.md)
    assert waiting.result().exit_status == 0
    api.delete("cat2")


def test_task_resize(api):
    api.container("resize", "busybox", "stty", "size", tty=True)
    out = api.output("resize-out")
    api.create("resize", stdout=out.uri, terminal=True)
    out.start()
    api.tasks.ResizePty(
        pb.ResizePtyRequest(container_id="resize", width=34, height=12), metadata=api.md
    )
    api.start("resize")
    assert api.wait("resize").exit_status == 0
    api.delete("resize")
    assert out.text() == "12 34\r\n"


def test_container_kill_init_kills_child_when_not_host_pid(api):
    api.container("nsk", "sh", "-c", "sleep 1000 & wait")
    api.create("nsk")
    init = api.start("nsk")
    wait_for(lambda: len(api.pids("nsk")) == 2, 2, "sh and its sleep")
    children = [p for p in api.pids("nsk") if p != init]
    api.kill("nsk", signal.SIGKILL)
    api.wait("nsk")
    wait_for(lambda: all(pid_gone(p) for p in children), 3, f"children {children} gone")
    api.delete("nsk")


def test_container_kill_init_pid_host(api):
    def host_pid(spec):
        namespaces = spec["linux"]["namespaces"]
        spec["linux"]["namespaces"] = [n for n in namespaces if n["type"] != "pid"]

    api.container("hpk", "sh", "-c", "sleep 1000 & wait", edit=host_pid)
    api.create("hpk")
    init = api.start("hpk")
    wait_for(lambda: len(api.pids("hpk")) == 2, 2, "sh and its sleep")
    children = [p for p in api.pids("hpk") if p != init]
    for pid in children:
        os.kill(pid, 0)  # host pids: they are ours to see
    api.kill("hpk", signal.SIGKILL)
    assert api.wait("hpk").exit_status == 128 + signal.SIGKILL
    wait_for(lambda: all(pid_gone(p) for p in children), 3, f"children {children} gone")
    api.delete("hpk")


# --- metrics, update ------------------------------------------------------------------------------


def metrics(api: Api, cid: str) -> list:
    request = pb.MetricsRequest(filters=[f"id=={cid}"])
    return list(api.tasks.Metrics(request, metadata=api.md).metrics)


def test_container_metrics(api):
    api.container("met", *SLEEP)
    api.create("met")
    api.start("met")
    [metric] = metrics(api, "met")
    assert metric.id == "met"
    assert metric.data.type_url in (
        "io.containerd.cgroups.v1.Metrics",
        "io.containerd.cgroups.v2.Metrics",
    )
    assert metric.data.value


def test_deleted_container_metrics(api):
    api.container("dmet", *SLEEP)
    api.create("dmet")
    api.start("dmet")
    api.kill("dmet")
    api.wait("dmet")
    api.delete("dmet")
    assert code_of(lambda: api.get("dmet")) == NOT_FOUND
    assert metrics(api, "dmet") == []


def test_task_update_memory_limit(api):
    mib = 1 << 20

    def limit_32m(spec):
        spec["linux"].setdefault("resources", {})["memory"] = {"limit": 32 * mib}

    spec = api.container("upd", *SLEEP, edit=limit_32m)
    limit = f"/sys/fs/cgroup/memory/{spec['linux']['cgroupsPath']}/memory.limit_in_bytes"
    api.create("upd")
    api.start("upd")
    with open(limit) as f:
        assert int(f.read()) == 32 * mib
    resources = json.dumps({"memory": {"limit": 64 * mib}}).encode()
    update = pb.UpdateTaskRequest(
        container_id="upd", resources=any_pb2.Any(type_url=RESOURCES_URL, value=resources)
    )
    api.tasks.Update(update, metadata=api.md)
    with open(limit) as f:
        assert int(f.read()) == 64 * mib


# --- leaks ----------------------------------------------------------------------------------------


def pipes_of(pid: int) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("pipe:")
        except OSError:
            continue
    return count


def test_shim_does_not_leak_pipes(api, ctrd):
    before = pipes_of(ctrd.proc.pid)
    api.container("pipes", *SLEEP)
    api.create("pipes")
    api.start("pipes")
    api.kill("pipes")
    api.wait("pipes")
    api.delete("pipes")
    api.remove("pipes")
    assert pipes_of(ctrd.proc.pid) == before


def test_shim_does_not_leak_sockets(api, ctrd):
    api.container("socks", *SLEEP)
    api.create("socks")
    api.start("socks")
    shim = api.shim_pid("socks")
    assert os.listdir(ctrd.state / "s")
    api.kill("socks")
    api.wait("socks")
    api.delete("socks")
    api.remove("socks")
    assert os.listdir(ctrd.state / "s") == []
    wait_for(lambda: pid_gone(shim), 5, f"shim {shim} exited")


def test_deleting_a_task_never_started_needs_no_runc(api, ctrd, tmp_path):
    """The shim kills a created init itself and removes what runc made: runc's own
    `delete --force` would wait 100 ms before it looks whether the init died."""
    runc, log = logging_runc(tmp_path / "bin")
    api.container("unstarted", *SLEEP)
    options = any_pb2.Any(
        type_url="containerd.runc.v1.Options",
        value=oci_pb2.Options(binary_name=str(runc)).SerializeToString(),
    )
    created = api.tasks.Create(
        pb.CreateTaskRequest(
            container_id="unstarted", rootfs=api.rootfs("unstarted"), options=options
        ),
        metadata=api.md,
        timeout=20,
    )
    assert cgroups_of(NS, "unstarted")
    assert api.delete("unstarted").exit_status == 128 + signal.SIGKILL
    assert pid_gone(created.pid)
    assert log.read_text().split() == ["create"]
    assert not (ctrd.state / "runc" / NS / "unstarted").exists()
    assert cgroups_of(NS, "unstarted") == []
