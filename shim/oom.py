"""Out-of-memory kills in a container's cgroup, as they happen (cgroup v1 memory controller).

The kernel signals an eventfd registered through `cgroup.event_control` for the cgroup's
`memory.oom_control` whenever the cgroup goes out of memory (before the victim is killed, so
the `oom_kill` counter may not have moved yet), and once more when the cgroup is removed. As
containerd does, a wake-up while the cgroup still exists is an OOM.

On a host where the memory controller is only in cgroup v2 there is no eventfd interface:
`watch` returns None there, and no `/tasks/oom` is published (containerd watches
`memory.events` with inotify; that is still to do).
"""

from __future__ import annotations

import contextlib
import os


def memory_cgroup(pid: int) -> str | None:
    """The directory of the v1 memory cgroup a process is in, or None."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = f.read().splitlines()
        with open("/proc/self/mountinfo") as f:
            mounts = f.read().splitlines()
    except OSError:
        return None
    path = next(
        (line.split(":", 2)[2] for line in lines if "memory" in line.split(":", 2)[1].split(",")),
        None,
    )
    if path is None:
        return None
    for mount in mounts:
        pre, _, post = mount.partition(" - ")
        fields = post.split()
        if len(fields) >= 3 and fields[0] == "cgroup" and "memory" in fields[2].split(","):
            root, point = pre.split()[3], pre.split()[4]
            relative = os.path.relpath(path, root) if root != "/" else path.lstrip("/")
            return os.path.normpath(os.path.join(point, relative))
    return None


class Watcher:
    """One container's OOM eventfd; `fileno` goes into the shim's loop."""

    def __init__(self, directory: str, efd: int, control: int) -> None:
        self.directory = directory
        self._efd = efd
        self._control = control

    def fileno(self) -> int:
        return self._efd

    def read(self) -> bool:
        """After a wake-up: True for an OOM, False when the cgroup is gone (stop watching)."""
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._efd)
        return os.path.exists(os.path.join(self.directory, "memory.oom_control"))

    def close(self) -> None:
        for fd in (self._efd, self._control):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._efd = self._control = -1


def watch(pid: int) -> Watcher | None:
    """Start watching the memory cgroup of `pid`; None where that cannot be done."""
    directory = memory_cgroup(pid)
    if directory is None:
        return None
    efd = control = -1
    try:
        efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        control = os.open(os.path.join(directory, "memory.oom_control"), os.O_RDONLY | os.O_CLOEXEC)
        with open(os.path.join(directory, "cgroup.event_control"), "w") as f:
            f.write(f"{efd} {control}")
        return Watcher(directory, efd, control)
    except OSError:
        for fd in (efd, control):
            if fd >= 0:
                os.close(fd)
        return None
