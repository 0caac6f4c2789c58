"""Tasks through the real ctr: run, exit statuses, stdio, exec, pause, kill, delete."""

from __future__ import annotations

import shlex
import subprocess
import time

from tests.conftest import Ctrd
from tests.support.registry import PushedImage


def pull(ctrd: Ctrd, image: PushedImage, ns: str = "default") -> str:
    ctrd.ctr("images", "pull", "--plain-http", image.ref, ns=ns)
    return image.ref


def run(ctrd: Ctrd, *args: str, ns: str = "default", check: bool = True, **kw):
    return ctrd.ctr("run", "--fifo-dir", ctrd.fifo_dir(), *args, ns=ns, check=check, **kw)


def test_run_rm_prints_output_and_pid_1(ctrd, busybox2_image):
    ref = pull(ctrd, busybox2_image)
    result = run(ctrd, "--rm", ref, "r1", "sh", "-c", "cat /etc/extra; echo $$")
    assert result.stdout.splitlines()[-1] == "1"
    assert ctrd.ctr("containers", "ls", "-q").stdout.split() == []
    assert ctrd.ctr("tasks", "ls", "-q").stdout.split() == []


def test_run_rm_exit_status_is_ctrs(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    result = run(ctrd, "--rm", ref, "r3", "sh", "-c", "exit 3", check=False)
    assert result.returncode == 3, result.stderr


def test_run_rm_reads_stdin(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    result = run(ctrd, "--rm", ref, "si1", "cat", input="hello-through-stdin\n")
    assert result.stdout == "hello-through-stdin\n"


def script(command: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a command on a terminal, as `script` gives it one."""
    return subprocess.run(
        ["script", "-qec", shlex.join(command), "/dev/null"],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def ctr_command(ctrd: Ctrd, *args: str, ns: str = "default") -> list[str]:
    return ["ctr", "-a", ctrd.address, "-n", ns, *args]


def test_run_with_a_terminal(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    result = script(
        ctr_command(
            ctrd, "run", "--fifo-dir", ctrd.fifo_dir(), "-t", "--rm", ref, "t1",
            "sh", "-c", "echo hi-tty; tty; exit 3",
        )
    )  # fmt: skip
    assert result.returncode == 3, result
    assert "hi-tty" in result.stdout
    assert "/dev/pts/0" in result.stdout


def test_detached_task_lifecycle(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    run(ctrd, "-d", ref, "d1", "sleep", "1000")
    [line] = ctrd.ctr("tasks", "ls").stdout.splitlines()[1:]
    task, pid, status = line.split()
    assert (task, status) == ("d1", "RUNNING")
    assert pid in ctrd.ctr("tasks", "ps", "d1").stdout.split()

    out = ctrd.ctr("tasks", "exec", "--fifo-dir", ctrd.fifo_dir(), "--exec-id", "x", "d1",
                   "sh", "-c", "echo hi; exit 4", check=False)  # fmt: skip
    assert (out.returncode, out.stdout) == (4, "hi\n")
    tty = script(ctr_command(ctrd, "tasks", "exec", "--fifo-dir", ctrd.fifo_dir(), "-t",
                             "--exec-id", "xt", "d1", "sh", "-c", "echo hi-tty"))  # fmt: skip
    assert tty.returncode == 0, tty
    assert "hi-tty" in tty.stdout

    ctrd.ctr("tasks", "pause", "d1")
    assert ctrd.ctr("tasks", "ls").stdout.split()[-1] == "PAUSED"
    ctrd.ctr("tasks", "resume", "d1")
    assert ctrd.ctr("tasks", "ls").stdout.split()[-1] == "RUNNING"
    metrics = ctrd.ctr("tasks", "metrics", "d1").stdout
    assert "memory.usage_in_bytes" in metrics or "memory.current" in metrics, metrics

    ctrd.ctr("tasks", "kill", "d1")  # SIGTERM: pid 1 without a handler ignores it
    time.sleep(0.2)
    assert ctrd.ctr("tasks", "ls").stdout.split()[-1] == "RUNNING"
    ctrd.ctr("tasks", "kill", "-s", "KILL", "d1")
    wait_for(lambda: ctrd.ctr("tasks", "ls").stdout.split()[-1] == "STOPPED")
    assert ctrd.ctr("tasks", "kill", "d1", check=False).returncode != 0  # already finished
    ctrd.ctr("tasks", "rm", "d1")
    assert ctrd.ctr("tasks", "ls", "-q").stdout.split() == []
    ctrd.ctr("containers", "rm", "d1")
    assert ctrd.ctr("containers", "ls", "-q").stdout.split() == []


def test_kill_all_and_force_delete(ctrd, busybox_image):
    ref = pull(ctrd, busybox_image)
    run(ctrd, "-d", ref, "k1", "sh", "-c", "sleep 1000 & sleep 1000")
    ctrd.ctr("tasks", "kill", "-a", "-s", "KILL", "k1")
    wait_for(lambda: ctrd.ctr("tasks", "ls").stdout.split()[-1] == "STOPPED")
    ctrd.ctr("tasks", "rm", "k1")
    run(ctrd, "-d", ref, "k2", "sleep", "1000")
    assert ctrd.ctr("tasks", "rm", "k2", check=False).returncode != 0  # running
    ctrd.ctr("tasks", "rm", "-f", "k2")
    assert ctrd.ctr("tasks", "ls", "-q").stdout.split() == []


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)
