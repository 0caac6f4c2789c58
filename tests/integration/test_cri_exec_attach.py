"""Exec and attach over the streaming server, driven by the real crictl (client-go's SPDY
executor): output to the last byte before the status, stdin and its end, the exit code, a
terminal in a pty with its resize, attach to a container's main process; and nothing left
(exec process, FIFO, fd, connection) when the client goes away in the middle."""

from __future__ import annotations

import fcntl
import os
import select
import signal
import struct
import subprocess
import termios
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.cri import CRICTL, CriNode

pytestmark = pytest.mark.integration


def _crictl(node: CriNode, *args: str) -> list[str]:
    return [
        CRICTL, "--config", str(node.crictl_config),
        "--runtime-endpoint", node.endpoint, "--image-endpoint", node.endpoint, *args,
    ]  # fmt: skip


def _wait(condition: Callable[[], bool], within: float = 10, what: str = "") -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within}s: {what}")
        time.sleep(0.05)


def _daemon_fds(node: CriNode) -> list[str]:
    pid = node.ctrd.proc.pid
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            found.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:
            continue
    return sorted(found)


def _same_fds(node: CriNode, before: list[str]) -> None:
    """No fd the daemon did not have before is left (one it had may have closed since: a
    connection of an earlier crictl)."""
    deadline = time.monotonic() + 10
    while new := sorted((Counter(_daemon_fds(node)) - Counter(before)).elements()):
        if time.monotonic() > deadline:
            pytest.fail(f"the daemon still holds {new}")
        time.sleep(0.05)


def _host_processes(argv: str) -> list[int]:
    """The pids whose command line is exactly `argv` (words split on spaces)."""
    wanted = argv.replace(" ", "\0").encode() + b"\0"
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if cmdline == wanted:
            pids.append(int(entry))
    return pids


def _exec_fifos(node: CriNode) -> list[str]:
    streams = node.ctrd.state / "cri" / "streams"
    return sorted(os.listdir(streams)) if streams.exists() else []


def _shim_processes(node: CriNode, cid: str) -> list[str]:
    return node.ctr("tasks", "ps", cid).stdout.strip().splitlines()[1:]


@pytest.fixture
def shell(cri_node: CriNode) -> tuple[CriNode, str]:
    pod = cri_node.run_pod("streams")
    cid = cri_node.run_container(pod, "streams", "sh", ["sh", "-c", "sleep 3600"])
    return cri_node, cid


def test_exec_gives_stdout_stderr_and_the_exit_code(shell: tuple[CriNode, str]):
    node, cid = shell
    done = node.crictl("exec", cid, "sh", "-c", "echo out; echo err >&2; exit 3", check=False)
    assert done.stdout == "out\n"
    assert "err\n" in done.stderr
    assert "command terminated with exit code 3" in done.stderr
    ok = node.crictl("exec", cid, "echo", "hello")
    assert ok.stdout == "hello\n"
    missing = node.crictl("exec", cid, "no-such-command", check=False)
    assert missing.returncode != 0
    assert "executable file not found" in missing.stderr  # the runtime's words, no traceback


def test_exec_delivers_every_byte_before_the_status(shell: tuple[CriNode, str]):
    node, cid = shell
    script = "head -c 3000000 /dev/zero | tr '\\0' x; printf END"
    done = node.crictl("exec", cid, "sh", "-c", script)
    assert len(done.stdout) == 3_000_003
    assert done.stdout.endswith("xEND")


def test_exec_stdin_reaches_the_process_and_its_end_closes_it(shell: tuple[CriNode, str]):
    node, cid = shell
    done = subprocess.run(
        _crictl(node, "exec", "-i", cid, "sh", "-c", "wc -c; echo closed"),
        input=b"y" * 200_000, capture_output=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [b"200000", b"closed"]


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _read_until(master: int, needle: bytes, within: float = 15) -> bytes:
    seen = b""
    deadline = time.monotonic() + within
    while needle not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"{needle!r} not seen; got {seen[-500:]!r}")
        ready, _, _ = select.select([master], [], [], left)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: crictl has gone
                break
            seen += chunk
    return seen


