"""The walking differ: the changes between two trees, written as an uncompressed layer tar.

`diff_directories(lower, upper, out)` compares two trees as they would appear mounted (the
double walk of containerd's `fs.Changes`); `diff_overlay_upper(upper, lowers, out)` reads an
overlay upper dir directly, where the kernel already recorded what changed (char 0/0 devices
for deletions, the opaque xattr for directories whose lower contents are hidden). Both write
to a binary file object and return the diffID and size of what they wrote.

Rules (containerd's, so that `Diff` output means what containerd's means):

* Two entries are the same when they are the same inode, or when type, mode, owner, device
  number, xattrs and (for non-directories) size and mtime seconds agree, and then: differing
  nanoseconds mean changed; both nanoseconds zero (a filesystem or copy that dropped them)
  means look at the content (symlink targets, file bytes). A directory's mtime alone is not
  a change. Symlink targets are always compared.
* Deletions are `.wh.<name>` entries (regular, empty, mode 0, mtime 0 so that the same
  change always gives the same diffID); a deleted directory is one whiteout, nothing under
  it; an opaque upper directory gives its entry and then `.wh..wh..opq`.
* Every entry's parent directories come first, with the upper tree's metadata, even when
  they did not change themselves; entries come in path order.
* A file with several names is written once; its other names become hard links to it (to
  the first name written, including names that were unchanged themselves, as containerd
  does). Sockets are skipped. mtimes are written in whole seconds, atime and ctime not at
  all.
* xattrs are written as PAX `SCHILY.xattr.*` records, except `trusted.*` (overlay's own and
  other admin attributes) and `security.selinux` (the host's labels, not the image's).
* Trees are read through directory fds, never following a symlink, so a tree that changes
  under the walk cannot send it elsewhere; a file that changes size while it is read is an
  error (FailedPrecondition) rather than a tar with a wrong size.

Not handled: overlay's redirect_dir and metacopy features (ctrd's snapshotter does not turn
them on); a whiteout or opaque directory in a lower dir is taken at its word only in the
nearest lower that has the path.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NamedTuple

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
from supervisor.errors import FailedPrecondition

OPAQUE = b".wh..wh..opq"
WHITEOUT_PREFIX = b".wh."
READ_CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_TYPES = {
    stat.S_IFREG: REGULAR,
    stat.S_IFDIR: DIRECTORY,
    stat.S_IFLNK: SYMLINK,
    stat.S_IFCHR: CHARDEV,
    stat.S_IFBLK: BLOCKDEV,
    stat.S_IFIFO: FIFO,
}


@dataclass(frozen=True)
class Written:
    diff_id: str  # sha256 of the tar written
    size: int  # its length in bytes


def diff_directories(lower: Path, upper: Path, out: BinaryIO) -> Written:
    """The changes that turn tree `lower` into tree `upper`, as a tar written to `out`."""
    with _Walk(out) as walk:
        lower_fd = _open_dir(lower)
        try:
            upper_fd = _open_dir(upper)
        except BaseException:
            os.close(lower_fd)
            raise
        walk.compare(lower_fd, upper_fd)
        return walk.finish()


def diff_overlay_upper(
    upper: Path, lowers: Sequence[Path], out: BinaryIO, *, userxattr: bool = False
) -> Written:
    """The changes an overlay upper dir holds over its lowers (nearest first), as a tar."""
    opaque = b"user.overlay.opaque" if userxattr else b"trusted.overlay.opaque"
    with _Walk(out, skip_user_overlay=userxattr) as walk:
        fds: list[int] = []
        try:
            fds.extend(_open_dir(p) for p in lowers)
            walk.upper_only(_open_dir(upper), fds, opaque)
        finally:
            for fd in fds:
                os.close(fd)
        return walk.finish()


class _Entry(NamedTuple):
    name: bytes
    st: os.stat_result


@dataclass
class _Frame:
    """One directory on the walk's current path."""

    path: bytes  # relative to the roots, b"" for the roots
    upper_fd: int
    lower_fd: int | None
    st: os.stat_result  # the upper directory's
    emitted: bool = False  # its entry is in the tar already
    entries: Iterator[tuple[_Entry | None, _Entry | None]] = field(default_factory=lambda: iter(()))


