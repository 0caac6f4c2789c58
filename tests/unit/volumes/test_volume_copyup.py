"""Copy-up from a root filesystem into a volume, on real directories (as root): what is kept,
that nothing outside the root is read and nothing outside the volume written, and the marker
that keeps a cut-off copy from passing as complete."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from supervisor.volumes import copyup


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    app = root / "srv" / "app"
    (app / "sub").mkdir(parents=True)
    (app / "conf").write_text("config\n")
    os.chown(app / "conf", 1000, 1001)
    os.chmod(app / "conf", 0o640)
    (app / "run").write_text("#!/bin/sh\n")
    os.chmod(app / "run", 0o4755)
    os.setxattr(app / "conf", "user.origin", b"image")
    (app / "sub" / "deep").write_text("deep\n")
    os.link(app / "conf", app / "sub" / "conf-link")
    os.symlink("conf", app / "rel")
    os.symlink("/etc/shadow", app / "abs")
    os.mkfifo(app / "pipe", 0o620)
    os.mknod(app / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.chown(app / "sub", 33, 33)
    os.chmod(app / "sub", 0o710)
    os.chown(app, 1000, 1001)
    os.chmod(app, 0o750)
    os.utime(app / "sub" / "deep", ns=(1_000_000_000, 2_000_000_000))
    os.symlink("/srv/app", root / "via-abs")  # resolved inside the root, not on the host
    os.symlink("../../../../srv/app", root / "srv" / "via-up")  # `..` stops at the root
    os.symlink("/etc", root / "host-etc")  # the root has no /etc: nothing to copy
    return root


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    directory = tmp_path / "vol"
    (directory / "_data").mkdir(parents=True)
    return directory


def test_copy_keeps_owners_modes_xattrs_times_links_and_nodes(rootfs, volume):
    data = volume / "_data"
    copied = copyup.copy_up(rootfs, "/srv/app", volume, data)
    assert copied.entries == 9
    assert sorted(os.listdir(data)) == ["abs", "conf", "null", "pipe", "rel", "run", "sub"]
    st = os.lstat(data)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1001, 0o750)
    st = os.lstat(data / "conf")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1001, 0o640)
    assert os.getxattr(data / "conf", "user.origin") == b"image"
    assert stat.S_IMODE(os.lstat(data / "run").st_mode) == 0o4755
    st = os.lstat(data / "sub")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (33, 33, 0o710)
    assert os.lstat(data / "sub" / "deep").st_mtime_ns == 2_000_000_000
    assert os.lstat(data / "sub" / "conf-link").st_ino == os.lstat(data / "conf").st_ino
    assert os.readlink(data / "rel") == "conf"
    assert os.readlink(data / "abs") == "/etc/shadow"  # a link, never what it points at
    assert stat.S_ISFIFO(os.lstat(data / "pipe").st_mode)
    assert os.lstat(data / "null").st_rdev == os.makedev(1, 3)
    assert (volume / copyup.DONE).exists()
    assert not (volume / copyup.PENDING).exists()


@pytest.mark.parametrize("target", ["/via-abs", "/srv/via-up", "/srv/../../srv/./app/"])
def test_the_target_resolves_inside_the_root(rootfs, volume, target):
    assert copyup.copy_up(rootfs, target, volume, volume / "_data").entries == 9


@pytest.mark.parametrize("target", ["/host-etc", "/missing", "/srv/app/conf", "/srv/app/abs"])
def test_a_target_the_root_does_not_have_as_a_directory_copies_nothing(rootfs, volume, target):
    assert copyup.copy_up(rootfs, target, volume, volume / "_data").entries == 0
    assert os.listdir(volume / "_data") == []
    assert not (volume / copyup.DONE).exists()


def test_a_volume_is_copied_into_once_and_a_cut_off_copy_is_discarded(rootfs, volume):
    data = volume / "_data"
    assert copyup.wanted(volume, data)
    (data / "left-by-a-crash").write_text("half")
    (volume / copyup.PENDING).touch()
    assert copyup.wanted(volume, data)  # emptied: the copy is made again
    assert os.listdir(data) == []
    assert not (volume / copyup.PENDING).exists()
    copyup.copy_up(rootfs, "/srv/app", volume, data)
    assert not copyup.wanted(volume, data)
    copyup.clear(data)
    assert not copyup.wanted(volume, data)  # empty, but copied into already
    copyup.forget(volume)
    assert copyup.wanted(volume, data)
    (data / "mine").write_text("x")
    assert not copyup.wanted(volume, data)  # not empty: never copied over


def test_a_failed_copy_leaves_no_marker_and_an_empty_volume(rootfs, volume, monkeypatch):
    data = volume / "_data"

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "sendfile", broken)
    with pytest.raises(Exception, match="No space left on device"):
        copyup.copy_up(rootfs, "/srv/app", volume, data)
    assert os.listdir(data) == []
    assert not (volume / copyup.PENDING).exists()
    assert not (volume / copyup.DONE).exists()


def test_clear_removes_links_not_what_they_point_at(tmp_path, volume):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    data = volume / "_data"
    os.symlink(outside, data / "link")
    (data / "dir").mkdir()
    os.symlink(outside, data / "dir" / "link")
    copyup.clear(data)
    assert os.listdir(data) == []
    assert (outside / "precious").read_text() == "keep"
