"""Extracting a tar into a directory of a root, never writing outside the root.

docker's Unpack rules (pkg/archive, 20.10), as `cp` uses them: entry names are cleaned, and
one that climbs out of the destination (`../x`) is refused (`"../x" is outside of "/dst"`);
an absolute name is taken from the destination; missing parents are made (0755); an entry
replaces what is there unless both are directories (then the directory is kept and takes the
entry's metadata), and with `no_overwrite_dir_non_dir` a directory may not replace a
non-directory nor the reverse; a hard link must name something inside the destination and a
relative symlink may not lead out of it (docker's "invalid hardlink"/"invalid symlink");
directory times are set last; an entry is owned by the uid/gid its header names, or by
`owner` (docker's ChownOpts), or not changed at all without `chown` (ctrctl's local side, as
docker's CLI extracts with NoLchown).

Why not `supervisor.diff.apply`'s extractor: a layer is applied to a snapshot nothing else
touches, where a symlink parent is refused when absolute; here the destination is a live
container whose symlinks are resolved as the container resolves them (docker extracts from a
chroot into the container's root), whiteout names are plain files, and the rules above differ.
Its format reader (`tarformat`) and its habits are shared: every parent directory is opened
with openat2(RESOLVE_IN_ROOT) from the root (`resolve.Root`), so a symlink in the tar or in
the container, absolute or `..`, resolves inside the root as the kernel would resolve it from
there; every entry is made, replaced, owned, moded and timed with *at() calls or fds on its
parent's fd that never follow its final component (chmod of a node through an O_PATH fd).
The root may change under us (a running container): what it swaps in is found by the next
openat2, never followed out.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from supervisor.archive import paths
from supervisor.archive.resolve import Root
from supervisor.diff.tarformat import (
    BLOCKDEV,
    CHARDEV,
    DIRECTORY,
    FIFO,
    HARDLINK,
    REGULAR,
    SYMLINK,
    ByteStream,
    Header,
    TarFormatError,
    TarReader,
)

_DIR = os.O_RDONLY | os.O_DIRECTORY
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_NODES = {CHARDEV: stat.S_IFCHR, BLOCKDEV: stat.S_IFBLK, FIFO: stat.S_IFIFO}
_KNOWN = frozenset((REGULAR, DIRECTORY, SYMLINK, HARDLINK, *_NODES))
_MAX_NS = (1 << 63) - 1
_MAX_CACHED = 256


class UnpackError(Exception):
    """The tar cannot be extracted as docker would; the message is docker's where it has one."""


@dataclass(frozen=True)
class Options:
    no_overwrite_dir_non_dir: bool = False
    chown: bool = True  # lchown to the header's ids (or `owner`); False: leave the owner be
    owner: tuple[int, int] | None = None  # docker's ChownOpts
    rename: Callable[[bytes], bytes] | None = None  # applied to each name first (rebasing)


def unpack(chunks: Iterable[bytes], root: Root, dest: bytes, options: Options) -> None:
    """Extract the tar in `chunks` into `dest`, an existing directory of `root` (a path from
    the root, its symlinks already resolved: `resolve.realpath`). Blocking."""
    with _Unpacker(root, dest, options) as unpacker:
        reader = TarReader(ByteStream(chunks))
        while True:
            try:
                header = reader.next()
            except TarFormatError as e:
                raise UnpackError(f"invalid tar header: {e}") from None
            if header is None:
                break
            try:
                unpacker.entry(header, reader)
            except TarFormatError as e:
                raise UnpackError(f"invalid tar: {e}") from None
        unpacker.finish()


def clean_name(name: bytes) -> bytes | None:
    """An entry's name relative to the destination (b"" for the destination itself), cleaned
    as Go's filepath.Clean after joining; None if it climbs out."""
    parts: list[bytes] = []
    for part in name.split(b"/"):
        if part in (b"", b"."):
            continue
        if part == b"..":
            if not parts:
                if name.startswith(b"/"):
                    continue  # `/..` is `/`: joined to the destination, it stays there
                return None
            parts.pop()
            continue
        parts.append(part)
    return b"/".join(parts)


def _join(directory: bytes, rel: bytes) -> bytes:
    if not rel:
        return directory
    return directory.rstrip(b"/") + b"/" + rel


def _show(path: bytes) -> str:
    return path.decode("utf-8", "backslashreplace")


def _inside(path: bytes, directory: bytes) -> bool:
    directory = directory.rstrip(b"/")
    return not directory or path == directory or path.startswith(directory + b"/")


