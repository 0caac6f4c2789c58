"""A container's root as `cp` sees it, mounted for the length of one call.

docker's cp sees the container's root filesystem with its volumes and bind mounts over it,
not what only the running process has (/proc, /sys, /dev, tmpfs mounts). `mounted` builds
that view in a private temporary directory (under the daemon's `tmpmounts`): the base is a
bind of the running task's bundle rootfs (the very mount runc pivoted into, so writes are
seen at once inside the container) or, with no task, the container's snapshot mounted as a
task would mount it; then each bind mount of the spec (`bind_mounts`: volumes reach the spec
as binds too) is bound over its target, read-only when the spec says so. Every mount is made
private before anything is mounted below it, so nothing propagates to the host's mounts or a
bind's source; a target is opened inside the view with openat2(RESOLVE_IN_ROOT) and mounted
on through its fd (/proc/self/fd/N), so a symlink in the container never puts a bind on the
host. A target that does not exist (a container that never ran) or whose type differs from the
source is skipped. At the end one lazy unmount detaches the whole tree and the directory is
removed, whatever failed.

Blocking (mount(2), umount2(2)): run it on a worker thread.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from snapshotter import linux
from snapshotter.mount import mount_all
from snapshotter.protocol import Mount
from supervisor.archive import paths
from supervisor.archive.resolve import Root, open_root


@dataclass(frozen=True)
class BindMount:
    source: str  # on the host
    target: str  # in the container: absolute, cleaned
    readonly: bool = False
    recursive: bool = False


@dataclass(frozen=True)
class Layout:
    """What the root is made of: a task's mounted rootfs, or the snapshot's mounts."""

    rootfs: Path | None
    mounts: tuple[Mount, ...] = ()
    binds: tuple[BindMount, ...] = ()


def bind_mounts(spec: Mapping[str, Any]) -> list[BindMount]:
    """The spec's bind mounts, in its order (a later one may sit inside an earlier one)."""
    found = []
    for mount in spec.get("mounts") or ():
        if not isinstance(mount, Mapping):
            continue
        options = [str(o) for o in mount.get("options") or ()]
        if mount.get("type") != "bind" and not {"bind", "rbind"} & set(options):
            continue
        source, target = str(mount.get("source") or ""), str(mount.get("destination") or "")
        if not source.startswith("/") or not target:
            continue
        found.append(
            BindMount(source, paths.clean("/" + target), "ro" in options, "rbind" in options)
        )
    return found


def root_readonly(spec: Mapping[str, Any]) -> bool:
    root = spec.get("root")
    return isinstance(root, Mapping) and bool(root.get("readonly"))


def owner(spec: Mapping[str, Any]) -> tuple[int, int] | None:
    """The process's uid and gid, when it is not root's (docker's ChownOpts for `cp -a`)."""
    process = spec.get("process")
    user = process.get("user") if isinstance(process, Mapping) else None
    if not isinstance(user, Mapping):
        return None
    uid, gid = int(user.get("uid") or 0), int(user.get("gid") or 0)
    return None if (uid, gid) == (0, 0) else (uid, gid)


def mount_of(binds: Sequence[BindMount], path: str) -> BindMount | None:
    """The bind mount a container path is in (the deepest), if any."""
    best: BindMount | None = None
    for bind in binds:
        if (path == bind.target or path.startswith(bind.target.rstrip("/") + "/")) and (
            best is None or len(bind.target) >= len(best.target)
        ):
            best = bind
    return best


@contextlib.contextmanager
def mounted(layout: Layout, parent: Path) -> Iterator[Root]:
    """The view of `layout`, as a `Root`; see the module doc."""
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix="archive-", dir=parent))
    root: Root | None = None
    mounted_base = False
    try:
        if layout.rootfs is not None:
            linux.mount(str(layout.rootfs), directory, None, linux.MS_BIND, None)
        else:
            mount_all(layout.mounts, directory)
        mounted_base = True
        linux.mount(None, directory, None, linux.MS_PRIVATE, None)
        root = open_root(directory)
        for bind in layout.binds:
            _bind(root, bind)
        yield root
    finally:
        if root is not None:
            os.close(root.fd)
        if mounted_base:
            linux.umount2(directory, linux.MNT_DETACH | linux.UMOUNT_NOFOLLOW)
        with contextlib.suppress(OSError):
            directory.rmdir()


def _bind(root: Root, bind: BindMount) -> None:
    try:
        source = os.open(bind.source, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # gone from the host: the container would not start either
    try:
        try:
            target = root.open(bind.target, os.O_PATH)
        except OSError:
            return  # not made yet (runc makes it at the first start)
        try:
            if stat.S_ISDIR(os.fstat(source).st_mode) != stat.S_ISDIR(os.fstat(target).st_mode):
                return
            flags = linux.MS_BIND | (linux.MS_REC if bind.recursive else 0)
            linux.mount(f"/proc/self/fd/{source}", f"/proc/self/fd/{target}", None, flags, None)
        finally:
            os.close(target)
    finally:
        os.close(source)
    top = root.open(bind.target, os.O_PATH)  # now the bind's own root
    try:
        at = f"/proc/self/fd/{top}"
        linux.mount(None, at, None, linux.MS_PRIVATE | linux.MS_REC, None)
        if bind.readonly:
            ro = linux.MS_REMOUNT | linux.MS_BIND | linux.MS_RDONLY
            linux.mount(None, at, None, ro, None)
    finally:
        os.close(top)
