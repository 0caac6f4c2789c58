"""The walking differ: its tar, applied on the lower tree, gives the upper tree back."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from supervisor.diff.apply import Directory, OverlayUpper
from supervisor.diff.walk import Written, diff_directories, diff_overlay_upper
from tests.unit.diff.layers import MTIME, apply_bytes, entry, names_in, sha256, tar, tree

BASE = tar(
    entry("etc/", tarfile.DIRTYPE),
    entry("etc/motd", data=b"hello"),
    entry("etc/same", data=b"same size"),
    entry("etc/keep", data=b"kept"),
    entry("bin/", tarfile.DIRTYPE),
    entry("bin/tool", data=b"tool" * 1000, mode=0o755),
    entry("bin/alias", tarfile.LNKTYPE, linkname="bin/tool", mode=0o755),
    entry("bin/sh", tarfile.SYMTYPE, linkname="tool"),
    entry("var/", tarfile.DIRTYPE),
    entry("var/cache/", tarfile.DIRTYPE),
    entry("var/cache/a", data=b"a"),
    entry("var/cache/deep/", tarfile.DIRTYPE),
    entry("var/cache/deep/b", data=b"b"),
    entry("was-file", data=b"f"),
    entry("was-dir/", tarfile.DIRTYPE),
    entry("was-dir/child", data=b"c"),
    entry("dev/", tarfile.DIRTYPE),
    entry("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666),
    entry("owned", data=b"o"),
    entry("x-attrs", data=b"x", pax_headers={"SCHILY.xattr.user.a": "1"}),
)
CHANGES = tar(
    entry("etc/", tarfile.DIRTYPE),
    entry("etc/motd", data=b"changed, and longer"),
    entry("etc/same", data=b"SAME SIZE"),  # same size and mtime second: content decides
    entry("etc/new", data=b"new"),
    entry("etc/.wh.keep"),
    entry("bin/", tarfile.DIRTYPE, mode=0o700),
    entry("bin/sh", tarfile.SYMTYPE, linkname="alias"),
    entry("var/", tarfile.DIRTYPE),
    entry("var/.wh.cache"),
    entry("was-file/", tarfile.DIRTYPE),
    entry("was-file/inside", data=b"i"),
    entry("was-dir", data=b"now a file"),
    entry("owned", data=b"o", uid=42, gid=43),
    entry("x-attrs", data=b"x", pax_headers={"SCHILY.xattr.user.a": "2"}),
    entry("new-dir/", tarfile.DIRTYPE, mode=0o710),
    entry("new-dir/f", data=b"f"),
    entry("new-dir/g", tarfile.LNKTYPE, linkname="new-dir/f"),
    entry("fifo", tarfile.FIFOTYPE),
)


def make(tmp: Path, name: str, *layers: bytes) -> Path:
    path = tmp / name
    path.mkdir()
    for layer in layers:
        apply_bytes(tmp, layer, Directory(path))
    return path


def diff(lower: Path, upper: Path) -> tuple[bytes, Written]:
    out = io.BytesIO()
    written = diff_directories(lower, upper, out)
    return out.getvalue(), written


def test_applying_the_diff_on_the_lower_tree_gives_the_upper_tree(tmp_path: Path) -> None:
    lower = make(tmp_path, "lower", BASE)
    upper = make(tmp_path, "upper", BASE, CHANGES)
    data, written = diff(lower, upper)
    assert written == Written(sha256(data), len(data))
    again = make(tmp_path, "again", BASE, data)
    assert tree(again) == tree(upper)


def test_the_diff_holds_changes_whiteouts_and_their_parents_only(tmp_path: Path) -> None:
    data, _ = diff(make(tmp_path, "lower", BASE), make(tmp_path, "upper", BASE, CHANGES))
    assert names_in(data) == [
        "bin",
        "bin/sh",
        "etc",
        "etc/.wh.keep",
        "etc/motd",
        "etc/new",
        "etc/same",
        "fifo",
        "new-dir",
        "new-dir/f",
        "new-dir/g",
        "owned",
        "var",
        "var/.wh.cache",
        "was-dir",
        "was-file",
        "was-file/inside",
        "x-attrs",
    ]
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        assert archive.getmember("new-dir/g").islnk()
        assert archive.getmember("x-attrs").pax_headers["SCHILY.xattr.user.a"] == "2"
        assert archive.getmember("etc/.wh.keep").mtime == 0


def test_identical_trees_give_an_empty_tar(tmp_path: Path) -> None:
    data, written = diff(make(tmp_path, "a", BASE), make(tmp_path, "b", BASE))
    assert data == bytes(1024)
    assert written.diff_id == "sha256:" + hashlib.sha256(bytes(1024)).hexdigest()


def test_differing_nanoseconds_are_a_change_even_with_equal_content(tmp_path: Path) -> None:
    a, b = make(tmp_path, "a", BASE), make(tmp_path, "b", BASE)
    os.utime(b / "etc/motd", ns=(MTIME * 10**9 + 5, MTIME * 10**9 + 5))
    assert names_in(diff(a, b)[0]) == ["etc", "etc/motd"]
    os.utime(a / "etc/motd", ns=(MTIME * 10**9 + 5, MTIME * 10**9 + 5))
    assert names_in(diff(a, b)[0]) == []


def test_a_file_with_several_names_is_written_once(tmp_path: Path) -> None:
    lower = make(tmp_path, "lower", BASE)
    upper = make(tmp_path, "upper", BASE)
    (upper / "bin/tool").write_bytes(b"rewritten in place")  # both names see it
    os.link(upper / "bin/tool", upper / "bin/zz")  # and a new third name
    data, _ = diff(lower, upper)
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        members = {m.name: m for m in archive.getmembers()}
    assert members["bin/alias"].isreg()
    assert members["bin/tool"].islnk()
    assert members["bin/tool"].linkname == "bin/alias"
    assert members["bin/zz"].islnk()
    assert members["bin/zz"].linkname == "bin/alias"
    assert tree(make(tmp_path, "again", BASE, data)) == tree(upper)


def test_unchanged_names_of_a_new_name_s_file_become_hard_links(tmp_path: Path) -> None:
    lower = make(tmp_path, "lower", BASE)
    upper = make(tmp_path, "upper", BASE)
    os.link(upper / "bin/tool", upper / "bin/zz")  # bin/alias and bin/tool are unchanged
    data, _ = diff(lower, upper)
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        members = {m.name: m for m in archive.getmembers()}
    assert members["bin/zz"].isreg()
    assert members["bin/alias"].linkname == members["bin/tool"].linkname == "bin/zz"
    again = make(tmp_path, "again", BASE, data)
    assert os.lstat(again / "bin/tool").st_ino == os.lstat(again / "bin/zz").st_ino


@pytest.fixture
def overlay(tmp_path: Path) -> tuple[Path, Path]:
    """A lower tree and an upper dir made the way the overlay fast path makes them."""
    lower = make(tmp_path, "lower", BASE)
    upper = tmp_path / "upper"
    upper.mkdir()
    apply_bytes(tmp_path, CHANGES, OverlayUpper(upper, (lower,)))
    return lower, upper


def test_the_overlay_upper_diff_reproduces_the_layer(
    tmp_path: Path, overlay: tuple[Path, Path]
) -> None:
    lower, upper = overlay
    out = io.BytesIO()
    written = diff_overlay_upper(upper, [lower], out)
    assert written == Written(sha256(out.getvalue()), len(out.getvalue()))
    expected = make(tmp_path, "expected", BASE, CHANGES)
    assert tree(make(tmp_path, "again", BASE, out.getvalue())) == tree(expected)


def test_the_overlay_upper_diff_writes_whiteouts_and_opaque_markers(tmp_path: Path) -> None:
    lower = make(tmp_path, "lower", BASE)
    upper = tmp_path / "upper"
    upper.mkdir()
    layer = tar(
        entry("etc/", tarfile.DIRTYPE),
        entry("etc/.wh..wh..opq"),
        entry("etc/only", data=b"o"),
        entry("var/cache/.wh.a"),
    )
    apply_bytes(tmp_path, layer, OverlayUpper(upper, (lower,)))
    out = io.BytesIO()
    diff_overlay_upper(upper, [lower], out)
    names = names_in(out.getvalue())
    assert names == ["etc", "etc/.wh..wh..opq", "etc/only", "var", "var/cache", "var/cache/.wh.a"]
    again = make(tmp_path, "again", BASE, out.getvalue())
    assert sorted(os.listdir(again / "etc")) == ["only"]
    assert sorted(os.listdir(again / "var/cache")) == ["deep"]
