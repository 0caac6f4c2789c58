"""Restarts and dead shims: tasks outlive the daemon, and every exit is reported once, truly."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import grpc
import pytest

from supervisor.api.containerd.services.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from supervisor.api.containerd.types.task.task_pb2 import RUNNING, STOPPED
from tests.conftest import Ctrd
from tests.integration.test_tasks import pull, run, wait_for


def tasks(ctrd: Ctrd, ns: str = "default") -> dict[str, tuple[str, str]]:
    """`ctr tasks ls`: id -> (pid, status)."""
    lines = ctrd.ctr("tasks", "ls", ns=ns).stdout.splitlines()[1:]
    return {f[0]: (f[1], f[2]) for f in (line.split() for line in lines)}


def logged_exits(ctrd: Ctrd, cid: str) -> list[bytes]:
    """The /tasks/exit events the daemon's event log holds for a container."""
    with sqlite3.connect(ctrd.root / "events.db") as db:
        rows = db.execute("SELECT value FROM events WHERE topic = '/tasks/exit'").fetchall()
    return [v for (v,) in rows if cid.encode() in v]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_tasks_survive_a_restart_as_they_were(ctrd, busybox_image, sig):
    ref = pull(ctrd, busybox_image)
    for n in range(3):
        run(ctrd, "-d", ref, f"c{n}", "sleep", "1000")
    ctrd.ctr("tasks", "pause", "c2")
    before = tasks(ctrd)
    assert [s for _, s in before.values()] == ["RUNNING", "RUNNING", "PAUSED"]
    ctrd.stop(sig)
    for pid, _ in before.values():
        os.kill(int(pid), 0)  # still running without the daemon
    ctrd.start()
    assert tasks(ctrd) == before
    ctrd.ctr("tasks", "resume", "c2")
    out = ctrd.ctr("tasks", "exec", "--fifo-dir", ctrd.fifo_dir(), "--exec-id", "x", "c1",
                   "echo", "still-here").stdout  # fmt: skip
    assert out == "still-here\n"
    for n in range(3):
        ctrd.ctr("tasks", "rm", "-f", f"c{n}")
    assert tasks(ctrd) == {}


def test_exits_while_the_daemon_is_down_are_reported_once_with_their_status(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    run(ctrd, "-d", ref, "quick", "sh", "-c", "sleep 1; exit 7")
    run(ctrd, "-d", ref, "killed", "sleep", "1000")
    run(ctrd, "-d", ref, "stays", "sleep", "1000")
    killed_pid = int(tasks(ctrd)["killed"][0])
    ctrd.stop(signal.SIGKILL)
    os.kill(killed_pid, signal.SIGKILL)
    time.sleep(1.5)  # "quick" exits meanwhile
    ctrd.start()
    listed = tasks(ctrd)
    assert {k: s for k, (_, s) in listed.items()} == {
        "quick": "STOPPED", "killed": "STOPPED", "stays": "RUNNING",
    }  # fmt: skip
    stub = ctrd.stub(tasks_pb2_grpc.TasksStub)
    md = (("containerd-namespace", "default"),)
    assert stub.Wait(tasks_pb2.WaitRequest(container_id="quick"), metadata=md).exit_status == 7
    assert stub.Wait(tasks_pb2.WaitRequest(container_id="killed"), metadata=md).exit_status == 137
    deleted = stub.Delete(tasks_pb2.DeleteTaskRequest(container_id="quick"), metadata=md)
    assert deleted.exit_status == 7
    assert len(logged_exits(ctrd, "quick")) == 1
    assert len(logged_exits(ctrd, "killed")) == 1
    ctrd.restart()  # replaying the shims' journals again publishes nothing twice
    assert len(logged_exits(ctrd, "killed")) == 1
    ctrd.ctr("tasks", "rm", "killed")
    ctrd.ctr("tasks", "rm", "-f", "stays")


def test_a_wait_pending_across_a_restart_is_unavailable_and_a_new_one_works(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    run(ctrd, "-d", ref, "w1", "sleep", "1000")
    # A channel of its own: the fixture closes its shared one when it stops the daemon.
    channel = grpc.insecure_channel(f"unix:{ctrd.address}")
    stub = tasks_pb2_grpc.TasksStub(channel)
    md = (("containerd-namespace", "default"),)
    errors: list[grpc.RpcError] = []

    def wait() -> None:
        try:
            stub.Wait(tasks_pb2.WaitRequest(container_id="w1"), metadata=md, timeout=30)
        except grpc.RpcError as e:
            errors.append(e)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.5)
    ctrd.restart()
    waiter.join(10)
    channel.close()
    assert [e.code() for e in errors] == [grpc.StatusCode.UNAVAILABLE], ctrd.log()[-3000:]
    stub = ctrd.stub(tasks_pb2_grpc.TasksStub)
    future = stub.Wait.future(tasks_pb2.WaitRequest(container_id="w1"), metadata=md, timeout=30)
    ctrd.ctr("tasks", "kill", "-s", "KILL", "w1")
    assert future.result().exit_status == 137
    ctrd.ctr("tasks", "rm", "w1")


def shim_pid(ctrd: Ctrd, cid: str, ns: str = "default") -> int:
    return int((ctrd.state / "tasks" / ns / cid / "shim.pid").read_text())


def mounts_under(path: object) -> list[str]:
    with open("/proc/self/mounts") as f:
        return [line.split()[1] for line in f if str(path) in line.split()[1]]


def test_a_killed_shim_is_noticed_and_its_task_cleaned_up(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    run(ctrd, "-d", ref, "orphan", "sleep", "1000")
    pid = int(tasks(ctrd)["orphan"][0])
    os.kill(shim_pid(ctrd, "orphan"), signal.SIGKILL)
    wait_for(lambda: tasks(ctrd)["orphan"][1] == "STOPPED", timeout=5)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), timeout=5)  # the container is gone
    assert mounts_under(ctrd.state / "tasks") == []
    assert list((ctrd.state / "runc" / "default").iterdir()) == []
    assert list((ctrd.state / "s").iterdir()) == []
    stub = ctrd.stub(tasks_pb2_grpc.TasksStub)
    md = (("containerd-namespace", "default"),)
    deleted = stub.Delete(tasks_pb2.DeleteTaskRequest(container_id="orphan"), metadata=md)
    assert deleted.exit_status == 137
    assert not (ctrd.state / "tasks" / "default" / "orphan").exists()
    assert len(logged_exits(ctrd, "orphan")) == 1


