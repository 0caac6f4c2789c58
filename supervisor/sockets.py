"""The daemon's unix sockets at start: one left by a daemon that died is removed; one that a
live process still serves, or a path that is not a socket, is refused (FailedPrecondition)."""

from __future__ import annotations

import os
import socket
import stat

from supervisor.errors import FailedPrecondition


def clear_stale_socket(address: str, what: str = "address") -> None:
    """Remove a socket left by a daemon that died; refuse one that something still serves.
    `what` names the setting in the errors (`address`, `[debug] address`)."""
    try:
        mode = os.lstat(address).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FailedPrecondition(f'{what} "{address}" exists and is not a socket')
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(address)
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(address)
            return
    raise FailedPrecondition(f'{what} "{address}" is in use by another process')
