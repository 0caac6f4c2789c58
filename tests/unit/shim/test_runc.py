"""The shim's own `runc start`, `runc delete` and `runc kill` (shim.runc), on real FIFOs,
directories and processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from shim import runc


def runtime(root: Path, binary: str = "/usr/sbin/runc") -> runc.Runtime:
    return runc.Runtime(binary, str(root), str(root), lambda pid, status: None)


def state(**changes: Any) -> dict[str, Any]:
    """A runc state.json of a stopped container whose init (pid 1's start time) is long gone."""
    base: dict[str, Any] = {
        "init_process_pid": 999_999_999,
        "init_process_start": 1,
        "cgroup_paths": {},
        "intel_rdt_path": "",
        "config": {
            "namespaces": [{"type": "NEWPID", "path": ""}, {"type": "NEWNET", "path": ""}],
            "Hooks": None,
            "cgroups": {"path": "/ns/c"},
        },
    }
    config = changes.pop("config", {})
    base.update(changes)
    base["config"].update(config)
    return base


def noting_runtime(directory: Path, name: str = "runc") -> tuple[Path, Path]:
    """A runtime binary that only notes its arguments: (its path, the file it notes them in)."""
    fake = directory / name
    fake.write_text('#!/bin/sh\necho "$@" > "$(dirname "$0")/asked"\n')
    fake.chmod(0o755)
    return fake, directory / "asked"


def write_state(root: Path, cid: str, content: dict[str, Any]) -> Path:
    directory = root / cid
    directory.mkdir(parents=True)
    (directory / runc.STATE).write_text(json.dumps(content))
    return directory


# --- start: the exec FIFO --------------------------------------------------------------------


def fifo_writer(fifo: Path, data: str, then: str = "") -> subprocess.Popen[bytes]:
    """What `runc init` does: open the FIFO for writing (blocking until a reader comes), write
    its byte, then go on (`then`) with the FIFO open until it exits (as an exec closes it)."""
    code = (
        f"import os, time\nfd = os.open({str(fifo)!r}, os.O_WRONLY)\n"
        f"os.write(fd, {data!r}.encode())\n{then}"
    )
    return subprocess.Popen([sys.executable, "-c", code])


def test_start_reads_the_inits_byte_and_removes_the_fifo(tmp_path):
    fifo = tmp_path / "c1" / runc.EXEC_FIFO
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    init = fifo_writer(fifo, "0", then="time.sleep(0.3)")
    began = time.monotonic()
    runtime(tmp_path).start("c1", init.pid)
    # Not before the writer closed its end (the exec, for runc's init).
    assert time.monotonic() - began >= 0.25
    assert not fifo.exists()
    assert init.wait(5) == 0


def test_start_of_an_init_that_died_before_writing_fails(tmp_path):
    fifo = tmp_path / "c2" / runc.EXEC_FIFO
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    dead = subprocess.Popen(["true"])
    time.sleep(0.2)  # a zombie now: not reaped until the end
    try:
        with pytest.raises(runc.RuntimeFailed, match="already dead"):
            runtime(tmp_path).start("c2", dead.pid)
        assert fifo.exists()
    finally:
        dead.wait()


def test_start_without_a_fifo_is_runcs_to_answer(tmp_path):
    """No FIFO (not created, or started already): runc itself runs, and says why."""
    fake, asked = noting_runtime(tmp_path)
    runtime(tmp_path, str(fake)).start("c3", os.getpid())
    assert asked.read_text().split()[-2:] == ["start", "c3"]


def test_crun_starts_itself(tmp_path):
    """crun reads and writes its FIFO the other way round: its own command always runs."""
    fifo = tmp_path / "c4" / runc.EXEC_FIFO
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    fake, asked = noting_runtime(tmp_path, "crun")
    runtime(tmp_path, str(fake)).start("c4", os.getpid())
    assert asked.read_text().split()[-2:] == ["start", "c4"]
    assert fifo.exists()


# --- delete: cgroups and state ---------------------------------------------------------------


def test_delete_removes_the_cgroups_and_the_state(tmp_path):
    cgroups = {name: tmp_path / "cg" / name / "ns" / "c" for name in ("memory", "pids", "")}
    for path in cgroups.values():
        path.mkdir(parents=True)
    content = state(cgroup_paths={k: str(v) for k, v in cgroups.items()})
    directory = write_state(tmp_path / "root", "c", content)
    runtime(tmp_path / "root").delete("c")
    assert not directory.exists()
    assert not any(path.exists() for path in cgroups.values())
    assert all(path.parent.exists() for path in cgroups.values())  # only the container's own


@pytest.mark.parametrize(
    ("why", "changes"),
    [
        ("the host's pid namespace", {"config": {"namespaces": [{"type": "NEWNET", "path": ""}]}}),
        (
            "another container's pid namespace",
            {"config": {"namespaces": [{"type": "NEWPID", "path": "/proc/1/ns/pid"}]}},
        ),
        ("a poststop hook", {"config": {"Hooks": {"poststop": [{"path": "/bin/true"}]}}}),
        ("an Intel RDT group", {"intel_rdt_path": "/sys/fs/resctrl/c"}),
        ("systemd cgroups", {"config": {"cgroups": {"systemd": True}}}),
        ("an init still running", {"init_process_pid": os.getpid(), "init_process_start": None}),
    ],
)
def test_delete_leaves_to_runc_what_is_more_than_removal(tmp_path, why, changes):
    content = state(**changes)
    if content["init_process_start"] is None:
        with open(f"/proc/{os.getpid()}/stat") as f:
            content["init_process_start"] = int(f.read().rsplit(")", 1)[1].split()[19])
    directory = write_state(tmp_path / "root", "c", content)
    fake, asked = noting_runtime(tmp_path)
    runtime(tmp_path / "root", str(fake)).delete("c")
    assert asked.read_text().split()[-3:] == ["delete", "--force", "c"], why
    assert directory.exists(), why


def test_a_cgroup_that_will_not_go_is_left_to_runcs_retries(tmp_path):
    busy = tmp_path / "cg" / "memory" / "c"
    (busy / "child").mkdir(parents=True)  # not empty: rmdir fails, as with a live process
    directory = write_state(tmp_path / "root", "c", state(cgroup_paths={"memory": str(busy)}))
    fake, asked = noting_runtime(tmp_path)
    runtime(tmp_path / "root", str(fake)).delete("c")
    assert asked.read_text().split()[-3:] == ["delete", "--force", "c"]
    assert directory.exists()


def test_alive_knows_zombies_and_reused_pids():
    child = subprocess.Popen(["sleep", "10"])
    try:
        with open(f"/proc/{child.pid}/stat") as f:
            started = int(f.read().rsplit(")", 1)[1].split()[19])
        assert runc._alive(child.pid, started)
        assert not runc._alive(child.pid, started + 1)  # another process with the same pid
        child.send_signal(signal.SIGKILL)
        time.sleep(0.2)
        assert not runc._alive(child.pid)  # a zombie until reaped
    finally:
        child.wait()
    assert not runc._alive(child.pid)


# --- kill: the init ----------------------------------------------------------------------------


def test_kill_signals_a_running_init_itself(tmp_path):
    fake, asked = noting_runtime(tmp_path)
    init = subprocess.Popen(["sleep", "100"])
    try:
        runtime(tmp_path, str(fake)).kill(
            "c", signal.SIGTERM, all=False, pid=init.pid, paused=False
        )
        assert init.wait(timeout=10) == -signal.SIGTERM
    finally:
        init.kill()
        init.wait()
    assert not asked.exists()


def test_kill_of_an_init_that_no_longer_runs_fails_as_runcs(tmp_path):
    fake, asked = noting_runtime(tmp_path)
    init = subprocess.Popen(["true"])
    init.wait()
    with pytest.raises(runc.RuntimeFailed, match="container not running"):
        runtime(tmp_path, str(fake)).kill(
            "c", signal.SIGKILL, all=False, pid=init.pid, paused=False
        )
    assert not asked.exists()


@pytest.mark.parametrize(
    ("why", "name", "all", "paused", "expected"),
    [
        ("every process in the cgroup", "runc", True, False, ["kill", "--all", "c", "9"]),
        ("runc thaws a paused container for SIGKILL", "runc", False, True, ["kill", "c", "9"]),
        ("crun", "crun", False, False, ["kill", "c", "9"]),
    ],
)
def test_kill_leaves_to_the_runtime_what_is_more_than_a_signal(
    tmp_path, why, name, all, paused, expected
):
    fake, asked = noting_runtime(tmp_path, name)
    init = subprocess.Popen(["sleep", "100"])
    try:
        runtime(tmp_path, str(fake)).kill("c", signal.SIGKILL, all=all, pid=init.pid, paused=paused)
        assert init.poll() is None, why
    finally:
        init.kill()
        init.wait()
    assert asked.read_text().split()[-len(expected) :] == expected, why


# --- exec: the process spec in a memfd -------------------------------------------------------


def test_exec_hands_the_process_spec_through_an_fd_and_writes_no_file(tmp_path):
    fake = tmp_path / "runc"
    fake.write_text(
        '#!/bin/sh\necho "$@" > "$(dirname "$0")/asked"\n'
        'for a; do case "$a" in /proc/self/fd/*) cat "$a" > "$(dirname "$0")/spec";; esac; done\n'
        'echo 42 > "$(dirname "$0")/bundle/exec.pid"\n'
    )
    fake.chmod(0o755)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    process = {"args": ["true"], "cwd": "/", "env": ["A=b"]}
    with open(os.devnull, "r+b") as null:
        fds = (null.fileno(),) * 3
        pid = runc.Runtime(str(fake), str(tmp_path), str(bundle), lambda *_: None).exec(
            "c1", process, str(bundle / "exec.pid"), fds, "/run/console.sock"
        )
    assert pid == 42  # read from the pid file runc writes (which the task removes)
    asked = (tmp_path / "asked").read_text().split()
    assert asked[asked.index("exec") :] == [
        "exec", "--detach", "--process", f"/proc/self/fd/{runc.PROCESS_FD}",
        "--pid-file", str(bundle / "exec.pid"), "--console-socket", "/run/console.sock", "c1",
    ]  # fmt: skip
    assert json.loads((tmp_path / "spec").read_text()) == process
    assert [p.name for p in bundle.iterdir()] == ["exec.pid"]
