"""A logged init's exit is announced only once its output is in the log (issue 17): kubelet
reads a CRI container's log as soon as it sees it EXITED.

The shim here runs in the test's process on a real log and real pipes; the process is a real
child that wrote its output and exited before the shim read any of it (what a shim busy with a
request, or handed its SIGCHLD before the pipe's readiness, sees), and its reaping is handed to
the shim as `_match_exits` hands it over.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shim import stdio, task
from shim.states import RUNNING, STOPPED

LINES = 1000  # of 49 bytes and a newline: 50 kB, all of it in the pipes when the process exits


@pytest.fixture
def shim(tmp_path: Path) -> Iterator[task.Shim]:
    path = str(tmp_path / "shim.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    config = task.Config(
        "default", "c1", str(tmp_path), path, "", "runc", str(tmp_path / "runc")
    )  # fmt: skip
    made = task.Shim(config, listener)
    try:
        yield made
    finally:
        made._cleanup()


def exited_child(shim: task.Shim, log: Path, script: str, holder: bool = False) -> Any:
    """The init: a child whose stdout and stderr go to the shim's CRI log, which has exited
    (its output still in the pipes); with `holder`, a write end is kept open as a background
    process left behind would keep it. (process, holder fd or -1)."""
    uri = f"ctrd-log://{log}?format=cri"
    io = stdio.Io(shim.reactor, "", uri, uri, False, "default", "c1")
    _, out, err = io.fds
    held = os.dup(out) if holder else -1
    child = subprocess.Popen(["/bin/sh", "-c", script], stdout=out, stderr=err)
    io.runtime_started()
    child.wait()
    process = task.Process("", io)
    process.pid, process.status = child.pid, RUNNING
    shim.init = process
    return process, held


def spy_exits(shim: task.Shim, log: Path) -> list[tuple[int, int]]:
    """(exit status, lines in the log) for each /tasks/exit the shim emits."""
    seen: list[tuple[int, int]] = []
    emit = shim.emit

    def spy(topic: str, event: dict[str, Any]) -> int:
        if topic == "/tasks/exit":
            seen.append((event["exit_status"], log.read_bytes().count(b"\n")))
        return emit(topic, event)

    shim.emit = spy  # type: ignore[method-assign]
    return seen


def turn(shim: task.Shim, until: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not until() and time.monotonic() < deadline:
        shim.reactor.poll(0.01)
        shim._run_timers()


def test_the_exit_is_announced_once_the_output_is_in_the_log(shim: task.Shim, tmp_path: Path):
    log = tmp_path / "pod" / "0.log"
    seen = spy_exits(shim, log)
    script = f"yes {'x' * 49} | head -n {LINES - 1}; echo last >&2; exit 3"
    process, _ = exited_child(shim, log, script)
    answered: list[dict[str, Any]] = []
    shim.do_wait({}, answered.append)

    shim._exited(process, 3)  # as reaped before the pipes were read
    assert seen == []  # the output is still in the pipes
    assert process.status == RUNNING  # running to every call until then
    assert answered == []
    turn(shim, lambda: bool(seen))
    assert seen == [(3, LINES)]
    assert process.status == STOPPED
    assert [a["exit_status"] for a in answered] == [3]
    records = log.read_bytes().splitlines()
    assert records[-1].endswith(b" stderr F last")
    assert [r.topic for r in shim.journal.since(0)] == ["/tasks/exit"]  # journaled, once
    turn(shim, lambda: False, 0.2)
    assert len(seen) == 1  # once


def test_a_pipe_held_by_another_process_delays_the_exit_only_until_the_drain_timeout(
    shim: task.Shim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(task, "EXIT_DRAIN_TIMEOUT", 0.3)
    log = tmp_path / "0.log"
    seen = spy_exits(shim, log)
    process, held = exited_child(shim, log, "echo before", holder=True)
    began = time.monotonic()
    shim._exited(process, 0)
    turn(shim, lambda: bool(seen))
    waited = time.monotonic() - began
    assert seen == [(0, 1)]  # what was written is logged, the holder's pipe still open
    assert 0.25 < waited < 2
    os.close(held)  # its end of file comes later: no second exit
    turn(shim, lambda: process.io.done)
    turn(shim, lambda: False, 0.2)
    assert len(seen) == 1


def test_an_init_without_a_log_is_announced_at_once(shim: task.Shim, tmp_path: Path):
    seen: list[str] = []
    emit = shim.emit
    shim.emit = lambda topic, event: (seen.append(topic), emit(topic, event))[1]  # type: ignore[method-assign]
    out = tmp_path / "out"
    io = stdio.Io(shim.reactor, "", f"file://{out}", f"file://{out}", False, "default", "c1")
    child = subprocess.Popen(["/bin/true"], stdout=io.fds[1], stderr=io.fds[2])
    io.runtime_started()
    child.wait()
    process = task.Process("", io)
    process.pid, process.status = child.pid, RUNNING
    shim.init = process
    shim._exited(process, 0)
    assert seen == ["/tasks/exit"]
