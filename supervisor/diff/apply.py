"""Applying a layer: a layer blob unpacked into a snapshot's directory, and never outside it.

`apply_layer` (blocking: the daemon runs it on a worker thread) reads the blob, decompresses
it, extracts the tar into an `ApplyTarget` and returns the diffID (sha256 of the uncompressed
tar, every byte of it, trailing bytes included) and its size, as containerd's applier does.
`target_from_mounts` maps the mounts of `Snapshots.Prepare` to a target without mounting
anything: a bind mount is a plain `Directory` (first layer, or a native snapshot); an overlay
mount is its `OverlayUpper`, written directly with whiteouts in overlay's own form.

Invariants:

* Nothing outside the target is created, changed or removed. Every parent directory is
  reached by opening one component at a time with O_NOFOLLOW|O_DIRECTORY relative to the fd
  of the one before, from an fd of the target; every entry is made with *at() calls on its
  parent's fd that never follow a final symlink. Checks and uses therefore cannot disagree.
  A parent component that is a symlink is followed only when its target is relative and
  resolves, component by component and in the same way, inside the target; an absolute
  target, or one that climbs out, is refused. (containerd resolves both inside the root,
  chroot-style; we refuse what the kernel would resolve outside, which no image made by
  tarring a filesystem needs.)
* Names are checked before they are used: no absolute paths, no `..` components, components
  of at most 255 bytes, paths of at most 4096, no NUL. A whiteout must name a sibling
  (`.wh.`, `.wh..`, `.wh...` are refused); aufs metadata (`.wh..wh.*` but the opaque marker)
  is skipped, as docker does. A hard link's target is resolved the same way and must be an
  existing non-directory; a link to a symlink links the symlink itself, which is harmless,
  and metadata is never applied through it.
* Devices and fifos are created as the layer says: images carry /dev entries, and overlay
  whiteouts are character devices 0/0 themselves. A node in a snapshot grants nothing by
  itself: opening it on the host takes root, and in a container the device cgroup (runc allows
  only its standard set) decides, not the node.
* xattrs come from PAX `SCHILY.xattr.*` records, except `trusted.*` (admin attributes:
  containerd refuses them too; in an overlay upper they would forge opaque directories and
  redirects) and, on a `userxattr` overlay, `user.overlay.*`. Unsupported ones (ENOTSUP) and
  `user.*` on symlinks and devices (EPERM) are skipped, as containerd does.
* Metadata order is chown, xattrs, chmod, times (chown clears setuid bits and file
  capabilities); directory times are set after every entry.
* Speed: the tar is streamed, never stored, from a thread that decompresses and hashes a few
  chunks ahead (`compression.Uncompressed`); file data goes from the decompressor's chunks to
  the file without copies; parent directory fds are cached (all dropped whenever a directory
  or symlink is removed, so a cached fd never stands for a path that changed). A file costs
  open, write, fchown, fchmod, futimens and close.
* Errors are typed and name the layer and the entry: a refused or malformed entry, a corrupt
  compressed stream or tar (the blob, when its digest was checked, is what the registry
  served, so the layer itself is bad: InvalidArgument, not DataLoss); a blob that does not
  match the expected digest is FailedPrecondition naming both, and is caught before anything
  is written. After a failure the target holds part of the layer, every fd is closed, and
  nothing in it resists `shutil.rmtree` (no immutable flags can come from a tar).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from snapshotter.protocol import Mount
from supervisor.diff import compression
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
from supervisor.errors import (
    CtrdError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unimplemented,
)

OPAQUE = b".wh..wh..opq"
WHITEOUT_PREFIX = b".wh."
_AUFS_META = b".wh..wh."
MAX_PATH = 4096
MAX_NAME = 255
MAX_SYMLINK_HOPS = 40  # the kernel's limit
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_CACHED_DIRS = 256
_MAX_NS = (1 << 63) - 1
_NODE_TYPES = {CHARDEV: stat.S_IFCHR, BLOCKDEV: stat.S_IFBLK, FIFO: stat.S_IFIFO}


@dataclass(frozen=True)
class Directory:
    """A plain directory: whiteouts delete what they name (first layer, native snapshots)."""

    path: Path


@dataclass(frozen=True)
class OverlayUpper:
    """An overlay upper dir: whiteouts become char 0/0 devices, opaque dirs an xattr."""

    upper: Path
    lowers: tuple[Path, ...]  # nearest first, as in `lowerdir=`
    userxattr: bool = False  # the mount uses user.overlay.* instead of trusted.overlay.*

    @property
    def opaque_xattr(self) -> bytes:
        return b"user.overlay.opaque" if self.userxattr else b"trusted.overlay.opaque"


ApplyTarget = Directory | OverlayUpper


@dataclass(frozen=True)
class Applied:
    diff_id: str  # sha256 of the uncompressed tar
    size: int  # its length in bytes


# --- mounts -> target ------------------------------------------------------------------------


def target_from_mounts(mounts: Sequence[Mount | Mapping[str, Any]]) -> ApplyTarget:
    """Where to extract, for the mounts a snapshotter returned; nothing is mounted."""
    if not mounts:
        raise InvalidArgument("apply: no mounts given")
    if len(mounts) > 1:
        raise Unimplemented(f"apply: {len(mounts)} mounts (only a single bind or overlay mount)")
    mount = _as_mount(mounts[0])
    options = mount.options
    if mount.type == "bind" or (mount.type in ("", "none") and {"bind", "rbind"} & set(options)):
        if "ro" in options:
            raise InvalidArgument(f'apply: the bind mount of "{mount.source}" is read-only')
        return Directory(_absolute(mount.source, "bind source"))
    if mount.type == "overlay":
        values = dict(o.partition("=")[::2] for o in options if "=" in o)
        if "upperdir" not in values:
            raise InvalidArgument("apply: the overlay mount has no upperdir (a read-only view)")
        lowers = tuple(_absolute(p, "lowerdir") for p in values.get("lowerdir", "").split(":") if p)
        if not lowers:
            raise InvalidArgument("apply: the overlay mount has no lowerdir")
        return OverlayUpper(
            _absolute(values["upperdir"], "upperdir"), lowers, userxattr="userxattr" in options
        )
    raise Unimplemented(f'apply: mount type "{mount.type}" (only bind and overlay)')


def _as_mount(mount: Mount | Mapping[str, Any]) -> Mount:
    if isinstance(mount, Mount):
        return mount
    options = mount.get("options") or ()
    if isinstance(options, str):
        options = options.split(",")
    return Mount(str(mount.get("type", "")), str(mount.get("source", "")), tuple(options))


def _absolute(path: str, what: str) -> Path:
    if not path.startswith("/"):
        raise InvalidArgument(f'apply: {what} "{path}" is not an absolute path')
    return Path(path)


# --- apply -----------------------------------------------------------------------------------


def apply_layer(
    blob: Path, media_type: str, target: ApplyTarget, expected: str | None = None
) -> Applied:
    """Extract the layer in `blob` into `target`; blocking. See the module's invariants."""
    compression.check_media_type(media_type)
    label = f"layer {expected or _name_of(blob)}"
    try:
        f = open(blob, "rb")  # noqa: SIM115 - closed below, after the thread reading it
    except FileNotFoundError:
        raise NotFound(f"{label}: no blob at {blob}") from None
    with f:
        if expected:
            compression.verify(f, expected)
        extractor = _Extractor(target, label)
        with extractor, compression.Uncompressed(f) as chunks:
            stream = ByteStream(chunks)
            try:
                extractor.run(TarReader(stream))
                stream.drain()
            except compression.CompressionError as e:
                raise InvalidArgument(f"{label}: {e}") from None
            except OSError as e:  # reading the blob; the extractor names its own failures
                raise Internal(f"{label}: reading the blob: {e}") from e
    return Applied(chunks.digest, chunks.size)


