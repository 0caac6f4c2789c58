"""Work done inside a pinned network namespace without moving any of the daemon's threads.

`run_in(pin, fn)` runs `fn` on a short-lived thread that joins the namespace (setns on the
pin's fd), and returns what it returned or raises what it raised, on the caller's thread. The
caller's thread never changes namespace: a pool thread that did would take the namespace to
its next work. Sockets made there stay in that namespace (the embedded DNS's listeners, the
CRI port-forward's connections); files read there (/proc/thread-self/net/dev) are its own.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class SetnsError(OSError):
    """The pin was opened but its namespace could not be joined (not a namespace any more)."""


def run_in(pin: str | Path, fn: Callable[[], T], name: str = "netns") -> T:
    """Blocking: `fn()` in the network namespace pinned at `pin`: OSError if the pin cannot
    be opened, SetnsError if it cannot be joined."""
    nsfd = os.open(pin, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return run_in_fd(nsfd, fn, name, os.fspath(pin))
    finally:
        os.close(nsfd)


def run_in_fd(nsfd: int, fn: Callable[[], T], name: str = "netns", where: str = "") -> T:
    """Blocking: `fn()` in the network namespace open at `nsfd` (the caller's to close);
    SetnsError (naming `where`) if it cannot be joined."""
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            if _libc.setns(nsfd, CLONE_NEWNET) != 0:
                code = ctypes.get_errno()
                raise SetnsError(code, f"setns: {os.strerror(code)}", *([where] if where else []))
            result.append(fn())
        except BaseException as e:  # handed to the caller's thread
            failure.append(e)

    worker = threading.Thread(target=run, name=name)
    worker.start()
    worker.join()
    if failure:
        raise failure[0]
    return result[0]
