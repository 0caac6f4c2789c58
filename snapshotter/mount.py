"""Performing the mounts a snapshotter returns, and undoing them.

Mounts are made with mount(2) and umount2(2) called through ctypes (`snapshotter.linux`), not
with the `mount` binary: no fork and exec per mount (the daemon mounts on every diff and task
start), the kernel's errno reaches the caller intact, and nothing depends on how a given
util-linux parses or rewrites options (libmount ≥ 2.39 switches to the new mount API and
applies its own rules to overlay options). The cost is that we parse options into flags and
data ourselves — containerd's table, below, pure and unit-tested (`plan`).

Invariants:

- `mount_all` mounts everything or nothing: when one mount fails, the ones it made already
  are unmounted (and only those) before the error is raised.
- `unmount` leaves no mount on its target: it unmounts what is stacked there until the kernel
  says the path is not a mount point, retries EBUSY for a while and then detaches lazily
  (MNT_DETACH: gone from the namespace at once, released by the kernel when its last user
  leaves). It never follows a symlink at the target. Unmounting a path that is not mounted
  (or does not exist) is not an error, so cleanup code can always call it.
- The kernel copies mount(2)'s data into one page. An overlay whose options come to
  pagesize - 512 bytes or more (containerd's threshold) has its `lowerdir`, `upperdir` and
  `workdir` rewritten relative to their longest common parent directory, and the mount(2) is
  made from a short-lived thread that unshared its filesystem context (unshare(CLONE_FS)) and
  chdir'ed there — the kernel resolves relative paths against the calling thread's cwd. The
  process's own cwd never changes, and no fork of a threaded Python process is needed. With
  snapshot ids as directory names (`123/fs`) several hundred lowers fit in a page, beyond
  overlay's own limit of 500 layers. Options still too long after that fail with E2BIG
  before any system call.
- A bind mount asked to be read-only (`ro` with `bind`/`rbind`) gets the remount that makes
  it so: MS_RDONLY is ignored by the initial bind.

Blocking: these functions make system calls (umount may sync a filesystem and `unmount` may
sleep on EBUSY): call them from a worker thread (`asyncio.to_thread`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from snapshotter import linux
from snapshotter.protocol import Mount
from supervisor.errors import CtrdError

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

# option -> (clear these flags, set these flags); everything else is filesystem data.
_FLAGS: dict[str, tuple[int, int]] = {
    "async": (linux.MS_SYNCHRONOUS, 0),
    "atime": (linux.MS_NOATIME, 0),
    "bind": (0, linux.MS_BIND),
    "defaults": (0, 0),
    "dev": (linux.MS_NODEV, 0),
    "diratime": (linux.MS_NODIRATIME, 0),
    "dirsync": (0, linux.MS_DIRSYNC),
    "exec": (linux.MS_NOEXEC, 0),
    "mand": (0, linux.MS_MANDLOCK),
    "noatime": (0, linux.MS_NOATIME),
    "nodev": (0, linux.MS_NODEV),
    "nodiratime": (0, linux.MS_NODIRATIME),
    "noexec": (0, linux.MS_NOEXEC),
    "nomand": (linux.MS_MANDLOCK, 0),
    "norelatime": (linux.MS_RELATIME, 0),
    "nostrictatime": (linux.MS_STRICTATIME, 0),
    "nosuid": (0, linux.MS_NOSUID),
    "nosymfollow": (0, linux.MS_NOSYMFOLLOW),
    "rbind": (0, linux.MS_BIND | linux.MS_REC),
    "relatime": (0, linux.MS_RELATIME),
    "remount": (0, linux.MS_REMOUNT),
    "ro": (0, linux.MS_RDONLY),
    "rw": (linux.MS_RDONLY, 0),
    "strictatime": (0, linux.MS_STRICTATIME),
    "suid": (linux.MS_NOSUID, 0),
    "sync": (0, linux.MS_SYNCHRONOUS),
}
_PROPAGATION: dict[str, int] = {
    "private": linux.MS_PRIVATE,
    "rprivate": linux.MS_PRIVATE | linux.MS_REC,
    "shared": linux.MS_SHARED,
    "rshared": linux.MS_SHARED | linux.MS_REC,
    "slave": linux.MS_SLAVE,
    "rslave": linux.MS_SLAVE | linux.MS_REC,
    "unbindable": linux.MS_UNBINDABLE,
    "runbindable": linux.MS_UNBINDABLE | linux.MS_REC,
}
_PROPAGATION_TYPES = linux.MS_PRIVATE | linux.MS_SHARED | linux.MS_SLAVE | linux.MS_UNBINDABLE
_OVERLAY_DIRS = ("lowerdir=", "upperdir=", "workdir=")
_BUSY_RETRY = 0.05  # seconds between attempts on EBUSY
_BUSY_TIMEOUT = 2.0  # seconds of EBUSY before a lazy unmount


class MountError(CtrdError):
    """A mount(2) or umount2(2) that failed; `errno` is the kernel's answer."""

    kind = "mount failed"

    def __init__(self, detail: str, code: int) -> None:
        super().__init__(detail)
        self.errno = code