def _name_of(blob: Path) -> str:
    """The blob's digest when it sits in a content store (blobs/<algorithm>/<hex>)."""
    if blob.parent.name in ("sha256", "sha384", "sha512"):
        return f"{blob.parent.name}:{blob.name}"
    return str(blob)


class _Refusal(Exception):
    """An entry we will not extract; becomes InvalidArgument naming layer and entry."""


@dataclass(frozen=True, slots=True)
class _Dir:
    fd: int
    path: bytes  # physical, relative to the target root (b"" for the root)


def _join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


def _show(name: bytes) -> str:
    text = name.decode("utf-8", "backslashreplace")
    return text if len(text) <= 200 else f"{text[:200]}... ({len(name)} bytes)"


def _times(header: Header) -> tuple[int, int]:
    mtime = header.mtime if 0 <= header.mtime <= _MAX_NS else 0  # containerd's boundTime
    atime = max(header.atime or 0, mtime)
    return (atime if atime <= _MAX_NS else 0), mtime


class _Extractor:
    def __init__(self, target: ApplyTarget, label: str) -> None:
        self._label = label
        self._overlay = target if isinstance(target, OverlayUpper) else None
        root = target.upper if isinstance(target, OverlayUpper) else target.path
        self._root = _Dir(_open_target(root, "target"), b"")
        self._lowers: list[int] = []
        self._dirs: dict[bytes, _Dir] = {}  # lexical path -> open directory
        self._stale = False  # a directory or symlink was removed: cached fds may be wrong
        self._written: set[bytes] = set()  # physical paths of this layer (plain dirs only)
        self._dir_times: dict[bytes, tuple[int, int]] = {}
        try:
            for lower in self._overlay.lowers if self._overlay else ():
                self._lowers.append(_open_target(lower, "lower dir"))
        except CtrdError:
            self.close()
            raise

    def __enter__(self) -> _Extractor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._forget_dirs()
        for fd in (self._root.fd, *self._lowers):
            os.close(fd)
        self._lowers = []

    def _forget_dirs(self) -> None:
        for fd in {d.fd for d in self._dirs.values()} - {self._root.fd}:  # `x -> .` is the root
            os.close(fd)
        self._dirs.clear()
        self._stale = False

    # -- the loop ------------------------------------------------------------------------------

    def run(self, reader: TarReader) -> None:
        while True:
            if self._stale or len(self._dirs) > _MAX_CACHED_DIRS:
                self._forget_dirs()
            try:
                header = reader.next()
            except TarFormatError as e:
                raise InvalidArgument(f"{self._label}: tar header #{reader.index}: {e}") from None
            if header is None:
                break
            try:
                self._entry(header, reader)
            except CtrdError:
                raise
            except (_Refusal, TarFormatError) as e:
                raise InvalidArgument(f'{self._label}: entry "{_show(header.name)}": {e}') from None
            except OSError as e:
                raise self._os_error(header.name, e) from e
        if self._stale:
            self._forget_dirs()
        for path, times in self._dir_times.items():
            parent_path, _, name = path.rpartition(b"/")
            try:
                parent = self._dir(parent_path, create=False)
                if parent is not None:
                    os.utime(name, ns=times, dir_fd=parent.fd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed by a later entry
            except _Refusal:
                continue  # a later entry put a symlink in its path: nothing of ours there
            except OSError as e:
                raise self._os_error(path, e) from e

    def _os_error(self, name: bytes, e: OSError) -> CtrdError:
        detail = f'{self._label}: entry "{_show(name)}": {e.strerror or e}'
        if e.errno in (errno.EPERM, errno.EACCES):
            return PermissionDenied(detail)
        return Internal(detail)

    def _entry(self, h: Header, reader: TarReader) -> None:
        parts = _split(h.name)
        if not parts:
            return  # the root itself ("./"): containerd ignores it too
        base = parts[-1]
        parent_path = b"/".join(parts[:-1])
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(parent_path, base, h)
            return
        parent = self._dir(parent_path, create=True)
        assert parent is not None
        kind = h.type
        if kind == REGULAR:
            self._regular(parent, base, h, reader)
        elif kind == DIRECTORY:
            self._directory(parent, base, h)
        elif kind == SYMLINK:
            self._symlink(parent, base, h)
        elif kind == HARDLINK:
            self._hardlink(parent, base, h)
        else:
            self._node(parent, base, h)
        if self._overlay is None:
            self._written.add(_join(parent.path, base))

    # -- entry kinds -----------------------------------------------------------------------

    def _regular(self, parent: _Dir, name: bytes, h: Header, reader: TarReader) -> None:
        try:
            fd = os.open(name, _NEW_FILE, 0o600, dir_fd=parent.fd)
        except FileExistsError:
            self._remove(parent, name)
            fd = os.open(name, _NEW_FILE, 0o600, dir_fd=parent.fd)
        try:
            reader.copy_data(fd)
            os.fchown(fd, h.uid, h.gid)
            if h.xattrs:
                self._set_xattrs(fd, h.xattrs, plain=True)
            os.fchmod(fd, h.mode)
            os.utime(fd, ns=_times(h))
        finally:
            os.close(fd)

    def _directory(self, parent: _Dir, name: bytes, h: Header) -> None:
        try:
            os.mkdir(name, 0o700, dir_fd=parent.fd)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(name, dir_fd=parent.fd).st_mode):
                self._remove(parent, name)
                os.mkdir(name, 0o700, dir_fd=parent.fd)
        os.chown(name, h.uid, h.gid, dir_fd=parent.fd, follow_symlinks=False)
        if h.xattrs:
            self._set_xattrs(self._proc_path(parent, name), h.xattrs, plain=True)
        os.chmod(name, h.mode, dir_fd=parent.fd)  # a directory: nothing to follow
        self._dir_times[_join(parent.path, name)] = _times(h)

    def _symlink(self, parent: _Dir, name: bytes, h: Header) -> None:
        if not h.linkname or b"\0" in h.linkname:
            raise _Refusal("a symlink with an empty or NUL-bearing target")
        try:
            os.symlink(h.linkname, name, dir_fd=parent.fd)
        except FileExistsError:
            self._remove(parent, name)
            os.symlink(h.linkname, name, dir_fd=parent.fd)
        self._link_metadata(parent, name, h, symlink=True)

    def _hardlink(self, parent: _Dir, name: bytes, h: Header) -> None:
        target = _split(h.linkname, what="hard link target")
        if not target:
            raise _Refusal("a hard link to the root")
        source = self._dir(b"/".join(target[:-1]), create=False)
        try:
            if source is None:
                raise FileNotFoundError
            if stat.S_ISDIR(os.lstat(target[-1], dir_fd=source.fd).st_mode):
                raise _Refusal(f'a hard link to the directory "{_show(h.linkname)}"')
        except FileNotFoundError:
            raise _Refusal(f'hard link target "{_show(h.linkname)}" not found') from None
        assert source is not None
        try:
            os.link(
                target[-1], name, src_dir_fd=source.fd, dst_dir_fd=parent.fd, follow_symlinks=False
            )
        except FileExistsError:
            self._remove(parent, name)
            os.link(
                target[-1], name, src_dir_fd=source.fd, dst_dir_fd=parent.fd, follow_symlinks=False
            )
        symlink = stat.S_ISLNK(os.lstat(name, dir_fd=parent.fd).st_mode)
        self._link_metadata(parent, name, h, symlink=symlink)

    def _node(self, parent: _Dir, name: bytes, h: Header) -> None:
        mode = _NODE_TYPES[h.type] | h.mode
        device = os.makedev(h.devmajor, h.devminor) if h.type != FIFO else 0
        try:
            os.mknod(name, mode, device, dir_fd=parent.fd)
        except FileExistsError:
            self._remove(parent, name)
            os.mknod(name, mode, device, dir_fd=parent.fd)
        self._link_metadata(parent, name, h, symlink=False)

    def _link_metadata(self, parent: _Dir, name: bytes, h: Header, *, symlink: bool) -> None:
        """Owner, xattrs, mode and times of something reached by name, never followed."""
        os.chown(name, h.uid, h.gid, dir_fd=parent.fd, follow_symlinks=False)
        if h.xattrs:
            self._set_xattrs(self._proc_path(parent, name), h.xattrs, plain=False)
        if not symlink:  # a node or a file we just made or linked: chmod cannot follow
            os.chmod(name, h.mode, dir_fd=parent.fd)
        os.utime(name, ns=_times(h), dir_fd=parent.fd, follow_symlinks=False)

    def _whiteout(self, parent_path: bytes, base: bytes, h: Header) -> None:
        overlay = self._overlay
        if base == OPAQUE:
            if overlay is not None:
                parent = self._dir(parent_path, create=True)
                assert parent is not None
                os.setxattr(parent.fd, overlay.opaque_xattr, b"y")
            elif (parent := self._dir(parent_path, create=False)) is not None:
                self._clear_unwritten(parent)
            return
        if base.startswith(_AUFS_META):
            return  # aufs bookkeeping (.wh..wh.plnk, .wh..wh.aufs): docker skips it too
        name = base[len(WHITEOUT_PREFIX) :]
        if name in (b"", b".", b".."):
            raise _Refusal("invalid whiteout name: it does not name a sibling")
        if overlay is None:
            if (parent := self._dir(parent_path, create=False)) is not None:
                self._remove(parent, name, missing_ok=True)
            return
        parent = self._dir(parent_path, create=True)
        assert parent is not None
        try:
            os.mknod(name, stat.S_IFCHR, 0, dir_fd=parent.fd)
        except FileExistsError:
            self._remove(parent, name)
            os.mknod(name, stat.S_IFCHR, 0, dir_fd=parent.fd)
        os.chown(name, h.uid, h.gid, dir_fd=parent.fd, follow_symlinks=False)

    def _clear_unwritten(self, top: _Dir) -> None:
        """Native opaque directory: delete every descendant this layer did not write."""
        pending = [top]
        while pending:
            directory = pending.pop()
            for name in os.listdir(directory.fd):
                child = os.fsencode(name)
                path = _join(directory.path, child)
                if path not in self._written:
                    self._remove(directory, child)
                elif stat.S_ISDIR(os.lstat(child, dir_fd=directory.fd).st_mode):
                    found = self._dir(path, create=False)
                    if found is not None:
                        pending.append(found)

    # -- helpers ---------------------------------------------------------------------------

    def _remove(self, parent: _Dir, name: bytes, *, missing_ok: bool = False) -> None:
        try:
            mode = os.lstat(name, dir_fd=parent.fd).st_mode
        except FileNotFoundError:
            if missing_ok:
                return
            raise
        if stat.S_ISDIR(mode):
            self._stale = True
            shutil.rmtree(name, dir_fd=parent.fd)  # fd-based, never follows symlinks
        else:
            self._stale = self._stale or stat.S_ISLNK(mode)
            os.unlink(name, dir_fd=parent.fd)

    @staticmethod
    def _proc_path(parent: _Dir, name: bytes) -> bytes:
        """A path for calls that take no dir_fd (xattrs): only `name` is looked up there."""
        return b"/proc/self/fd/%d/%s" % (parent.fd, name)

    def _set_xattrs(
        self, target: int | bytes, xattrs: Mapping[bytes, bytes], *, plain: bool
    ) -> None:
        for key, value in xattrs.items():
            if key.startswith(b"trusted.") or (
                self._overlay is not None
                and self._overlay.userxattr
                and key.startswith(b"user.overlay.")
            ):
                continue
            try:
                if isinstance(target, int):
                    os.setxattr(target, key, value)
                else:
                    os.setxattr(target, key, value, follow_symlinks=False)
            except OSError as e:
                if e.errno == errno.ENOTSUP:
                    continue
                if e.errno == errno.EPERM and key.startswith(b"user.") and not plain:
                    continue
                raise

    # -- resolving directories inside the target -------------------------------------------

    def _dir(self, path: bytes, *, create: bool, hops: list[int] | None = None) -> _Dir | None:
        """The directory at lexical `path` (components already checked), opened without ever
        following a symlink out of the target; created (with parents) when `create`."""
        if not path:
            return self._root
        found = self._dirs.get(path)
        if found is not None:
            return found
        parts = path.split(b"/")
        i = len(parts) - 1
        directory = self._root
        while i > 0:
            cached = self._dirs.get(b"/".join(parts[:i]))
            if cached is not None:
                directory = cached
                break
            i -= 1
        hops = hops if hops is not None else [0]
        for k in range(i, len(parts)):
            child = self._child(directory, parts[k], create, hops)
            if child is None:
                return None
            directory = child
            self._dirs[b"/".join(parts[: k + 1])] = directory
        return directory

    def _child(self, parent: _Dir, name: bytes, create: bool, hops: list[int]) -> _Dir | None:
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent.fd)
        except FileNotFoundError:
            if not create:
                return None
            self._new_parent(parent, name)
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent.fd)
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            if not stat.S_ISLNK(os.lstat(name, dir_fd=parent.fd).st_mode):
                raise _Refusal(
                    f'its parent "{_show(_join(parent.path, name))}" is not a directory'
                ) from None
            return self._follow(parent, name, create, hops)
        return _Dir(fd, _join(parent.path, name))

    def _follow(self, parent: _Dir, name: bytes, create: bool, hops: list[int]) -> _Dir | None:
        shown = _show(_join(parent.path, name))
        hops[0] += 1
        if hops[0] > MAX_SYMLINK_HOPS:
            raise _Refusal(f'too many levels of symbolic links at "{shown}"')
        target = os.readlink(name, dir_fd=parent.fd)
        if target.startswith(b"/"):
            raise _Refusal(
                f'its parent "{shown}" is a symlink to the absolute path "{_show(target)}",'
                " which leads outside the layer's root"
            )
        stack = parent.path.split(b"/") if parent.path else []
        for part in target.split(b"/"):
            if part in (b"", b"."):
                continue
            if part == b"..":
                if not stack:
                    raise _Refusal(
                        f'its parent "{shown}" is a symlink to "{_show(target)}",'
                        " which leads outside the layer's root"
                    )
                stack.pop()
                continue
            step = self._dir(b"/".join([*stack, part]), create=create, hops=hops)
            if step is None:
                return None
            stack = step.path.split(b"/") if step.path else []
        return self._dir(b"/".join(stack), create=create, hops=hops)

    def _new_parent(self, parent: _Dir, name: bytes) -> None:
        """A directory the layer needs but did not list: owner, mode and xattrs like the
        merged lowers' directory if there is one (its times become now, as the layer changes
        it: as in containerd, and as applying into a plain directory gives)."""
        os.mkdir(name, 0o755, dir_fd=parent.fd)
        path = _join(parent.path, name)
        if self._overlay is None:
            os.chmod(name, 0o755, dir_fd=parent.fd)
            self._written.add(path)
            return
        for lower in self._lowers:
            fd = _lower_dir(lower, path, self._overlay.opaque_xattr)
            if fd == _ABSENT:
                continue
            if fd == _HIDDEN:
                break  # what is below is not in the merged view (containerd stops here too)
            try:
                st = os.fstat(fd)
                os.chown(name, st.st_uid, st.st_gid, dir_fd=parent.fd, follow_symlinks=False)
                xattrs = {
                    os.fsencode(k): os.getxattr(fd, k)
                    for k in os.listxattr(fd)
                    if not k.startswith("trusted.")
                }
                if xattrs:
                    self._set_xattrs(self._proc_path(parent, name), xattrs, plain=True)
                os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=parent.fd)
            finally:
                os.close(fd)
            return
        os.chmod(name, 0o755, dir_fd=parent.fd)


