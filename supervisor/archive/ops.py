"""docker's three archive operations on a root: stat a path, tar it, extract a tar into it.

As docker's daemon (daemon/archive.go, container/archive.go, 20.10): a path is made absolute
in the container with its trailing `/` or `/.` kept; its parent is resolved through every
symlink inside the root and its last component is not followed (`stat_path` describes a final
symlink, `archive` tars the link itself), except that a trailing `/` follows it. A symlink's
`link_target` is where it finally leads, resolved inside the root. `extract` resolves the
whole destination, which must be a directory ("extraction point is not a directory"), and
refuses a read-only bind mount ("mounted volume is marked read-only") or a read-only root
outside the binds ("container rootfs is marked read-only"); what the extraction refuses
is said in docker's words ("Error processing tar file(exit status 1): ..."). A missing path is
FileNotFoundError, which callers turn into docker's 404.

Blocking: run on a worker thread.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass

from supervisor.archive import paths
from supervisor.archive.pack import pack
from supervisor.archive.resolve import Root, realpath
from supervisor.archive.unpack import Options, UnpackError, unpack
from supervisor.archive.view import BindMount, mount_of

EXTRACT_NOT_DIR = "extraction point is not a directory"
VOLUME_READONLY = "mounted volume is marked read-only"
ROOTFS_READONLY = "container rootfs is marked read-only"
TAR_FAILED = "Error processing tar file(exit status 1): "


@dataclass(frozen=True)
class PathStat:
    """docker's ContainerPathStat."""

    name: str
    size: int
    mode: int  # st_mode
    mtime_ns: int
    link_target: str = ""

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


@dataclass(frozen=True)
class _Found:
    absolute: str  # the path asked for, absolute in the container
    entry: bytes  # its parent resolved, its last component as given
    stat: PathStat


def _find(root: Root, path: str) -> _Found:
    absolute = paths.in_container(path)
    directory, last = paths.split(absolute)
    resolved = realpath(root, directory)
    entry = resolved.rstrip(b"/") + b"/" + os.fsencode(last) if last else resolved + b"/"
    st = root.lstat(entry)
    link = ""
    if stat.S_ISLNK(st.st_mode):
        link = os.fsdecode(realpath(root, absolute))
    found = PathStat(paths.base(absolute), st.st_size, st.st_mode, st.st_mtime_ns, link)
    return _Found(absolute, entry, found)


def stat_path(root: Root, path: str) -> PathStat:
    return _find(root, path).stat


def archive(root: Root, path: str) -> tuple[PathStat, Generator[bytes, None, None]]:
    """The path's stat and the tar of it (entries named after its last component)."""
    found = _find(root, path)
    top = os.fsencode(found.stat.name if found.stat.name != "/" else "")
    if found.stat.is_dir:
        parent = root.open(found.entry, os.O_RDONLY | os.O_DIRECTORY)
        name = b"."
    else:
        directory, _, name = found.entry.rstrip(b"/").rpartition(b"/")
        parent = root.open(directory or b"/", os.O_RDONLY | os.O_DIRECTORY)
    return found.stat, _closing(pack(parent, name, top), parent)


def _closing(chunks: Iterable[bytes], fd: int) -> Generator[bytes, None, None]:
    try:
        yield from chunks
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Target:
    """What `extract` needs to know of the container beyond its root."""

    binds: Sequence[BindMount] = ()
    readonly_root: bool = False
    owner: tuple[int, int] | None = None  # the container's user, for copy_uid_gid


def extract(
    root: Root,
    path: str,
    chunks: Iterable[bytes],
    target: Target,
    *,
    no_overwrite_dir_non_dir: bool,
    copy_uid_gid: bool,
) -> None:
    resolved = realpath(root, paths.in_container(path))
    if not stat.S_ISDIR(root.stat(resolved).st_mode):
        raise UnpackError(EXTRACT_NOT_DIR)
    bind = mount_of(target.binds, os.fsdecode(resolved))
    if bind is not None and bind.readonly:
        raise UnpackError(VOLUME_READONLY)
    if bind is None and target.readonly_root:
        raise UnpackError(ROOTFS_READONLY)
    options = Options(
        no_overwrite_dir_non_dir=no_overwrite_dir_non_dir,
        owner=target.owner if copy_uid_gid else None,
    )
    try:
        unpack(chunks, root, resolved, options)
    except UnpackError as e:  # docker's daemon untars in a child and says so
        raise UnpackError(f"{TAR_FAILED}{e}") from None