def _lexical(path: bytes) -> bytes:
    """Go's filepath.Clean of an absolute path."""
    return b"/" + (clean_name(path) or b"")


class _Unpacker:
    def __init__(self, root: Root, dest: bytes, options: Options) -> None:
        self._root = root
        self._dest = _lexical(dest)
        self._options = options
        self._dirs: dict[bytes, int] = {}  # lexical path -> open directory
        self._dir_times: dict[bytes, tuple[int, int]] = {}

    def __enter__(self) -> _Unpacker:
        return self

    def __exit__(self, *exc: object) -> None:
        self._forget()

    def _forget(self) -> None:
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()

    # -- entries -----------------------------------------------------------------------------

    def entry(self, h: Header, reader: TarReader) -> None:
        name = self._options.rename(h.name) if self._options.rename else h.name
        rel = clean_name(name)
        if rel is None:
            shown = paths.clean(_show(name))  # docker cleans the name first
            raise UnpackError(f'"{shown}" is outside of "{_show(self._dest)}"')
        if h.type not in _KNOWN:
            raise UnpackError(f"unhandled tar header type {h.type[0] if h.type else 0}")
        path = _join(self._dest, rel)
        if len(self._dirs) > _MAX_CACHED:
            self._forget()
        if not rel:  # the destination itself: a directory that exists
            if h.type != DIRECTORY:
                self._refuse_over_directory(path, h)
                raise UnpackError(f'cannot overwrite directory "{_show(path)}"')
            return
        parent_rel, _, base = rel.rpartition(b"/")
        parent = self._dir(_join(self._dest, parent_rel))
        try:
            existing: os.stat_result | None = os.lstat(base, dir_fd=parent)
        except FileNotFoundError:
            existing = None
        if existing is not None:
            is_dir = stat.S_ISDIR(existing.st_mode)
            if is_dir and h.type != DIRECTORY:
                self._refuse_over_directory(path, h)
            if self._options.no_overwrite_dir_non_dir and not is_dir and h.type == DIRECTORY:
                raise UnpackError(
                    f'cannot overwrite non-directory "{_show(path)}" with directory'
                    f' "{_show(self._dest)}"'
                )
            if not (is_dir and h.type == DIRECTORY):
                self._remove(parent, base, existing)
        if h.type == REGULAR:
            self._regular(parent, base, h, reader)
        elif h.type == DIRECTORY:
            self._directory(parent, base, path, h)
        elif h.type == SYMLINK:
            self._symlink(parent, base, path, h)
        elif h.type == HARDLINK:
            self._hardlink(parent, base, h)
        else:
            self._node(parent, base, h)

    def _refuse_over_directory(self, path: bytes, h: Header) -> None:
        if self._options.no_overwrite_dir_non_dir:
            raise UnpackError(
                f'cannot overwrite directory "{_show(path)}" with non-directory'
                f' "{_show(self._dest)}"'
            )

    def finish(self) -> None:
        self._forget()
        for path, times in self._dir_times.items():
            try:
                fd = self._root.open(path, _DIR | os.O_NOFOLLOW)
            except OSError:
                continue  # replaced by a later entry, or by the container
            try:
                os.utime(fd, ns=times)
            finally:
                os.close(fd)

    def _owner(self, h: Header) -> tuple[int, int] | None:
        if not self._options.chown:
            return None
        return self._options.owner or (h.uid, h.gid)

    def _regular(self, parent: int, base: bytes, h: Header, reader: TarReader) -> None:
        fd = os.open(base, _NEW_FILE, 0o600, dir_fd=parent)
        try:
            reader.copy_data(fd)
            owner = self._owner(h)
            if owner is not None:
                os.fchown(fd, *owner)
            self._xattrs(parent, base, h)
            os.fchmod(fd, h.mode)
            os.utime(fd, ns=_times(h))
        finally:
            os.close(fd)

    def _directory(self, parent: int, base: bytes, path: bytes, h: Header) -> None:
        with contextlib.suppress(FileExistsError):
            os.mkdir(base, 0o700, dir_fd=parent)
        fd = os.open(base, _DIR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        try:
            owner = self._owner(h)
            if owner is not None:
                os.fchown(fd, *owner)
            self._xattrs(parent, base, h)
            os.fchmod(fd, h.mode)
        finally:
            os.close(fd)
        self._dir_times[path] = _times(h)

    def _symlink(self, parent: int, base: bytes, path: bytes, h: Header) -> None:
        if not h.linkname or b"\0" in h.linkname:
            raise UnpackError(f'invalid symlink "{_show(path)}" -> "{_show(h.linkname)}"')
        # docker: Join(Dir(path), linkname) must stay in the destination (an absolute target is
        # joined too, so it always does: it resolves inside the root when it is used).
        target = _lexical(path.rpartition(b"/")[0] + b"/" + h.linkname)
        if not _inside(target, self._dest):
            raise UnpackError(f'invalid symlink "{_show(path)}" -> "{_show(h.linkname)}"')
        os.symlink(h.linkname, base, dir_fd=parent)
        self._metadata(parent, base, h, chmod=False)

    def _hardlink(self, parent: int, base: bytes, h: Header) -> None:
        name = self._options.rename(h.linkname) if self._options.rename else h.linkname
        rel = clean_name(name)
        if not rel:
            target = _lexical(self._dest + b"/" + name)  # docker's Join(dest, linkname)
            raise UnpackError(f'invalid hardlink "{_show(target)}" -> "{_show(h.linkname)}"')
        source_rel, _, source_base = rel.rpartition(b"/")
        source = self._dir(_join(self._dest, source_rel), create=False)
        os.link(source_base, base, src_dir_fd=source, dst_dir_fd=parent, follow_symlinks=False)
        self._metadata(parent, base, h, chmod=True)  # docker: lchown, then chmod unless a link

    def _node(self, parent: int, base: bytes, h: Header) -> None:
        os.mknod(base, _NODES[h.type] | 0o600, os.makedev(h.devmajor, h.devminor), dir_fd=parent)
        self._metadata(parent, base, h, chmod=True)

    def _metadata(self, parent: int, base: bytes, h: Header, *, chmod: bool) -> None:
        """Owner, xattrs, mode and times of an entry reached by name, never followed."""
        owner = self._owner(h)
        if owner is not None:
            os.chown(base, *owner, dir_fd=parent, follow_symlinks=False)
        self._xattrs(parent, base, h)
        if chmod:
            fd = os.open(base, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
            try:
                if not stat.S_ISLNK(os.fstat(fd).st_mode):
                    os.chmod(f"/proc/self/fd/{fd}", h.mode)
            finally:
                os.close(fd)
        os.utime(base, ns=_times(h), dir_fd=parent, follow_symlinks=False)

    def _xattrs(self, parent: int, base: bytes, h: Header) -> None:
        for key, value in h.xattrs.items():
            if key.startswith(b"trusted."):
                continue  # admin attributes (overlay's own among them): never from a tar
            path = b"/proc/self/fd/%d/%s" % (parent, base)  # only `base` is looked up there
            try:
                os.setxattr(path, key, value, follow_symlinks=False)
            except OSError as e:
                if e.errno not in (errno.ENOTSUP, errno.EPERM):
                    raise

    def _remove(self, parent: int, base: bytes, existing: os.stat_result) -> None:
        if stat.S_ISDIR(existing.st_mode):
            self._forget_below(parent)
            shutil.rmtree(base, dir_fd=parent)  # fd-based, never follows a symlink
        else:
            if stat.S_ISLNK(existing.st_mode):
                self._forget_below(parent)
            os.unlink(base, dir_fd=parent)

    def _forget_below(self, keep: int) -> None:
        """Drop every cached directory but `keep` (a symlink went: a path may lead elsewhere)."""
        for path, fd in list(self._dirs.items()):
            if fd != keep:
                os.close(fd)
                del self._dirs[path]

    # -- parents -----------------------------------------------------------------------------

    def _dir(self, path: bytes, *, create: bool = True) -> int:
        """The directory at `path` (from the root, resolved inside it), made with its missing
        parents (0755) when `create`."""
        fd = self._dirs.get(path)
        if fd is not None:
            return fd
        try:
            fd = self._root.open(path, _DIR)
        except FileNotFoundError:
            if not create or path == b"/":
                raise
            up, _, base = path.rpartition(b"/")
            parent = self._dir(up or b"/")
            made = True
            try:
                os.mkdir(base, 0o755, dir_fd=parent)
            except FileExistsError:
                made = False
            fd = self._root.open(path, _DIR)
            if made:
                os.fchmod(fd, 0o755)
        except NotADirectoryError:
            raise UnpackError(f'"{_show(path)}" is not a directory') from None
        self._dirs[path] = fd
        return fd


def _times(h: Header) -> tuple[int, int]:
    mtime = h.mtime if 0 <= h.mtime <= _MAX_NS else 0
    atime = max(h.atime or 0, mtime)
    return (atime if atime <= _MAX_NS else 0), mtime