def _open_target(path: Path, what: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"apply: {what} {path}") from None
    except OSError as e:
        raise FailedPrecondition(f"apply: {what} {path}: {e.strerror}") from None


_ABSENT, _HIDDEN = -1, -2


def _lower_dir(lower: int, path: bytes, opaque_xattr: bytes) -> int:
    """An fd of directory `path` in a lower dir; _ABSENT if the lower has no such path (look
    further down); _HIDDEN if a non-directory or an opaque directory there hides the rest."""
    fd = lower
    try:
        for part in path.split(b"/"):
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                return _HIDDEN if fd != lower and _is_opaque(fd, opaque_xattr) else _ABSENT
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    return _HIDDEN
                raise
            if fd != lower:
                os.close(fd)
            fd = child
        found, fd = fd, lower  # handed to the caller, not closed below
        return found
    finally:
        if fd != lower:
            os.close(fd)


def _is_opaque(fd: int, key: bytes) -> bool:
    try:
        return os.getxattr(fd, key) == b"y"
    except OSError:
        return False


def _split(name: bytes, what: str = "path") -> list[bytes]:
    """The components of an entry's name, or a refusal saying why it may not be used."""
    if b"\0" in name:
        raise _Refusal(f"a NUL byte in its {what}")
    if name.startswith(b"/"):
        raise _Refusal(f"an absolute {what}")
    if len(name) > MAX_PATH:
        raise _Refusal(f"a {what} of {len(name)} bytes (at most {MAX_PATH})")
    parts = [p for p in name.split(b"/") if p and p != b"."]
    for part in parts:
        if part == b"..":
            raise _Refusal(f'".." in its {what}')
        if len(part) > MAX_NAME:
            raise _Refusal(f"a {what} component of {len(part)} bytes (at most {MAX_NAME})")
    return parts