def test_a_shim_that_died_after_its_container_keeps_the_true_status(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    run(ctrd, "-d", ref, "done", "sh", "-c", "exit 5")
    wait_for(lambda: tasks(ctrd)["done"][1] == "STOPPED")
    ctrd.stop(signal.SIGKILL)
    os.kill(shim_pid(ctrd, "done"), signal.SIGKILL)
    ctrd.start()
    assert tasks(ctrd)["done"][1] == "STOPPED"
    stub = ctrd.stub(tasks_pb2_grpc.TasksStub)
    md = (("containerd-namespace", "default"),)
    assert stub.Wait(tasks_pb2.WaitRequest(container_id="done"), metadata=md).exit_status == 5
    assert (
        stub.Delete(tasks_pb2.DeleteTaskRequest(container_id="done"), metadata=md).exit_status == 5
    )
    assert len(logged_exits(ctrd, "done")) == 1


def test_a_shim_killed_while_the_daemon_was_down_is_stopped_in_the_first_listing(
    ctrd, busybox_image
):
    # A live shim holds a lock on its journal: the restarted daemon tells the dead one apart
    # before it serves, and never lists its task RUNNING.
    ref = pull(ctrd, busybox_image)
    run(ctrd, "-d", ref, "alive", "sleep", "1000")
    run(ctrd, "-d", ref, "orphaned", "sleep", "1000")
    pid = int(tasks(ctrd)["orphaned"][0])
    ctrd.stop(signal.SIGKILL)
    os.kill(shim_pid(ctrd, "orphaned"), signal.SIGKILL)
    logged = len(ctrd.log().splitlines())
    ctrd.start()
    stub = ctrd.stub(tasks_pb2_grpc.TasksStub)
    md = (("containerd-namespace", "default"),)
    first = stub.List(tasks_pb2.ListTasksRequest(), metadata=md).tasks  # at once, not via ctr
    assert {t.id: t.status for t in first} == {"alive": RUNNING, "orphaned": STOPPED}
    # Buried before the daemon served at all, not soon after.
    lines = ctrd.log().splitlines()[logged:]
    events = [json.loads(line).get("event") for line in lines if line.startswith("{")]
    assert events.index("shim_buried") < events.index("ctrd_started")
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), timeout=5)  # its container was killed
    deleted = stub.Delete(tasks_pb2.DeleteTaskRequest(container_id="orphaned"), metadata=md)
    assert deleted.exit_status == 137
    ctrd.ctr("tasks", "rm", "-f", "alive")


def test_a_shim_that_does_not_answer_holds_up_no_listing(ctrd, busybox_image):
    # containerd asks every shim for its state on each Tasks.List, so one stuck shim stalls
    # `ctr tasks ls` for everyone. ctrd lists from the events its shims reported.
    ref = pull(ctrd, busybox_image)
    run(ctrd, "-d", ref, "stuck", "sleep", "1000")
    run(ctrd, "-d", ref, "fine", "sleep", "1000")
    ctrd.ctr("tasks", "pause", "fine")
    stuck = shim_pid(ctrd, "stuck")
    os.kill(stuck, signal.SIGSTOP)
    try:
        start = time.monotonic()
        listed = tasks(ctrd)
        assert time.monotonic() - start < 5
        assert (listed["stuck"][1], listed["fine"][1]) == ("RUNNING", "PAUSED")
    finally:
        os.kill(stuck, signal.SIGCONT)
    for cid in ("stuck", "fine"):
        ctrd.ctr("tasks", "rm", "-f", cid)