@dataclass(frozen=True)
class MountCall:
    """One mount, resolved to what mount(2) takes, plus what to do around it."""

    source: str
    target: str
    fstype: str | None
    flags: int  # without propagation flags
    data: str
    propagation: int = 0  # a second mount(2) changes the propagation type when set
    cwd: str | None = None  # the directory relative overlay paths are resolved from
    remount_readonly: bool = False  # a read-only bind needs a remount to be read-only


def parse_options(options: Sequence[str]) -> tuple[int, int, list[str]]:
    """containerd's parseMountOptions: (flags, propagation flags, data options)."""
    flags = 0
    propagation = 0
    data: list[str] = []
    for option in options:
        if option in _FLAGS:
            clear, set_ = _FLAGS[option]
            flags = (flags & ~clear) | set_
        elif option in _PROPAGATION:
            propagation |= _PROPAGATION[option]
        else:
            data.append(option)
    return flags, propagation, data


def compact_overlay_dirs(data: Sequence[str]) -> tuple[str | None, list[str]]:
    """Rewrite overlay's directory options relative to their longest common parent.

    Returns (that parent, the new options), or (None, the options unchanged) when there is
    nothing to gain: no lowerdir, or no common parent below `/`. The common parent is always a
    proper ancestor of every directory (so no path becomes `.`), and the options keep their
    order. Paths are taken as they are written (absolute, already clean), as snapshotters make
    them.
    """
    dirs: list[str] = []
    for option in data:
        for prefix in _OVERLAY_DIRS:
            if option.startswith(prefix):
                value = option[len(prefix) :]
                dirs.extend(value.split(":") if prefix == "lowerdir=" else [value])
    if not any(o.startswith("lowerdir=") for o in data) or not all(d.startswith("/") for d in dirs):
        return None, list(data)
    common = os.path.commonpath(dirs)
    if common in dirs:
        common = os.path.dirname(common)
    if common == "/":
        return None, list(data)

    def relative(path: str) -> str:
        return os.path.relpath(path, common)

    out = []
    for option in data:
        name = next((p for p in _OVERLAY_DIRS if option.startswith(p)), None)
        if name is None:
            out.append(option)
        elif name == "lowerdir=":
            out.append(name + ":".join(relative(d) for d in option[len(name) :].split(":")))
        else:
            out.append(name + relative(option[len(name) :]))
    return common, out


def plan(mount: Mount, target: Path, page_size: int = PAGE_SIZE) -> MountCall:
    """What to do to perform `mount` on `target` (pure: nothing is touched)."""
    flags, propagation, data = parse_options(mount.options)
    where = str(target / mount.target.lstrip("/")) if mount.target else str(target)
    cwd: str | None = None
    if mount.type == "overlay" and len(",".join(data)) >= page_size - 512:
        cwd, data = compact_overlay_dirs(data)
    joined = ",".join(data)
    if len(joined) + 1 > page_size:  # the kernel copies one page, NUL included
        raise MountError(
            f"mount {mount.type} on {where}: mount options is too long "
            f"({len(joined)} bytes, the limit is {page_size - 1})",
            errno.E2BIG,
        )
    bind = flags & linux.MS_BIND != 0
    return MountCall(
        source=mount.source,
        target=where,
        fstype=None if bind else mount.type,
        flags=flags,
        data=joined,
        propagation=propagation,
        cwd=cwd,
        remount_readonly=bind and flags & linux.MS_RDONLY != 0,
    )


