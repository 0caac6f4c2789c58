"""Filesystem helpers the snapshotters share: disk usage, tree copy, d_type support.

All of them block: snapshotters call them from worker threads.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from snapshotter import linux
from snapshotter.protocol import Usage
from supervisor.errors import FailedPrecondition, Internal


def disk_usage(root: Path) -> Usage:
    """containerd's DiskUsage: unique (dev, inode) pairs and their allocated blocks * 512.

    The root itself counts; symlinks are not followed; hard links count once; entries that
    vanish during the walk are skipped.
    """
    seen: set[tuple[int, int]] = set()
    size = 0

    def count(st: os.stat_result) -> None:
        nonlocal size
        key = (st.st_dev, st.st_ino)
        if key not in seen:
            seen.add(key)
            size += st.st_blocks * 512

    try:
        count(os.lstat(root))
    except FileNotFoundError:
        return Usage()
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            try:
                count(entry.stat(follow_symlinks=False))
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
            except FileNotFoundError:
                continue
    return Usage(size=size, inodes=len(seen))


def copy_tree(source: Path, destination: Path) -> None:
    """Make `destination` (which must not exist) an exact copy of the tree at `source`.

    GNU `cp -a` keeps what a container's filesystem needs and shutil does not: owners, modes
    with set-id bits, timestamps, xattrs (capabilities, overlay's), hard links within the
    tree, device nodes, fifos and sockets, sparse files; `--reflink=auto` shares extents on
    filesystems that can (btrfs, xfs), so a copy there costs almost nothing.
    """
    result = subprocess.run(
        ["cp", "-a", "--reflink=auto", "--no-target-directory", "--", source, destination],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise Internal(f"copy {source} to {destination}: {result.stderr.strip()}")


def check_d_type(directory: Path) -> None:
    """Overlay needs readdir to report file types; fail early, as containerd does, if not."""
    probe = Path(tempfile.mkdtemp(prefix="d_type-", dir=directory))
    try:
        (probe / "file").touch()
        if linux.d_types(probe).get("file", linux.DT_UNKNOWN) == linux.DT_UNKNOWN:
            raise FailedPrecondition(
                f"the filesystem of {directory} does not report file types (d_type): "
                "overlay needs it (xfs: format with ftype=1)"
            )
    finally:
        shutil.rmtree(probe, ignore_errors=True)