class _Walk:
    def __init__(self, out: BinaryIO, *, skip_user_overlay: bool = False) -> None:
        self._out = out
        self._hasher = hashlib.sha256()
        self._size = 0
        self._skip_user_overlay = skip_user_overlay
        self._stack: list[_Frame] = []
        self._sources: dict[tuple[int, int], bytes] = {}  # (dev, ino) -> first name written
        self._unwritten_links: dict[tuple[int, int], list[bytes]] = {}

    def __enter__(self) -> _Walk:
        return self

    def __exit__(self, *exc: object) -> None:
        for frame in self._stack:
            os.close(frame.upper_fd)
            if frame.lower_fd is not None:
                os.close(frame.lower_fd)
        self._stack.clear()

    def _write(self, data: bytes | memoryview) -> None:
        self._hasher.update(data)
        self._size += len(data)
        self._out.write(data)

    def finish(self) -> Written:
        self._write(end_of_archive())
        return Written(f"sha256:{self._hasher.hexdigest()}", self._size)

    # -- the double walk -------------------------------------------------------------------

    def compare(self, lower_fd: int, upper_fd: int) -> None:
        """Takes both fds (and closes them)."""
        self._push(b"", upper_fd, lower_fd, os.fstat(upper_fd), emitted=True)
        while self._stack:
            frame = self._stack[-1]
            pair = next(frame.entries, None)
            if pair is None:
                self._pop()
                continue
            old, new = pair
            if new is None:
                assert old is not None
                self._whiteout(frame, old.name)
                continue
            path = _join(frame.path, new.name)
            new_dir = stat.S_ISDIR(new.st.st_mode)
            if old is None or stat.S_ISDIR(old.st.st_mode) != new_dir:
                self._emit(frame, new.name, new.st)  # added, or replaced by another kind
                if new_dir:
                    self._descend(frame, new, None, emitted=True)
                continue
            if new_dir:
                changed = not self._same(frame, old, new, directory=True)
                if changed:
                    self._emit(frame, new.name, new.st)
                self._descend(frame, new, old, emitted=changed)
            elif not self._same(frame, old, new, directory=False):
                self._emit(frame, new.name, new.st)
            elif new.st.st_nlink > 1:  # unchanged, but a name of a file that may be written
                key = (new.st.st_dev, new.st.st_ino)
                if key in self._sources:
                    self._link(frame, new.name, new.st, self._sources[key])
                else:
                    self._unwritten_links.setdefault(key, []).append(path)

    def _same(self, frame: _Frame, old: _Entry, new: _Entry, *, directory: bool) -> bool:
        a, b = old.st, new.st
        if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
            return True
        if (a.st_mode, a.st_uid, a.st_gid, a.st_rdev) != (b.st_mode, b.st_uid, b.st_gid, b.st_rdev):
            return False
        assert frame.lower_fd is not None
        if self._xattrs(frame.lower_fd, old.name) != self._xattrs(frame.upper_fd, new.name):
            return False
        if directory:
            return True
        if a.st_size != b.st_size or a.st_mtime_ns // 10**9 != b.st_mtime_ns // 10**9:
            return False
        if stat.S_ISLNK(b.st_mode):
            return os.readlink(old.name, dir_fd=frame.lower_fd) == os.readlink(
                new.name, dir_fd=frame.upper_fd
            )
        if a.st_mtime_ns % 10**9 or b.st_mtime_ns % 10**9:
            return a.st_mtime_ns == b.st_mtime_ns
        if not stat.S_ISREG(b.st_mode) or b.st_size == 0:
            return True
        return _same_content(frame.lower_fd, old.name, frame.upper_fd, new.name)

    # -- the overlay upper walk ------------------------------------------------------------

    def upper_only(self, upper_fd: int, lowers: list[int], opaque: bytes) -> None:
        """Takes `upper_fd` (and closes it)."""
        self._push(b"", upper_fd, None, os.fstat(upper_fd), emitted=True)
        while self._stack:
            frame = self._stack[-1]
            pair = next(frame.entries, None)
            if pair is None:
                self._pop()
                continue
            new = pair[1]
            assert new is not None
            mode = new.st.st_mode
            if stat.S_ISCHR(mode) and new.st.st_rdev == 0:
                self._whiteout(frame, new.name)
            elif stat.S_ISDIR(mode):
                is_opaque = _getxattr(frame.upper_fd, new.name, opaque) == b"y"
                below = _lower_stat(lowers, _join(frame.path, new.name))
                unchanged = (
                    not is_opaque
                    and below is not None
                    and stat.S_ISDIR(below.st_mode)
                    and (below.st_mode, below.st_uid, below.st_gid, below.st_mtime_ns)
                    == (mode, new.st.st_uid, new.st.st_gid, new.st.st_mtime_ns)
                )
                if not unchanged:
                    self._emit(frame, new.name, new.st)
                if is_opaque:
                    path = _join(_join(frame.path, new.name), OPAQUE)
                    self._add(Header(name=path, type=REGULAR, mode=0))
                self._descend(frame, new, None, emitted=not unchanged)
            else:
                self._emit(frame, new.name, new.st)

    # -- the stack of directories ----------------------------------------------------------

    def _push(
        self, path: bytes, upper_fd: int, lower_fd: int | None, st: os.stat_result, *, emitted: bool
    ) -> None:
        frame = _Frame(path, upper_fd, lower_fd, st, emitted)
        self._stack.append(frame)  # before listing: an error still closes the fds
        frame.entries = _merged(_listing(lower_fd), _listing(upper_fd))

    def _descend(self, frame: _Frame, new: _Entry, old: _Entry | None, *, emitted: bool) -> None:
        upper_fd = os.open(new.name, _DIR_FLAGS, dir_fd=frame.upper_fd)
        lower_fd = None
        if old is not None:
            assert frame.lower_fd is not None
            try:
                lower_fd = os.open(old.name, _DIR_FLAGS, dir_fd=frame.lower_fd)
            except BaseException:
                os.close(upper_fd)
                raise
        self._push(_join(frame.path, new.name), upper_fd, lower_fd, new.st, emitted=emitted)

    def _pop(self) -> None:
        frame = self._stack.pop()
        os.close(frame.upper_fd)
        if frame.lower_fd is not None:
            os.close(frame.lower_fd)

    def _parents(self) -> None:
        """Write the entries of the directories on the current path not written yet."""
        for frame in self._stack:
            if not frame.emitted:
                frame.emitted = True
                self._add(self._header(frame.path, frame.st, b"", self._xattrs(frame.upper_fd)))

    # -- writing ---------------------------------------------------------------------------

    def _whiteout(self, frame: _Frame, name: bytes) -> None:
        self._parents()
        self._add(Header(name=_join(frame.path, WHITEOUT_PREFIX + name), type=REGULAR, mode=0))

    def _emit(self, frame: _Frame, name: bytes, st: os.stat_result) -> None:
        kind = _TYPES.get(stat.S_IFMT(st.st_mode))
        if kind is None:
            return  # sockets
        path = _join(frame.path, name)
        key = (st.st_dev, st.st_ino)
        if kind != DIRECTORY and st.st_nlink > 1 and key in self._sources:
            self._link(frame, name, st, self._sources[key])
            return
        linkname = os.readlink(name, dir_fd=frame.upper_fd) if kind == SYMLINK else b""
        header = self._header(path, st, linkname, self._xattrs(frame.upper_fd, name))
        self._parents()
        if kind == DIRECTORY:
            self._add(header)
            return
        if kind != REGULAR or st.st_size == 0:
            self._add(header)
        else:
            self._add_file(header, frame.upper_fd, name)
        if st.st_nlink > 1:
            self._sources[key] = path
            for other in self._unwritten_links.pop(key, []):
                self._add(header._replace(name=other, type=HARDLINK, size=0, linkname=path))

    def _link(self, frame: _Frame, name: bytes, st: os.stat_result, source: bytes) -> None:
        self._parents()
        header = self._header(_join(frame.path, name), st, b"", {})
        self._add(header._replace(type=HARDLINK, size=0, linkname=source))

    def _header(
        self, path: bytes, st: os.stat_result, linkname: bytes, xattrs: dict[bytes, bytes]
    ) -> Header:
        kind = _TYPES[stat.S_IFMT(st.st_mode)]
        device = kind in (CHARDEV, BLOCKDEV)
        return Header(
            name=path + b"/" if kind == DIRECTORY else path,
            type=kind,
            mode=stat.S_IMODE(st.st_mode),
            uid=st.st_uid,
            gid=st.st_gid,
            size=st.st_size if kind == REGULAR else 0,
            mtime=st.st_mtime_ns // 10**9 * 10**9,
            linkname=linkname,
            devmajor=os.major(st.st_rdev) if device else 0,
            devminor=os.minor(st.st_rdev) if device else 0,
            xattrs=xattrs,
        )

    def _add(self, header: Header) -> None:
        self._write(encode(header))

    def _add_file(self, header: Header, dir_fd: int, name: bytes) -> None:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            self._write(encode(header))
            left = header.size
            while left:
                chunk = os.read(fd, min(READ_CHUNK, left))
                if not chunk:
                    raise FailedPrecondition(
                        f'"{header.name.decode(errors="replace")}" shrank while it was read'
                    )
                self._write(chunk)
                left -= len(chunk)
            if padding := -header.size % BLOCK:
                self._write(bytes(padding))
        finally:
            os.close(fd)

    def _xattrs(self, dir_fd: int, name: bytes | None = None) -> dict[bytes, bytes]:
        """The xattrs we carry of `name` in `dir_fd`, or of `dir_fd` itself."""
        path = b"/proc/self/fd/%d" % dir_fd if name is None else _proc_path(dir_fd, name)
        try:
            keys = os.listxattr(path, follow_symlinks=False)
        except OSError:
            return {}
        out = {}
        for key in keys:
            if (
                key.startswith("trusted.")
                or key == "security.selinux"
                or (self._skip_user_overlay and key.startswith("user.overlay."))
            ):
                continue
            try:
                out[os.fsencode(key)] = os.getxattr(path, key, follow_symlinks=False)
            except OSError:
                continue  # vanished meanwhile
        return out