def perform(call: MountCall) -> None:
    """Make one planned mount, with its propagation change and read-only remount.

    If a later step fails, the mount just made is undone before the error is raised.
    """

    def do_mount() -> None:
        linux.mount(call.source, call.target, call.fstype, call.flags, call.data or None)

    mounted = False
    try:
        if call.flags & linux.MS_REMOUNT == 0 or call.data:
            if call.cwd is None:
                do_mount()
            else:
                _in_directory(call.cwd, do_mount)
            mounted = call.flags & linux.MS_REMOUNT == 0
        if call.propagation:
            pflags = (call.propagation | call.flags) & (
                _PROPAGATION_TYPES | linux.MS_REC | linux.MS_SILENT
            )
            linux.mount(None, call.target, None, pflags, None)
        if call.remount_readonly:
            linux.mount(None, call.target, None, call.flags | linux.MS_REMOUNT, None)
    except OSError as e:
        if mounted:
            _unmount_one(Path(call.target), time.monotonic() + _BUSY_TIMEOUT)
        shown = call.data if len(call.data) <= 256 else f"{call.data[:256]}… ({len(call.data)} B)"
        raise MountError(
            f"mount {call.fstype or 'bind'} {call.source} on {call.target} "
            f"(options {shown!r}{f', from {call.cwd}' if call.cwd else ''}): "
            f"{os.strerror(e.errno or 0)}",
            e.errno or 0,
        ) from e


def mount_all(mounts: Sequence[Mount], target: Path) -> None:
    """Perform `mounts` in order on `target` (an existing directory): all of them or none."""
    calls = [plan(m, target) for m in mounts]
    done: list[MountCall] = []
    try:
        for call in calls:
            perform(call)
            done.append(call)
    except BaseException:
        for call in reversed(done):  # only ours: a mount already on the target stays
            if call.flags & linux.MS_REMOUNT == 0:
                _unmount_one(Path(call.target), time.monotonic() + _BUSY_TIMEOUT)
        raise


def unmount(target: Path, busy_timeout: float = _BUSY_TIMEOUT) -> None:
    """Remove every mount stacked on `target`; see the module docstring."""
    deadline = time.monotonic() + busy_timeout
    while _unmount_one(target, deadline):
        pass


def _unmount_one(target: Path, deadline: float) -> bool:
    """Unmount the top mount on `target`; False if there was none."""
    while True:
        try:
            linux.umount2(target, linux.UMOUNT_NOFOLLOW)
            return True
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.ENOENT):
                return False  # not (or no longer) a mount point
            if e.errno != errno.EBUSY:
                detail = f"unmount {target}: {os.strerror(e.errno or 0)}"
                raise MountError(detail, e.errno or 0) from e
        if time.monotonic() < deadline:
            time.sleep(_BUSY_RETRY)
            continue
        try:
            linux.umount2(target, linux.MNT_DETACH | linux.UMOUNT_NOFOLLOW)
            return True
        except OSError as e:
            detail = f"unmount {target} (lazily): {os.strerror(e.errno or 0)}"
            raise MountError(detail, e.errno or 0) from e


@contextlib.contextmanager
def temp_mount(mounts: Sequence[Mount], parent: Path) -> Iterator[Path]:
    """containerd's WithTempMount: mount on a new directory under `parent`, undo at exit."""
    directory = Path(tempfile.mkdtemp(prefix="mount-", dir=parent))
    try:
        mount_all(mounts, directory)
        try:
            yield directory
        finally:
            unmount(directory)
    finally:
        with contextlib.suppress(OSError):  # not empty: something wrote into the mount point
            directory.rmdir()


def _in_directory(directory: str, fn: Callable[[], None]) -> None:
    """Run `fn` on a new thread whose cwd (and only its cwd) is `directory`."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            linux.unshare(linux.CLONE_FS)  # from now on chdir moves this thread only
            os.chdir(directory)
            fn()
        except BaseException as e:
            failure.append(e)

    thread = threading.Thread(target=run, name="mount-in-dir", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
