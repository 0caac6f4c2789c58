"""Debugging a running daemon: SIGUSR1 logs its stacks, the `[debug] address` socket serves them."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Ctrd, require_binary

pytestmark = pytest.mark.integration


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(self._path)


def _get(path: str, url: str) -> tuple[int, str, bytes]:
    conn = _UnixHTTP(path)
    try:
        conn.request("GET", url)
        answer = conn.getresponse()
        return answer.status, answer.getheader("Content-Type") or "", answer.read()
    finally:
        conn.close()


@pytest.fixture
def debug_ctrd(short_tmp: Path) -> Iterator[Ctrd]:
    config = short_tmp / "debug.toml"
    config.write_text(f'[debug]\naddress = "{short_tmp}/debug/debug.sock"\n')
    daemon = Ctrd(short_tmp, ("--config", str(config)))
    daemon.start()
    try:
        yield daemon
    finally:
        status = daemon.stop()
        daemon.cleanup()
    assert status == 0, daemon.log()
    assert not os.path.exists(short_tmp / "debug" / "debug.sock")  # removed at the stop


def _stack_dump(daemon: Ctrd, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in daemon.log().splitlines():
            if line.startswith("{") and '"stack_dump"' in line:
                return str(json.loads(line)["stacks"])
        time.sleep(0.05)
    pytest.fail(f"no stack_dump in the log:\n{daemon.log()}")


def test_sigusr1_logs_every_thread_and_every_task_with_its_age(ctrd):
    assert ctrd.proc is not None
    ctrd.ctr("version")
    written = Path(f"/tmp/ctrd.{ctrd.proc.pid}.stacks.log")
    try:
        os.kill(ctrd.proc.pid, signal.SIGUSR1)
        text = _stack_dump(ctrd)
        # And kept in a file, as containerd does.
        deadline = time.monotonic() + 10
        while "task 'restart-monitor'" not in (written.read_text() if written.exists() else ""):
            assert time.monotonic() < deadline, "no stack file"
            time.sleep(0.05)
    finally:
        written.unlink(missing_ok=True)
    assert text.startswith("=== BEGIN stack dump ===\n")
    assert text.endswith("=== END stack dump ===")
    assert f"pid {ctrd.proc.pid}:" in text
    # The main thread, where the loop waits (not in the handler: the dump has its own thread).
    main = text.split("[MainThread]:", 1)[1].split("\n\n", 1)[0]
    assert "in run_forever" in main or "in _run_once" in main, main
    assert "in on_signal" not in main
    # Tasks, each with its age, and the coroutines they await through, to the innermost.
    monitor = text.split("task 'restart-monitor' [pending, ", 1)[1].split("\n\n", 1)[0]
    age = float(monitor.split("s old]", 1)[0])
    assert 0 < age < 60
    assert "supervisor/restart/monitor.py" in monitor
    assert "in run" in monitor
    assert "asyncio/queues.py" in monitor
    assert "in get" in monitor
    assert "awaiting <Future pending" in monitor
    ctrd.ctr("version")  # and it serves on


def test_debug_socket_serves_the_stacks_as_text_json_and_to_ctr_pprof(debug_ctrd):
    sock = str(debug_ctrd.base / "debug" / "debug.sock")
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o660

    status, kind, body = _get(sock, "/debug/stacks")
    assert (status, kind) == (200, "text/plain; charset=utf-8")
    assert "[MainThread]" in body.decode()
    assert "task 'gc'" in body.decode()

    status, kind, body = _get(sock, "/debug/stacks?format=json")
    assert (status, kind) == (200, "application/json")
    dump = json.loads(body)
    assert dump["pid"] == debug_ctrd.proc.pid
    assert any(t["name"] == "MainThread" for t in dump["threads"])
    monitor = next(t for t in dump["tasks"] if t["name"] == "restart-monitor")
    assert monitor["state"] == "pending"
    assert monitor["age"] > 0
    assert any("supervisor/restart/monitor.py" in frame for frame in monitor["stack"])

    status, _, _ = _get(sock, "/debug/pprof/heap")
    assert status == 404

    # containerd's client for its debug socket prints ours.
    out = subprocess.run(
        [require_binary("ctr"), "pprof", "-d", sock, "goroutines"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    assert "[MainThread]" in out
    assert "task 'restart-monitor'" in out
