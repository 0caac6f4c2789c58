"""The archive core without a daemon: docker's path rules, and tars packed and unpacked in a
temporary root that nothing may leave (symlinks in the root or the tar, `../` names)."""

from __future__ import annotations

import io
import os
import posixpath
import tarfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ctl.cp import split_arg
from supervisor.archive import paths
from supervisor.archive.ops import archive, stat_path
from supervisor.archive.resolve import open_root, realpath
from supervisor.archive.unpack import Options, UnpackError, clean_name, unpack


def _tar(*entries: tuple[str, bytes | str | None], link: str = "") -> bytes:
    """Files (bytes), symlinks (str: target), directories (None); `link`: hard link names."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in entries:
            info = tarfile.TarInfo(name)
            if content is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif isinstance(content, str):
                info.type = tarfile.LNKTYPE if name == link else tarfile.SYMTYPE
                info.linkname = content
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _unpack(root: Path, data: bytes, dest: bytes = b"/", **kw: object) -> None:
    handle = open_root(root)
    try:
        unpack([data], handle, dest, Options(**kw))  # type: ignore[arg-type]
    finally:
        os.close(handle.fd)


@pytest.mark.parametrize(
    ("arg", "split"),
    [
        ("web:/etc", ("web", "/etc")),
        ("/abs:path", ("", "/abs:path")),
        ("./file:name", ("", "./file:name")),
        ("plain", ("", "plain")),
        ("web:", ("web", "")),
    ],
)
def test_split_arg_follows_dockers_rules(arg, split):
    assert split_arg(arg) == split


def test_paths_keep_trailing_dot_and_separator():
    assert paths.in_container("etc/.") == "/etc/."
    assert paths.in_container("etc/") == "/etc/"
    assert paths.in_container("/a/../b") == "/b"
    assert paths.split_dir_entry("/etc/.") == ("/etc", ".")
    assert paths.split_dir_entry("/etc/passwd") == ("/etc", "passwd")
    assert paths.rebase_name("/x/link/", "/y/target") == ("/y/target/", "link")


def test_prepare_copy_decides_like_docker():
    file_, dir_ = paths.CopyInfo("/s/f", True, False), paths.CopyInfo("/s/d", True, True)
    assert paths.prepare_copy(file_, paths.CopyInfo("/t", True, True)) == paths.Prepared("/t")
    assert paths.prepare_copy(file_, paths.CopyInfo("/t/g", True)) == paths.Prepared("/t", "f", "g")
    assert paths.prepare_copy(dir_, paths.CopyInfo("/t/new")) == paths.Prepared("/t", "d", "new")
    with pytest.raises(paths.CopyError, match="cannot copy directory"):
        paths.prepare_copy(dir_, paths.CopyInfo("/t/g", True))
    with pytest.raises(paths.CopyError, match="no such directory"):
        paths.prepare_copy(file_, paths.CopyInfo("/t/new/"))


def test_realpath_resolves_links_inside_the_root(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "escape").symlink_to("/")
    (tmp_path / "a" / "up").symlink_to("../../../..")
    root = open_root(tmp_path)
    try:
        assert realpath(root, "/escape/etc/passwd") == b"/etc/passwd"
        assert realpath(root, "/a/up/a") == b"/a"
        found = stat_path(root, "/escape")
        assert (found.name, found.link_target) == ("escape", "/")
    finally:
        os.close(root.fd)


def test_a_symlink_entry_to_slash_keeps_later_entries_inside_the_root(tmp_path):
    root, victim = tmp_path / "root", tmp_path / "victim"
    root.mkdir()
    victim.mkdir()
    _unpack(root, _tar(("evil", "/"), (f"evil{victim}/pwned", b"x")))
    assert os.listdir(victim) == []
    assert (root / str(victim).lstrip("/") / "pwned").read_bytes() == b"x"


def test_a_symlink_in_the_root_is_resolved_inside_it(tmp_path):
    root, victim = tmp_path / "root", tmp_path / "victim"
    root.mkdir()
    victim.mkdir()
    (root / "up").symlink_to("../../../../..")
    _unpack(root, _tar((f"up{victim}/pwned", b"x")))
    assert os.listdir(victim) == []
    assert (root / str(victim).lstrip("/") / "pwned").read_bytes() == b"x"


@pytest.mark.parametrize(
    ("entries", "link", "error"),
    [
        ([("../x", b"x")], "", '"../x" is outside of "/dst"'),
        ([("a/../../x", b"x")], "", '"../x" is outside of "/dst"'),
        ([("l", "../../etc")], "", 'invalid symlink "/dst/l" -> "../../etc"'),
        ([("f", b"x"), ("h", "../f")], "h", 'invalid hardlink "/f" -> "../f"'),
    ],
)
def test_names_that_leave_the_destination_are_refused(tmp_path, entries, link, error):
    (tmp_path / "dst").mkdir()
    with pytest.raises(UnpackError) as refused:
        _unpack(tmp_path, _tar(*entries, link=link), b"/dst")
    assert str(refused.value) == error
    assert not (tmp_path.parent / "x").exists()


def test_no_overwrite_dir_non_dir(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_text("f")
    with pytest.raises(UnpackError, match='cannot overwrite directory "/d" with non-directory'):
        _unpack(tmp_path, _tar(("d", b"x")), no_overwrite_dir_non_dir=True)
    with pytest.raises(UnpackError, match='cannot overwrite non-directory "/f" with directory'):
        _unpack(tmp_path, _tar(("f", None)), no_overwrite_dir_non_dir=True)
    _unpack(tmp_path, _tar(("d", b"x"), ("f", None)))  # without the option: replaced
    assert (tmp_path / "d").read_bytes() == b"x"
    assert (tmp_path / "f").is_dir()


def test_pack_then_unpack_keeps_files_links_and_modes(tmp_path):
    source, copy = tmp_path / "source", tmp_path / "copy"
    (source / "d" / "sub").mkdir(parents=True)
    (source / "d" / "sub" / "f").write_bytes(b"data" * 1000)
    os.chmod(source / "d" / "sub" / "f", 0o4751)
    os.link(source / "d" / "sub" / "f", source / "d" / "hard")
    (source / "d" / "link").symlink_to("/nowhere")
    copy.mkdir()
    root = open_root(source)
    try:
        found, chunks = archive(root, "/d")
        data = b"".join(chunks)
    finally:
        os.close(root.fd)
    assert found.is_dir
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        kinds = {m.name: m.type for m in tar.getmembers()}
    assert kinds == {
        "d": tarfile.DIRTYPE,
        "d/hard": tarfile.REGTYPE,
        "d/link": tarfile.SYMTYPE,
        "d/sub": tarfile.DIRTYPE,
        "d/sub/f": tarfile.LNKTYPE,
    }
    _unpack(copy, data)
    assert (copy / "d" / "sub" / "f").read_bytes() == b"data" * 1000
    assert (copy / "d" / "sub" / "f").stat().st_mode & 0o7777 == 0o4751
    assert (copy / "d" / "hard").stat().st_ino == (copy / "d" / "sub" / "f").stat().st_ino
    assert os.readlink(copy / "d" / "link") == "/nowhere"


@given(st.lists(st.sampled_from(["a", "b", ".", "..", ""]), max_size=8), st.booleans())
def test_clean_name_is_gos_clean_joined_to_the_destination(parts, absolute):
    name = ("/" if absolute else "") + "/".join(parts)
    cleaned = posixpath.normpath(name) if name else "."
    if cleaned == ".." or cleaned.startswith("../"):
        assert clean_name(name.encode()) is None
    else:
        assert clean_name(name.encode()) == cleaned.lstrip("/").removeprefix(".").encode()
