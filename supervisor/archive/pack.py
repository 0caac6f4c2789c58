"""A tar of what is at a path, as docker's archive API serves it.

`pack(parent_fd, name, top)` yields the tar, in chunks, of the entry `name` of the directory
open as `parent_fd`: a directory with everything under it, depth first and sorted, named
`top/...`; anything else as one entry named `top`. The walk never follows a symlink: each
directory is opened from its parent's fd with O_NOFOLLOW|O_DIRECTORY, each file with
O_NOFOLLOW (and O_NONBLOCK, so a FIFO swapped in cannot hang us; it is checked to still be a
regular file once open), so a container that changes its files while we read them can make
us read its own files only. Sockets are left out (tar has no type for them: docker skips them
too). A file with several links is stored once and then as hard links to its first name; the
`security.capability` xattr is kept, as docker keeps it. A file that shrinks while it is read
is padded with zeros to the size its header announced, one that grows is cut there.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from supervisor.diff.tarformat import (
    BLOCK,
    BLOCKDEV,
    CHARDEV,
    DIRECTORY,
    FIFO,
    HARDLINK,
    REGULAR,
    SYMLINK,
    Header,
    encode,
    end_of_archive,
)

CHUNK = 1 << 18  # what one message of the stream carries, roughly
_READ = 1 << 20  # one read, and one message, of a large file
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_CAPABILITY = "security.capability"


def pack(parent_fd: int, name: bytes, top: bytes) -> Iterator[bytes]:
    """The tar of `name` in `parent_fd`, its entries named after `top`; see the module doc."""
    writer = _Writer()
    pending: list[tuple[int, bytes, bytes] | int] = [(parent_fd, name, top)]
    opened: list[int] = []
    try:
        while pending:
            item = pending.pop()
            if isinstance(item, int):  # a directory whose entries were all written
                os.close(item)
                opened.remove(item)
                continue
            directory, entry, arcname = item
            child = writer.entry(directory, entry, arcname)
            if isinstance(child, _Data):
                yield from writer.data(child)
            elif child is not None:
                opened.append(child)
                pending.append(child)
                names = sorted(os.fsencode(n) for n in os.listdir(child))
                pending.extend((child, n, arcname + b"/" + n) for n in reversed(names))
            if writer.size >= CHUNK:
                yield writer.take()
        writer.add(end_of_archive())
        yield writer.take()
    finally:
        for fd in opened:
            os.close(fd)


class _Writer:
    def __init__(self) -> None:
        self._out = bytearray()
        self._links: dict[tuple[int, int], bytes] = {}

    @property
    def size(self) -> int:
        return len(self._out)

    def add(self, data: bytes) -> None:
        self._out += data

    def take(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def entry(self, parent: int, name: bytes, arcname: bytes) -> int | _Data | None:
        """Write one entry's header; for a directory, return its fd (the caller lists and
        closes it), for a regular file what to write after it (`data`)."""
        try:
            st = os.lstat(name, dir_fd=parent)
        except FileNotFoundError:
            return None  # removed while we walked: as if it was never there
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            fd = os.open(name, _DIR, dir_fd=parent)
            self.add(encode(_header(arcname + b"/", DIRECTORY, st)))
            return fd
        if stat.S_ISREG(mode):
            if st.st_nlink > 1:
                first = self._links.setdefault((st.st_dev, st.st_ino), arcname)
                if first != arcname:
                    self.add(encode(_header(arcname, HARDLINK, st, linkname=first)))
                    return None
            return self._file(parent, name, arcname)
        if stat.S_ISLNK(mode):
            target = os.readlink(name, dir_fd=parent)
            self.add(encode(_header(arcname, SYMLINK, st, linkname=target)))
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
            kind = CHARDEV if stat.S_ISCHR(mode) else BLOCKDEV if stat.S_ISBLK(mode) else FIFO
            self.add(encode(_header(arcname, kind, st)))
        return None  # sockets: nothing

    def _file(self, parent: int, name: bytes, arcname: bytes) -> _Data | None:
        fd = os.open(name, _FILE, dir_fd=parent)
        try:
            now = os.fstat(fd)
            if not stat.S_ISREG(now.st_mode):
                os.close(fd)
                return None  # swapped for something else while we looked
            xattrs = {}
            with contextlib.suppress(OSError):
                xattrs[_CAPABILITY.encode()] = os.getxattr(fd, _CAPABILITY)
            self.add(encode(_header(arcname, REGULAR, now, size=now.st_size, xattrs=xattrs)))
        except BaseException:
            os.close(fd)
            raise
        return _Data(fd, now.st_size)

    def data(self, file: _Data) -> Iterator[bytes]:
        """The file's bytes after its header, in chunks; the file is closed at the end. A
        large file's reads go out as they are, without a copy into the buffer."""
        try:
            left = file.size
            direct = file.size >= CHUNK
            if direct and self._out:
                yield self.take()
            while left:
                data = os.read(file.fd, min(_READ, left))
                if not data:
                    break
                left -= len(data)
                if direct:
                    yield data
                    continue
                self.add(data)
                if self.size >= CHUNK:
                    yield self.take()
            self.add(bytes(left + (-file.size % BLOCK)))
        finally:
            os.close(file.fd)


@dataclass(frozen=True)
class _Data:
    fd: int
    size: int


def _header(
    name: bytes,
    kind: bytes,
    st: os.stat_result,
    *,
    size: int = 0,
    linkname: bytes = b"",
    xattrs: dict[bytes, bytes] | None = None,
) -> Header:
    device = st.st_rdev if kind in (CHARDEV, BLOCKDEV) else 0
    return Header(
        name=name,
        type=kind,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        size=size,
        mtime=st.st_mtime_ns,
        linkname=linkname,
        devmajor=os.major(device),
        devminor=os.minor(device),
        xattrs=xattrs or {},
    )
