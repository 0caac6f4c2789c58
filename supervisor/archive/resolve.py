"""Paths inside a root, resolved as the kernel resolves them from there.

`Root.open` is openat2(2) with RESOLVE_IN_ROOT (Python 3.11's `os` has no openat2: a ctypes
syscall with `struct open_how`, Linux 5.6+): every symlink met on the way, absolute or
climbing with `..`, is resolved as if the root were `/`, so nothing outside the root is ever
reached, even while something inside it renames or swaps entries under us (the kernel retries
or fails with EAGAIN, never escapes). Magic links (/proc/self/fd/N inside a container) are
refused outright (RESOLVE_NO_MAGICLINKS).

`realpath` says, as a string, where a path leads inside the root (docker's
FollowSymlinkInScope: a missing tail is kept as it is written). It only reads (one O_PATH
open per component, never a host path), and what it returns is opened with `Root.open`
again, so it is never trusted to be safe by itself.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
from dataclasses import dataclass

SYS_OPENAT2 = 437  # the same number on every architecture (the unified syscall table)
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
MAX_SYMLINKS = 40  # the kernel's limit
_RETRIES = 64  # EAGAIN: a rename raced the lookup; the kernel asks us to try again


class _OpenHow(ctypes.Structure):
    _fields_ = (
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    )


_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def openat2(dir_fd: int, path: bytes | str, flags: int, mode: int = 0, resolve: int = 0) -> int:
    """openat2(2): an fd (O_CLOEXEC always), or OSError with the call's errno and path."""
    raw = os.fsencode(path)
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    for _ in range(_RETRIES):
        fd = _syscall(
            ctypes.c_long(SYS_OPENAT2),
            ctypes.c_int(dir_fd),
            ctypes.c_char_p(raw),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err not in (errno.EAGAIN, errno.EINTR):
            raise OSError(err, os.strerror(err), os.fsdecode(raw))
    raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN), os.fsdecode(raw))


@dataclass(frozen=True)
class Root:
    """An open directory taken as `/` for every path opened through it (its owner closes it)."""

    fd: int

    def open(self, path: bytes | str, flags: int, mode: int = 0) -> int:
        """`path` (absolute or not, both from the root) opened inside the root. With
        O_NOFOLLOW a final symlink is not followed (ELOOP, or the link itself with O_PATH)."""
        raw = os.fsencode(path) or b"/"
        return openat2(self.fd, raw, flags, mode, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)

    def lstat(self, path: bytes | str) -> os.stat_result:
        """The entry at `path`, its parents resolved inside the root, itself not followed."""
        fd = self.open(path, os.O_PATH | os.O_NOFOLLOW)
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def stat(self, path: bytes | str) -> os.stat_result:
        fd = self.open(path, os.O_PATH)
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)


def open_root(path: str | bytes | os.PathLike[str]) -> Root:
    """A root for a directory the caller chose (a host path: followed as given)."""
    return Root(os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))


def components(path: bytes) -> list[bytes]:
    return [part for part in path.split(b"/") if part and part != b"."]


def realpath(root: Root, path: bytes | str) -> bytes:
    """Where `path` leads inside `root`, every symlink followed as the kernel would from there,
    as an absolute path of the root; from the first missing component on, the rest is kept
    lexically (`..` still never climbs above the root). ELOOP after 40 links."""
    pending = list(reversed(components(os.fsencode(path))))
    done: list[bytes] = []
    missing = False
    links = 0
    while pending:
        part = pending.pop()
        if part == b"..":
            if done:
                done.pop()
            continue
        if missing:
            done.append(part)
            continue
        candidate = b"/" + b"/".join([*done, part])
        try:
            fd = root.open(candidate, os.O_PATH | os.O_NOFOLLOW)
        except FileNotFoundError:
            missing = True
            done.append(part)
            continue
        except NotADirectoryError:
            raise
        try:
            if not stat.S_ISLNK(os.fstat(fd).st_mode):
                done.append(part)
                continue
            links += 1
            if links > MAX_SYMLINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), os.fsdecode(path))
            target = os.readlink(b"", dir_fd=fd)
        finally:
            os.close(fd)
        if target.startswith(b"/"):
            done = []
        pending.extend(reversed(components(target)))
    return b"/" + b"/".join(done)
