"""What a crash leaves under `<root>/tmpmounts`, cleared when the daemon starts.

Diff (`supervisor.services.diff`) and the archive views of `ctrctl cp` (`supervisor.archive`)
mount snapshots and containers' roots in private directories there for the length of one call,
and unmount and remove them when the call ends. A daemon killed in the middle of a call leaves
the mount and its directory; nothing else ever uses them. At start, before serving: every mount
point under the directory is lazily unmounted, deepest first (a lazy unmount of a parent would
leave its children unreachable but mounted), and the directories left are removed with rmdir
only, so nothing is ever deleted through a mount that is still there: a directory that is not
empty is logged and kept.
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog

from snapshotter import linux
from supervisor.volumes.local import mounted_under

log = structlog.get_logger()


def clear(directory: Path) -> tuple[list[str], list[str]]:
    """Unmount and remove what is left under `directory` (kept itself); the mount points
    unmounted and the entries that could not be removed."""
    if not directory.is_dir():
        return [], []
    inside = [p for p in mounted_under(directory) if p != str(directory)]
    for point in sorted(inside, key=lambda p: p.count("/"), reverse=True):
        try:
            linux.umount2(point, linux.MNT_DETACH | linux.UMOUNT_NOFOLLOW)
        except OSError as e:
            log.warning("tmpmount_unmount_failed", path=point, error=str(e))
    kept: list[str] = []
    if [p for p in mounted_under(directory) if p != str(directory)]:
        return inside, [str(directory)]  # something stayed mounted: delete nothing
    for entry in directory.iterdir():
        kept.extend(_remove_empty_tree(entry))
    if inside or kept:
        log.info("tmpmounts_cleared", unmounted=inside, kept=kept)
    return inside, kept


def _remove_empty_tree(top: Path) -> list[str]:
    """rmdir `top` and the directories below it, bottom up; what could not be removed."""
    kept: list[str] = []
    if top.is_symlink() or not top.is_dir():
        return [str(top)]
    for parent, dirs, _files in os.walk(top, topdown=False):
        for name in dirs:
            path = os.path.join(parent, name)
            try:
                os.rmdir(path)
            except OSError:
                kept.append(path)
    try:
        top.rmdir()
    except OSError:
        kept.append(str(top))
    return kept