def ctrctl(ctrd: Ctrd, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ctl", "--address", ctrd.address, *args],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_exits_during_downtime_are_in_the_event_log_once(ctrd, busybox_image):
    """The issue's scenario, scaled down: kill the daemon, then some containers; restart."""
    ref = pull(ctrd, busybox_image)
    names = [f"d{n}" for n in range(6)]
    for name in names:
        run(ctrd, "-d", ref, name, "sleep", "1000")
    pids = {name: int(pid) for name, (pid, _) in tasks(ctrd).items()}
    before_kill = time.time()
    ctrd.stop(signal.SIGKILL)
    for name in names[:2]:
        os.kill(pids[name], signal.SIGKILL)
    time.sleep(1)
    started = time.monotonic()
    ctrd.start()
    listed = tasks(ctrd)
    assert time.monotonic() - started < 5
    assert {n: s for n, (_, s) in listed.items()} == {
        n: "STOPPED" if n in names[:2] else "RUNNING" for n in names
    }
    out = ctrctl(ctrd, "events", "--since", f"{before_kill:.3f}", "--until", f"{time.time():.3f}")
    assert out.returncode == 0, out.stderr
    exits = [line for line in out.stdout.splitlines() if " /tasks/exit " in line]
    assert len(exits) == 2, out.stdout
    assert {json.loads(line.split(" ", 3)[3])["containerId"] for line in exits} == set(names[:2])
    assert all(json.loads(line.split(" ", 3)[3])["exitStatus"] == 137 for line in exits)
    for name in names[:2]:
        ctrd.ctr("tasks", "rm", name)
    for name in names[2:]:
        ctrd.ctr("tasks", "rm", "-f", name)


def test_ctrctl_events_replays_then_follows_without_gap_or_repeat(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    start = time.time()
    run(ctrd, "--rm", ref, "first", "true")
    follower = subprocess.Popen(
        [sys.executable, "-m", "ctl", "--address", ctrd.address, "events",
         "--since", f"{start:.3f}", "--filter", "type=/tasks/exit"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(1)
        run(ctrd, "--rm", ref, "second", "true")
        time.sleep(0.5)
    finally:
        follower.send_signal(signal.SIGINT)
        out, _ = follower.communicate(timeout=10)
    ids = [json.loads(line.split(" ", 3)[3])["containerId"] for line in out.splitlines()]
    assert ids == ["first", "second"], out


def test_a_task_whose_creation_a_crash_cut_short_leaves_no_task_and_no_event(ctrd):
    # What a daemon killed during Tasks.Create leaves: a bundle, its instance, no journal
    # record of a create, no shim listening.
    bundle = ctrd.state / "tasks" / "default" / "half"
    bundle.mkdir(parents=True)
    (bundle / "instance").write_text("shim:feedface")
    (bundle / "config.json").write_text("{}")
    (bundle / "address").write_text(f"unix://{ctrd.state}/s/nobody")
    (bundle / "rootfs").mkdir()
    ctrd.restart()
    assert ctrd.ctr("tasks", "ls", "-q").stdout.split() == []
    assert not bundle.exists()
    with sqlite3.connect(ctrd.root / "events.db") as db:
        assert db.execute("SELECT COUNT(*) FROM events WHERE topic LIKE '/tasks/%'").fetchone() == (
            0,
        )


def test_an_exit_just_after_a_restart_reaches_a_client_that_subscribes_again_later(
    ctrd, busybox_image
):
    """dockerd re-subscribes 1-3 s after the daemon is back: an exit in between must reach it."""
    from supervisor.api.containerd.events import task_pb2 as task_events
    from supervisor.api.containerd.services.events.v1 import events_pb2, events_pb2_grpc

    ref = pull(ctrd, busybox_image)
    run(ctrd, "-d", ref, "late", "sleep", "1000")
    pid = int(tasks(ctrd)["late"][0])
    ctrd.stop(signal.SIGKILL)
    ctrd.start()
    os.kill(pid, signal.SIGKILL)  # the daemon is serving; nobody has subscribed yet
    wait_for(lambda: tasks(ctrd)["late"][1] == "STOPPED")
    stream = ctrd.stub(events_pb2_grpc.EventsStub).Subscribe(
        events_pb2.SubscribeRequest(filters=['topic=="/tasks/exit"']), timeout=10
    )
    exit_ = task_events.TaskExit.FromString(next(stream).event.value)
    stream.cancel()
    assert (exit_.container_id, exit_.exit_status) == ("late", 137)
    ctrd.ctr("tasks", "rm", "late")
    again = ctrd.stub(events_pb2_grpc.EventsStub).Subscribe(
        events_pb2.SubscribeRequest(filters=['topic=="/tasks/exit"']), timeout=1
    )
    with pytest.raises(grpc.RpcError) as ended:  # the task is gone: nothing is replayed
        next(again)
    assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
