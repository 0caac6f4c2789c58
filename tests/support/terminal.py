"""Run a client on a pseudo-terminal, as a person at a terminal would, for `-it` tests."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Mapping


def run_in_pty(
    argv: list[str],
    typed: bytes,
    env: Mapping[str, str] | None = None,
    rows: int = 30,
    columns: int = 100,
    prompt: bytes = b"#",
    timeout: float = 30,
    resize_to: tuple[int, int] | None = None,
    resize_after: float = 1.0,
) -> tuple[bytes, int]:
    """Run `argv` on a new pseudo-terminal of `rows` x `columns`; type `typed` once `prompt`
    has appeared (a shell in the container is up); if asked, `resize_after` seconds later
    resize the terminal to `resize_to` (rows, columns) and tell the client (SIGWINCH). Its
    whole output and exit status."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    proc = subprocess.Popen(
        argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
    )
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    resize_at = float("inf")
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.05)
            if ready:
                try:
                    data = os.read(master, 4096)
                except OSError:  # EIO: the client exited and nothing is left
                    break
                if not data:
                    break
                out += data
            if typed and prompt in out:
                os.write(master, typed)
                typed = b""
                resize_at = time.monotonic() + resize_after
            if resize_to is not None and time.monotonic() >= resize_at:
                winsize = struct.pack("HHHH", *resize_to, 0, 0)
                fcntl.ioctl(master, termios.TIOCSWINSZ, winsize)
                proc.send_signal(signal.SIGWINCH)  # the pty is not its controlling terminal
                resize_to = None
        return out, proc.wait(timeout=10)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
