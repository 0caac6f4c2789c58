"""Docker Engine on ctrd: Debian's dockerd 20.10 and docker CLI, unchanged, run containers here.

dockerd runs on temporary directories with `--containerd <ctrd socket>` and no host
networking (tests.support.dockerd); containers run with `--network none` from a busybox
archive loaded with `docker load`. What dockerd asks of its containerd is in
shared/design/dockerd-call-map.md; the first tests check the parts of it a client can see
without dockerd, the others drive the real `docker` CLI through what the issue lists, restarts
of either daemon included.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from supervisor.api.containerd.runc.options import oci_pb2
from supervisor.api.containerd.services.namespaces.v1 import namespaces_pb2, namespaces_pb2_grpc
from supervisor.api.containerd.services.snapshots.v1 import snapshots_pb2, snapshots_pb2_grpc
from supervisor.api.containerd.services.tasks.v1 import tasks_pb2, tasks_pb2_grpc
from supervisor.api.containerd.types.task import task_pb2 as types_pb
from tests.conftest import Ctrd
from tests.support.dockerd import DOCKER, Dockerd, running
from tests.support.tasks import pid_gone, wait_for
from tests.support.terminal import run_in_pty

pytestmark = pytest.mark.integration

NONE = ("--network", "none")
RUNC_OPTIONS = "containerd.runc.v1.Options"
CGROUP_V1 = Path("/sys/fs/cgroup/cpu").is_dir()


@pytest.fixture
def dockerd(ctrd: Ctrd, short_tmp: Path) -> Iterator[Dockerd]:
    yield from _engine(ctrd, short_tmp, live_restore=False)


@pytest.fixture
def dockerd_lr(ctrd: Ctrd, short_tmp: Path) -> Iterator[Dockerd]:
    yield from _engine(ctrd, short_tmp, live_restore=True)


def _engine(ctrd: Ctrd, short_tmp: Path, live_restore: bool) -> Iterator[Dockerd]:
    with running(short_tmp / "docker", ctrd.address, live_restore=live_restore) as engine:
        yield engine
    assert engine.mounts() == []


def status_of(engine: Dockerd, name: str) -> str:
    return engine.docker("ps", "-a", "--filter", f"name=^{name}$", "--format", "{{.Status}}").stdout


def pid_of(engine: Dockerd, name: str) -> int:
    return int(engine.docker("inspect", "-f", "{{.State.Pid}}", name).stdout)


# --- what dockerd needs of its containerd, seen through the API -------------------------------


def test_health_is_serving_and_namespaces_answer_before_anything_is_written(ctrd):
    health = ctrd.stub(health_pb2_grpc.HealthStub).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    namespaces = ctrd.stub(namespaces_pb2_grpc.NamespacesStub)
    for name in ("moby", "plugins.moby"):
        got = namespaces.Get(namespaces_pb2.GetNamespaceRequest(name=name)).namespace
        assert (got.name, dict(got.labels)) == (name, {})


def test_runc_options_root_holds_the_runtime_state_and_buries_a_task_after_a_restart(
    ctrd, busybox_image, short_tmp
):
    """`containerd.runc.v1.Options.root` (dockerd's `<exec-root>/runtime-runc`) is the runc
    root, with the namespace below it; it is remembered, so a task whose shim died while ctrd
    was down is still cleaned up on that root."""
    ctrd.ctr("images", "pull", "--plain-http", busybox_image.ref)
    ctrd.ctr("containers", "create", busybox_image.ref, "ro", "sleep", "1000")
    root = short_tmp / "runtime-runc"
    options = oci_pb2.Options(binary_name="runc", root=str(root))
    packed = tasks_pb2.CreateTaskRequest().options
    packed.type_url, packed.value = RUNC_OPTIONS, options.SerializeToString()
    tasks = ctrd.stub(tasks_pb2_grpc.TasksStub)
    md = (("containerd-namespace", "default"),)
    try:
        pid = tasks.Create(
            tasks_pb2.CreateTaskRequest(
                container_id="ro", options=packed, rootfs=_rootfs(ctrd, "ro")
            ),
            metadata=md,
        ).pid
        tasks.Start(tasks_pb2.StartRequest(container_id="ro"), metadata=md)
        assert _runc_list(root / "default") == ["ro"]
        assert not (ctrd.state / "runc" / "default" / "ro").exists()
        shim_pid = int((ctrd.state / "tasks" / "default" / "ro" / "shim.pid").read_text())
        ctrd.stop(signal.SIGKILL)
        os.kill(shim_pid, signal.SIGKILL)
        wait_for(lambda: pid_gone(shim_pid), what="the shim to die")
        ctrd.start()
        tasks = ctrd.stub(tasks_pb2_grpc.TasksStub)  # the stop closed the old channel
        process = tasks.Get(tasks_pb2.GetRequest(container_id="ro"), metadata=md).process
        assert (process.status, process.exit_status) == (types_pb.STOPPED, 137)
        wait_for(lambda: pid_gone(pid), what="the container to be killed")  # and reaped by init
        assert _runc_list(root / "default") == []
    finally:  # the ctrd fixture knows only its own runc root
        for cid in _runc_list(root / "default"):
            subprocess.run(["runc", "--root", str(root / "default"), "delete", "--force", cid])
    tasks.Delete(tasks_pb2.DeleteTaskRequest(container_id="ro"), metadata=md)
    ctrd.ctr("containers", "rm", "ro")


def _rootfs(ctrd: Ctrd, cid: str) -> list[object]:
    stub = ctrd.stub(snapshots_pb2_grpc.SnapshotsStub)
    request = snapshots_pb2.MountsRequest(snapshotter="overlayfs", key=cid)
    return list(stub.Mounts(request, metadata=(("containerd-namespace", "default"),)).mounts)


def _runc_list(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    listed = subprocess.run(
        ["runc", "--root", str(root), "list", "-q"], capture_output=True, text=True, check=True
    )
    return listed.stdout.split()


# --- the docker CLI ---------------------------------------------------------------------------


def test_run_prints_passes_exit_codes_and_stdin_through(dockerd):
    started = time.monotonic()
    assert dockerd.docker("run", "--rm", *NONE, "busybox", "echo", "hi").stdout == "hi\n"
    print(f"docker run --rm busybox echo hi: {time.monotonic() - started:.2f}s")
    exit3 = dockerd.docker("run", "--rm", *NONE, "busybox", "sh", "-c", "exit 3", check=False)
    assert exit3.returncode == 3
    missing = dockerd.docker("run", "--rm", *NONE, "busybox", "/nonexistent", check=False)
    assert missing.returncode == 127, missing.stderr
    assert "no such file or directory" in missing.stderr
    piped = dockerd.docker("run", "--rm", "-i", *NONE, "busybox", "cat", input="to-cat\n")
    assert piped.stdout == "to-cat\n"
    assert dockerd.docker("ps", "-aq").stdout == ""


def test_a_detached_container_through_its_life(dockerd):
    d = dockerd
    cid = d.docker("run", "-d", "--name", "web", *NONE, "busybox", "sh", "-c",
                   "echo up; sleep 1000").stdout.strip()  # fmt: skip
    assert status_of(d, "web").startswith("Up")
    assert "web" in d.docker("ps").stdout
    wait_for(lambda: d.docker("logs", "web").stdout == "up\n", what="the log")
    assert d.docker("exec", "web", "echo", "x").stdout == "x\n"
    assert d.docker("exec", "web", "sh", "-c", "exit 7", check=False).returncode == 7
    assert "sleep 1000" in d.docker("top", "web").stdout
    stats = d.docker("stats", "--no-stream", "--format", "{{.Name}} {{.PIDs}}", "web").stdout
    assert stats.split() == ["web", "1"]  # sh execs its last command: sleep is pid 1

    d.docker("pause", "web")
    assert status_of(d, "web").endswith("(Paused)\n")
    d.docker("unpause", "web")
    unpaused = status_of(d, "web")
    assert unpaused.startswith("Up")
    assert "Paused" not in unpaused

    d.docker("update", "--cpu-shares", "512", "web")
    assert _cpu_weight(cid) == (512 if CGROUP_V1 else 20)  # v2: runc's weight for 512 shares

    started = time.monotonic()
    d.docker("stop", "-t", "1", "web")  # sh as pid 1 ignores SIGTERM: killed after 1 s
    assert 1 <= time.monotonic() - started < 5
    assert status_of(d, "web").startswith("Exited (137)")
    d.docker("start", "web")
    assert status_of(d, "web").startswith("Up")
    assert d.docker("exec", "web", "echo", "again").stdout == "again\n"
    d.docker("kill", "web")
    wait_for(lambda: status_of(d, "web").startswith("Exited (137)"), what="the kill")
    d.docker("rm", "-f", "web")
    assert d.docker("ps", "-aq").stdout == ""


def _cpu_weight(cid: str) -> int:
    """The cpu share of a container dockerd put in cgroup /docker/<id>."""
    if CGROUP_V1:
        return int(Path(f"/sys/fs/cgroup/cpu/docker/{cid}/cpu.shares").read_text())
    return int(Path(f"/sys/fs/cgroup/docker/{cid}/cpu.weight").read_text())


def test_run_interactive_in_a_pseudo_terminal(dockerd):
    out, status = run_in_pty(
        [DOCKER, "run", "--rm", "-it", *NONE, "busybox", "sh"],
        typed=b"tty; sleep 1; stty size; echo typed-$((6*7)); exit 4\r",
        env=dockerd.cli_env(),
    )
    assert status == 4, out
    text = out.decode(errors="replace")
    assert "/dev/pts/0" in text
    assert "30 100" in text  # the CLI's terminal size, through ResizePty
    assert "typed-42" in text
    assert dockerd.docker("ps", "-aq").stdout == ""


def test_build_cp_diff_and_commit_run_their_containers_here(dockerd, short_tmp):
    """The classic builder runs each RUN step as a container through ctrd, as do cp and commit."""
    d = dockerd
    context = short_tmp / "context"
    context.mkdir()
    (context / "Dockerfile").write_text(
        "FROM busybox\nRUN echo built > /built && id -u > /uid\nCMD cat /built /uid\n"
    )
    env = dict(d.cli_env(), DOCKER_BUILDKIT="0")
    built = subprocess.run(
        [DOCKER, "build", "--network", "none", "-t", "mine", str(context)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    assert "Successfully tagged mine:latest" in built.stdout
    assert d.docker("run", "--rm", *NONE, "mine").stdout == "built\n0\n"

    d.docker("run", "-d", "--name", "box", *NONE, "busybox", "sleep", "1000")
    (short_tmp / "f.txt").write_text("copied\n")
    d.docker("cp", str(short_tmp / "f.txt"), "box:/f.txt")
    assert d.docker("exec", "box", "cat", "/f.txt").stdout == "copied\n"
    assert "A /f.txt" in d.docker("diff", "box").stdout.splitlines()
    d.docker("commit", "box", "snap")
    assert d.docker("run", "--rm", *NONE, "snap", "cat", "/f.txt").stdout == "copied\n"
    d.docker("rm", "-f", "box")
    d.docker("rmi", "mine", "snap")


def test_docker_load_takes_what_ctrctl_save_writes_and_the_other_way(ctrd, dockerd, short_tmp):
    """The archives of both are interchangeable: docker's own save, ctrctl's save (OCI layout
    and docker-save in one) loaded by the other, and run there."""
    from tests.support import images

    def ctrctl(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "ctl", "--address", ctrd.address, *args],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    source = images.oci_archive(images.busybox2_image(), short_tmp / "bb2.tar", "bb2:1")
    ctrctl("load", "-i", str(source))
    ctrctl("save", "-o", str(short_tmp / "saved.tar"), "bb2:1")
    loaded = dockerd.docker("load", "-i", str(short_tmp / "saved.tar")).stdout
    assert "Loaded image: bb2:1" in loaded
    extra = dockerd.docker("run", "--rm", *NONE, "bb2:1", "cat", "/etc/extra").stdout
    assert extra == images.EXTRA.decode()

    dockerd.docker("save", "-o", str(short_tmp / "docker.tar"), "busybox:latest")
    assert "Loaded image: busybox:latest" in ctrctl("load", "-i", str(short_tmp / "docker.tar"))
    assert ctrctl("run", "--rm", "busybox", "echo", "from-docker") == "from-docker\n"
    dockerd.docker("rmi", "bb2:1")


def test_an_oom_kill_is_reported(dockerd):
    ran = dockerd.docker(
        "run", "--name", "oom", *NONE, "-m", "16m", "--memory-swap", "16m",
        "busybox", "tail", "/dev/zero", check=False,
    )  # fmt: skip
    assert ran.returncode == 137
    state = dockerd.inspect("oom")["State"]
    assert isinstance(state, dict)
    assert (state["OOMKilled"], state["ExitCode"]) == (True, 137)
    dockerd.docker("rm", "oom")


# --- restarts ---------------------------------------------------------------------------------


def test_ctrd_killed_while_a_container_dies_reports_its_exit_after_the_restart(ctrd, dockerd):
    """The issue's case: SIGKILL ctrd, SIGKILL the container's process, wait 30 s, start ctrd:
    the exit reaches dockerd within seconds. Another container lives on, manageable."""
    d = dockerd
    d.docker("run", "-d", "--name", "dies", *NONE, "busybox", "sleep", "1000")
    d.docker("run", "-d", "--name", "lives", *NONE, "busybox", "sh", "-c", "echo up; sleep 1000")
    victim = pid_of(d, "dies")
    ctrd.stop(signal.SIGKILL)
    os.kill(victim, signal.SIGKILL)
    time.sleep(30)
    assert status_of(d, "dies").startswith("Up")  # dockerd cannot know yet
    ctrd.start()
    restarted = time.monotonic()
    wait_for(lambda: status_of(d, "dies").startswith("Exited (137)"), timeout=15,
             what="dockerd to learn of the exit")  # fmt: skip
    print(f"exit seen by dockerd {time.monotonic() - restarted:.1f}s after ctrd started")
    assert status_of(d, "lives").startswith("Up")
    assert d.docker("exec", "lives", "echo", "after").stdout == "after\n"
    assert "sleep 1000" in d.docker("top", "lives").stdout
    d.docker("kill", "lives")
    wait_for(lambda: status_of(d, "lives").startswith("Exited (137)"), what="the kill")
    d.docker("start", "dies")
    assert d.docker("exec", "dies", "echo", "back").stdout == "back\n"
    d.docker("rm", "-f", "dies", "lives")


def test_ctrd_stopped_and_started_under_dockerd(ctrd, dockerd):
    """A graceful restart ends the event streams UNAVAILABLE (never CANCELLED, which dockerd
    would take for its own shutdown): dockerd subscribes again and goes on."""
    d = dockerd
    d.docker("run", "-d", "--name", "s1", *NONE, "busybox", "sleep", "1000")
    assert ctrd.stop() == 0
    ctrd.start()
    wait_for(lambda: d.docker("exec", "s1", "true", check=False).returncode == 0, timeout=15,
             what="dockerd to reach ctrd again")  # fmt: skip
    started = time.monotonic()
    d.docker("stop", "-t", "1", "s1")
    assert time.monotonic() - started < 5  # the exit came through the new subscription
    assert status_of(d, "s1").startswith("Exited (137)")
    assert d.docker("run", "--rm", *NONE, "busybox", "echo", "hi").stdout == "hi\n"


def test_live_restore_keeps_containers_through_dockerd_restarts(ctrd, dockerd_lr):
    d = dockerd_lr
    ticking = "i=0; while true; do i=$((i+1)); echo tick$i; sleep 0.2; done"
    cid = d.docker("run", "-d", "--name", "tick", *NONE, "busybox", "sh", "-c", ticking).stdout
    cid = cid.strip()
    pid = pid_of(d, "tick")
    wait_for(lambda: "tick2" in d.docker("logs", "tick").stdout, what="ticks")
    d.stop(signal.SIGKILL)
    time.sleep(1.5)  # output meanwhile waits in the FIFO
    assert not pid_gone(pid)
    d.start()
    assert status_of(d, "tick").startswith("Up")
    assert pid_of(d, "tick") == pid
    wait_for(lambda: "tick15" in d.docker("logs", "tick").stdout, what="more ticks")
    ticks = d.docker("logs", "tick").stdout.split()
    assert ticks[:15] == [f"tick{i}" for i in range(1, 16)]  # none lost while dockerd was down
    assert d.docker("exec", "tick", "echo", "x").stdout == "x\n"

    d.docker("pause", "tick")
    assert d.stop() == 0
    d.start()
    assert status_of(d, "tick").endswith("(Paused)\n")
    d.docker("unpause", "tick")

    assert d.stop() == 0
    os.kill(pid, signal.SIGKILL)  # exits while dockerd is down: found stopped at its start
    wait_for(lambda: _task_status(ctrd, cid) == types_pb.STOPPED, what="the exit")
    d.start()
    wait_for(lambda: status_of(d, "tick").startswith("Exited (137)"), what="the restore")
    d.docker("rm", "tick")


def _task_status(ctrd: Ctrd, cid: str) -> int:
    """The status of a container's task in dockerd's namespace, asked of ctrd."""
    request = tasks_pb2.GetRequest(container_id=cid)
    stub = ctrd.stub(tasks_pb2_grpc.TasksStub)
    return int(stub.Get(request, metadata=(("containerd-namespace", "moby"),)).process.status)
