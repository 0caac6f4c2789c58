"""The few Linux system calls the `os` module lacks, called through ctypes.

Each wrapper raises `OSError` with the call's errno (and the path it was about) on failure,
like the `os` functions do, so callers handle both the same way. Only glibc's exported
symbols are used: `mount`, `umount2`, `unshare`, `opendir`/`readdir64`/`closedir`.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

# <linux/mount.h>
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_MANDLOCK = 64
MS_DIRSYNC = 128
MS_NOSYMFOLLOW = 256
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_SILENT = 32768
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24

MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8

CLONE_FS = 0x200

DT_UNKNOWN = 0

_libc = ctypes.CDLL("libc.so.6", use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.mount.restype = ctypes.c_int
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.umount2.restype = ctypes.c_int
_libc.unshare.argtypes = [ctypes.c_int]
_libc.unshare.restype = ctypes.c_int


class _Dirent64(ctypes.Structure):
    # struct dirent64 (glibc, every Linux architecture)
    _fields_ = (
        ("d_ino", ctypes.c_uint64),
        ("d_off", ctypes.c_int64),
        ("d_reclen", ctypes.c_ushort),
        ("d_type", ctypes.c_ubyte),
        ("d_name", ctypes.c_char * 256),
    )


_libc.opendir.argtypes = [ctypes.c_char_p]
_libc.opendir.restype = ctypes.c_void_p
_libc.readdir64.argtypes = [ctypes.c_void_p]
_libc.readdir64.restype = ctypes.POINTER(_Dirent64)
_libc.closedir.argtypes = [ctypes.c_void_p]
_libc.closedir.restype = ctypes.c_int


def _encode(value: str | Path | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def _fail(what: str, path: str | Path | None = None) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, f"{what}: {os.strerror(code)}", None if path is None else str(path))


def mount(
    source: str | None, target: str | Path, fstype: str | None, flags: int, data: str | None
) -> None:
    if _libc.mount(_encode(source), _encode(target), _encode(fstype), flags, _encode(data)):
        raise _fail("mount", target)


def umount2(target: str | Path, flags: int) -> None:
    if _libc.umount2(_encode(target), flags):
        raise _fail("umount", target)


def unshare(flags: int) -> None:
    if _libc.unshare(flags):
        raise _fail("unshare")


def d_types(directory: str | Path) -> dict[str, int]:
    """Each entry's `d_type` as readdir(3) reports it (DT_UNKNOWN = the fs does not say)."""
    handle = _libc.opendir(_encode(directory))
    if not handle:
        raise _fail("opendir", directory)
    out: dict[str, int] = {}
    try:
        ctypes.set_errno(0)
        while entry := _libc.readdir64(handle):
            out[os.fsdecode(entry.contents.d_name)] = entry.contents.d_type
        if ctypes.get_errno():
            raise _fail("readdir", directory)
    finally:
        _libc.closedir(handle)
    return out
