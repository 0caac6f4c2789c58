"""A shim whose daemon went away before the runtime's create (the daemon died, or its test's
cleanup ran, between spawning the shim and `runc create`) exits on its own after
ORPHAN_TIMEOUT without a connection, removing its socket; one that still has its daemon, or a
task, stays."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.integration.test_tasks import wait_for

SHIM = r"""
import socket, sys
from shim import task
task.ORPHAN_TIMEOUT = 0.6
bundle, path = sys.argv[1], sys.argv[2]
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(path)
listener.listen()
config = task.Config("default", "orphan", bundle, path, "unix:///nowhere", "runc", bundle + "/r")
task.serve(config, listener)
"""


def _shim(short_tmp: Path, name: str) -> tuple[subprocess.Popen[bytes], Path]:
    bundle = short_tmp / name
    bundle.mkdir()
    path = short_tmp / f"{name}.sock"
    proc = subprocess.Popen(
        [sys.executable, "-c", SHIM, str(bundle), str(path)], stderr=subprocess.PIPE
    )
    wait_for(lambda: path.exists() and (bundle / "shim.pid").exists())
    return proc, path


def test_a_shim_without_task_or_daemon_exits(short_tmp):
    never, never_path = _shim(short_tmp, "never")  # its daemon never came
    left, left_path = _shim(short_tmp, "left")
    kept, kept_path = _shim(short_tmp, "kept")
    try:
        goes = socket.socket(socket.AF_UNIX)
        goes.connect(str(left_path))
        stays = socket.socket(socket.AF_UNIX)
        stays.connect(str(kept_path))
        time.sleep(0.3)
        goes.close()  # the daemon died before the create
        for proc in (never, left):
            assert proc.wait(timeout=10) == 0
            assert b'"orphaned"' in proc.stderr.read()
        assert not never_path.exists()
        assert not left_path.exists()
        time.sleep(1.5)
        assert kept.poll() is None  # its daemon is still there
        stays.close()
        assert kept.wait(timeout=10) == 0
        assert not kept_path.exists()
    finally:
        for proc in (never, left, kept):
            if proc.poll() is None:
                os.kill(proc.pid, 9)
                proc.wait()
            assert proc.stderr is not None
            proc.stderr.close()