def test_exec_it_in_a_pty_a_shell_a_resize_and_exit_3(shell: tuple[CriNode, str]):
    node, cid = shell
    master, slave = os.openpty()
    _set_size(slave, 30, 100)

    def controlling_tty() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    crictl = subprocess.Popen(
        _crictl(node, "exec", "-it", cid, "sh"),
        stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
        preexec_fn=controlling_tty,
    )  # fmt: skip
    os.close(slave)
    try:
        os.write(master, b"stty size; tty\n")
        _read_until(master, b"30 100")
        _set_size(master, 40, 120)  # SIGWINCH to crictl, which sends the new size
        time.sleep(0.3)
        os.write(master, b"stty size\n")
        _read_until(master, b"40 120")
        os.write(master, b"exit 3\n")
        tail = _read_until(master, b"exit code 3")
        assert crictl.wait(timeout=15) != 0, tail
    finally:
        if crictl.poll() is None:
            crictl.kill()
            crictl.wait()
        os.close(master)
    _wait(lambda: len(_shim_processes(node, cid)) == 1, what="the exec deleted from the shim")
    assert _exec_fifos(node) == []


def test_a_client_gone_mid_stream_leaves_nothing(shell: tuple[CriNode, str]):
    node, cid = shell
    node.crictl("exec", cid, "true")  # the server started, its listener's fds counted
    before = _daemon_fds(node)
    for args in (["exec", cid, "sleep", "4321"], ["exec", "-i", cid, "sleep", "4322"]):
        crictl = subprocess.Popen(
            _crictl(node, *args), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        needle = args[-1]
        _wait(lambda n=needle: bool(_host_processes(f"sleep {n}")), what="exec running")  # type: ignore[misc]
        assert _exec_fifos(node) != []
        crictl.send_signal(signal.SIGKILL)
        crictl.wait()
        assert crictl.stdin is not None
        crictl.stdin.close()
        _wait(lambda n=needle: not _host_processes(f"sleep {n}"), what="exec killed")  # type: ignore[misc]
    _wait(lambda: _exec_fifos(node) == [], what="exec FIFOs removed")
    _wait(lambda: len(_shim_processes(node, cid)) == 1, what="execs deleted from the shim")
    _same_fds(node, before)


def test_attach_feeds_stdin_once_and_shows_the_output(cri_node: CriNode):
    pod = cri_node.run_pod("attach")
    cid = cri_node.run_container(pod, "attach", "sh", ["sh"], stdin=True, stdin_once=True)
    done = subprocess.run(
        _crictl(cri_node, "attach", "-i", cid),
        input=b"echo -n hello\necho oops >&2\n", capture_output=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"hello"
    assert b"oops" in done.stderr
    # stdin_once: the client's end was the container's; its sh has exited.
    _wait(
        lambda: cri_node.json("inspect", cid)["status"]["state"] == "CONTAINER_EXITED",
        what="the container exits after its stdin closed",
    )


def test_attach_shows_a_running_containers_output_and_leaves_nothing(cri_node: CriNode):
    pod = cri_node.run_pod("ticker")
    cid = cri_node.run_container(
        pod,
        "ticker",
        "sh",
        ["sh", "-c", "i=0; while true; do echo tick$i; i=$((i+1)); sleep 0.1; done"],
    )
    cri_node.crictl("exec", cid, "true")  # the server started
    time.sleep(1)  # output nobody reads: the FIFOs fill and the shim drops it, never waiting
    before = _daemon_fds(cri_node)
    for _ in range(2):
        crictl = subprocess.Popen(_crictl(cri_node, "attach", cid), stdout=subprocess.PIPE)
        assert crictl.stdout is not None
        line = crictl.stdout.readline()
        assert line.startswith(b"tick"), line
        crictl.send_signal(signal.SIGKILL)
        crictl.wait()
        crictl.stdout.close()
    _same_fds(cri_node, before)
    # the log has everything, attached or not
    log = (cri_node.logs / "ticker" / "sh.log").read_text().splitlines()
    assert [r.split()[-1] for r in log[:3]] == ["tick0", "tick1", "tick2"]
    assert cri_node.json("inspect", cid)["status"]["state"] == "CONTAINER_RUNNING"