def _join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


def _proc_path(dir_fd: int, name: bytes) -> bytes:
    """For calls that take no dir_fd (xattrs): only `name` is looked up, never followed."""
    return b"/proc/self/fd/%d/%s" % (dir_fd, name)


def _open_dir(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _listing(fd: int | None) -> list[_Entry]:
    if fd is None:
        return []
    with os.scandir(fd) as entries:
        listed = [_Entry(os.fsencode(e.name), e.stat(follow_symlinks=False)) for e in entries]
    listed.sort(key=lambda e: e.name)
    return listed


def _merged(old: list[_Entry], new: list[_Entry]) -> Iterator[tuple[_Entry | None, _Entry | None]]:
    """Both sorted listings side by side, by name."""
    i = j = 0
    while i < len(old) or j < len(new):
        if j == len(new) or (i < len(old) and old[i].name < new[j].name):
            yield old[i], None
            i += 1
        elif i == len(old) or new[j].name < old[i].name:
            yield None, new[j]
            j += 1
        else:
            yield old[i], new[j]
            i += 1
            j += 1


def _same_content(fd_a: int, name_a: bytes, fd_b: int, name_b: bytes) -> bool:
    a = os.open(name_a, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd_a)
    try:
        b = os.open(name_b, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd_b)
        try:
            while True:
                chunk_a, chunk_b = os.read(a, READ_CHUNK), os.read(b, READ_CHUNK)
                if chunk_a != chunk_b:
                    return False
                if not chunk_a:
                    return True
        finally:
            os.close(b)
    finally:
        os.close(a)


def _getxattr(dir_fd: int, name: bytes, key: bytes) -> bytes | None:
    try:
        return os.getxattr(_proc_path(dir_fd, name), key, follow_symlinks=False)
    except OSError:
        return None


def _lower_stat(lowers: list[int], path: bytes) -> os.stat_result | None:
    """The path in the merged lowers (nearest first): the first lower that has it decides."""
    *parents, name = path.split(b"/")
    for lower in lowers:
        fd = lower
        try:
            for part in parents:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                if fd != lower:
                    os.close(fd)
                fd = child
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        except OSError:
            return None  # a non-directory on the way hides the lower ones
        finally:
            if fd != lower:
                os.close(fd)
        return None if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0 else st
    return None
