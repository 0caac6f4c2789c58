"""mount_all and unmount against the kernel: all or nothing, stacked mounts, busy targets."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapshotter import mount
from snapshotter.protocol import Mount


@pytest.fixture
def dirs(scratch: Path) -> Iterator[tuple[Path, Path, Path]]:
    a, b, target = scratch / "a", scratch / "b", scratch / "target"
    for d in (a, b, target):
        d.mkdir()
    (a / "from-a").touch()
    (b / "from-b").touch()
    try:
        yield a, b, target
    finally:
        mount.unmount(target, busy_timeout=0)


def test_a_failed_mount_undoes_the_ones_before_it(dirs: tuple[Path, Path, Path]):
    a, _, target = dirs
    good = Mount("bind", str(a), ("rw", "rbind"))
    bad = Mount("bind", str(a / "missing"), ("rw", "rbind"))
    with pytest.raises(mount.MountError) as failed:
        mount.mount_all([good, bad], target)
    assert failed.value.errno == 2
    assert not os.path.ismount(target)


def test_unmount_removes_every_stacked_mount_and_tolerates_none(dirs: tuple[Path, Path, Path]):
    a, b, target = dirs
    mount.mount_all([Mount("bind", str(a), ("rbind",)), Mount("bind", str(b), ("rbind",))], target)
    assert os.listdir(target) == ["from-b"]
    mount.unmount(target)
    assert not os.path.ismount(target)
    assert os.listdir(target) == []
    mount.unmount(target)
    mount.unmount(target / "missing")


def test_a_busy_target_is_detached_lazily_after_the_timeout(dirs: tuple[Path, Path, Path]):
    a, _, target = dirs
    mount.mount_all([Mount("bind", str(a), ("rbind",))], target)
    busy = subprocess.Popen(["sleep", "60"], cwd=target)  # its cwd keeps the mount busy
    try:
        started = time.monotonic()
        mount.unmount(target, busy_timeout=0.3)
        assert time.monotonic() - started >= 0.3  # it was busy, and retried
        assert not os.path.ismount(target)
    finally:
        busy.kill()
        busy.wait()
