"""Disk usage, tree copies and the d_type probe, on the real filesystem."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from snapshotter import fsutil, linux
from snapshotter.protocol import Usage


def test_usage_counts_the_root_and_each_inode_once(scratch: Path):
    root = scratch / "tree"
    root.mkdir()
    empty = fsutil.disk_usage(root)
    assert empty.inodes == 1
    (root / "data").write_bytes(os.urandom(40960))
    os.link(root / "data", root / "again")
    os.symlink("/nowhere", root / "dangling")
    (root / "sub").mkdir()
    used = fsutil.disk_usage(root)
    assert used.inodes == 4
    blocks = sum(os.lstat(root / n).st_blocks for n in ("data", "dangling", "sub"))
    assert used.size == empty.size + blocks * 512
    assert fsutil.disk_usage(scratch / "missing") == Usage()


def test_a_copy_keeps_owners_modes_links_devices_and_xattrs(scratch: Path):
    src = scratch / "src"
    src.mkdir()
    os.chmod(src, 0o751)
    (src / "dir").mkdir()
    os.chown(src / "dir", 7, 8)
    (src / "setuid").write_text("x")
    os.chmod(src / "setuid", 0o4755)
    os.link(src / "setuid", src / "dir" / "hardlink")
    os.symlink("../setuid", src / "dir" / "symlink")
    os.mknod(src / "whiteout", stat.S_IFCHR | 0o000, os.makedev(0, 0))
    os.setxattr(src / "dir", "trusted.overlay.opaque", b"y")
    dst = scratch / "dst"
    fsutil.copy_tree(src, dst)

    assert stat.S_IMODE(os.stat(dst).st_mode) == 0o751
    assert (os.stat(dst / "dir").st_uid, os.stat(dst / "dir").st_gid) == (7, 8)
    assert stat.S_IMODE(os.stat(dst / "setuid").st_mode) == 0o4755
    assert os.stat(dst / "setuid").st_ino == os.stat(dst / "dir" / "hardlink").st_ino
    assert os.readlink(dst / "dir" / "symlink") == "../setuid"
    whiteout = os.lstat(dst / "whiteout")
    assert stat.S_ISCHR(whiteout.st_mode)
    assert whiteout.st_rdev == os.makedev(0, 0)
    assert os.getxattr(dst / "dir", "trusted.overlay.opaque") == b"y"


def test_this_filesystem_reports_d_type(scratch: Path):
    (scratch / "file").touch()
    (scratch / "dir").mkdir()
    types = linux.d_types(scratch)
    assert (types["file"], types["dir"]) == (8, 4)  # DT_REG, DT_DIR
    fsutil.check_d_type(scratch)
    assert sorted(os.listdir(scratch)) == ["dir", "file"]  # the probe is gone
