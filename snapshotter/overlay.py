"""The overlayfs snapshotter: each snapshot stores only its own changes (containerd's overlay).

A snapshot's `fs` is its upper dir; the `fs` of its ancestors are the lower dirs, nearest
parent first (top-most first, as overlay wants them). The layout and the crash rules are
`snapshotter.base`'s. Mounts, as containerd 1.6 returns them (design notes §2.4), with P the
parent chain:

| snapshot | mount |
| --- | --- |
| Active or View, no parent | bind of its own fs, `rw,rbind` / `ro,rbind` |
| View, one parent | bind of the parent's fs, `ro,rbind` (its own fs stays unused) |
| Active, parents | `overlay`: [`index=off`], `workdir=`, `upperdir=`, `lowerdir=P…` |
| View, two parents or more | `overlay`: [`index=off`], `lowerdir=P…` (read-only: no upper) |

`index=off` is added when the kernel has the parameter (/sys/module/overlay/parameters/index)
so that a host default of `index=on` cannot make lower dirs unusable in a second overlay.
Options can exceed the kernel's page for deep chains; `snapshotter.mount` deals with that.
`userxattr` (rootless overlay in a user namespace) is not supported.

A new upper dir takes the owner of its nearest parent's, so that a layer unpacked into a
remapped image keeps its root's owner. A Commit computes and stores the upper dir's usage;
it keeps the work dir, as containerd does (removing it would break an overlay still mounted
by a careless caller, for one inode's gain).

The backing filesystem must report d_type (checked when the snapshotter is made).
"""

from __future__ import annotations

import asyncio
import builtins
import os
from collections.abc import Sequence
from pathlib import Path

from snapshotter import fsutil
from snapshotter.base import DirectorySnapshotter, mkdir
from snapshotter.protocol import Kind, Mount
from snapshotter.storage import Record

_INDEX_PARAMETER = Path("/sys/module/overlay/parameters/index")


class OverlaySnapshotter(DirectorySnapshotter):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        try:
            fsutil.check_d_type(root)
        except BaseException:
            self._store.close()
            raise
        self._options: tuple[str, ...] = ("index=off",) if _INDEX_PARAMETER.exists() else ()

    async def upper_dir(self, key: str) -> Path:
        """The snapshot's own tree: where a layer is extracted, or the overlay's upperdir."""
        return self.fs_dir((await self._get(key)).id)

    async def lower_dirs(self, key: str) -> builtins.list[Path]:
        """The parents' trees, nearest parent first (overlay's lowerdir order)."""

        def lower_dirs() -> builtins.list[Path]:
            with self._store.read() as tx:
                return [self.fs_dir(i) for i in tx.parent_ids(tx.get(key))]

        return await asyncio.to_thread(lower_dirs)

    def _make_dirs(self, directory: Path, kind: Kind, parent_ids: Sequence[int]) -> None:
        fs = directory / "fs"
        mkdir(fs, 0o755)
        if parent_ids:
            st = os.stat(self.fs_dir(parent_ids[0]))
            os.chown(fs, st.st_uid, st.st_gid)
        if kind == Kind.ACTIVE:
            mkdir(directory / "work", 0o711)

    def _mounts(self, record: Record, parent_ids: Sequence[int]) -> builtins.list[Mount]:
        if not parent_ids:
            mode = "rw" if record.kind == Kind.ACTIVE else "ro"
            return [Mount("bind", str(self.fs_dir(record.id)), (mode, "rbind"))]
        if record.kind == Kind.VIEW and len(parent_ids) == 1:
            return [Mount("bind", str(self.fs_dir(parent_ids[0])), ("ro", "rbind"))]
        options = list(self._options)
        if record.kind == Kind.ACTIVE:
            options.append(f"workdir={self.snapshot_dir(record.id) / 'work'}")
            options.append(f"upperdir={self.fs_dir(record.id)}")
        options.append("lowerdir=" + ":".join(str(self.fs_dir(i)) for i in parent_ids))
        return [Mount("overlay", "overlay", tuple(options))]
