"""The native snapshotter: every snapshot is a whole copy of its parent's tree.

For filesystems overlay cannot use (or kernels without it). Prepare and View copy the
parent's `fs` into the new snapshot's own (`snapshotter.fsutil.copy_tree`: owners, modes,
xattrs, hard links and devices kept, extents shared where the filesystem can); a snapshot
without a parent starts as an empty 0755 directory. Mounts are always one bind of the
snapshot's own fs: `rbind,rw` for Active, `rbind,ro` for View (containerd's native order;
its overlay's binds say `rw,rbind`). Usage of an Active snapshot
(and what Commit stores) is the whole tree's, as containerd's native snapshotter reports it.

The copy runs inside the metastore's write transaction (as containerd's does), so a parent
cannot be removed halfway through; other writers wait meanwhile. The layout and the crash
rules are `snapshotter.base`'s.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from pathlib import Path

from snapshotter import fsutil
from snapshotter.base import DirectorySnapshotter, mkdir
from snapshotter.protocol import Kind, Mount
from snapshotter.storage import Record


class NativeSnapshotter(DirectorySnapshotter):
    """`NativeSnapshotter(root)`: a backend on its own root directory."""

    def _make_dirs(self, directory: Path, kind: Kind, parent_ids: Sequence[int]) -> None:
        if parent_ids:
            fsutil.copy_tree(self.fs_dir(parent_ids[0]), directory / "fs")
        else:
            mkdir(directory / "fs", 0o755)

    def _mounts(self, record: Record, parent_ids: Sequence[int]) -> builtins.list[Mount]:
        mode = "rw" if record.kind == Kind.ACTIVE else "ro"
        return [Mount("bind", str(self.fs_dir(record.id)), ("rbind", mode))]  # containerd's order
