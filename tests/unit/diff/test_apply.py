"""Applying layers into plain directories and overlay upper dirs (as root, on the real fs)."""

from __future__ import annotations

import gzip
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from snapshotter.protocol import Mount
from supervisor.diff.apply import (
    Applied,
    Directory,
    OverlayUpper,
    apply_layer,
    target_from_mounts,
)
from supervisor.errors import FailedPrecondition, InvalidArgument, NotFound, Unimplemented
from tests.support import images
from tests.support.images import CharDevice, Dir, File, Hardlink, Opaque, Symlink, Whiteout
from tests.unit.diff.layers import (
    MTIME,
    OCI_GZIP,
    OCI_TAR,
    apply_bytes,
    blob,
    entry,
    sha256,
    tar,
    tree,
)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


def test_every_entry_kind_keeps_owner_mode_mtime_and_xattrs(tmp_path: Path, root: Path) -> None:
    data = tar(
        entry(
            "d/",
            tarfile.DIRTYPE,
            mode=0o750,
            uid=1000,
            gid=1001,
            mtime=MTIME + 1,
            pax_headers={"SCHILY.xattr.user.dir": "d"},
        ),
        entry(
            "d/setuid",
            data=b"#!/bin/sh\n",
            mode=0o4755,
            uid=7,
            gid=8,
            pax_headers={"SCHILY.xattr.user.note": "hi", "mtime": f"{MTIME}.5"},
        ),
        entry("d/link", tarfile.SYMTYPE, linkname="setuid", uid=5, gid=6),
        entry(
            "d/hard",
            tarfile.LNKTYPE,
            linkname="d/setuid",
            mode=0o4755,
            uid=7,
            gid=8,
            pax_headers={"mtime": f"{MTIME}.5"},
        ),  # metadata of a link goes to its inode
        entry("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666),
        entry("dev/loop0", tarfile.BLKTYPE, devmajor=7, devminor=0, mode=0o660, gid=6),
        entry("run/fifo", tarfile.FIFOTYPE, mode=0o600),
        entry("tmp/", tarfile.DIRTYPE, mode=0o1777),
        entry("empty", data=b"", mode=0o400),
    )
    result = apply_bytes(tmp_path, data, Directory(root))
    assert result == Applied(sha256(data), len(data))

    d = os.lstat(root / "d")
    assert stat.S_ISDIR(d.st_mode)
    assert stat.S_IMODE(d.st_mode) == 0o750
    assert (d.st_uid, d.st_gid, d.st_mtime_ns) == (1000, 1001, (MTIME + 1) * 10**9)
    assert os.getxattr(root / "d", "user.dir") == b"d"

    f = os.lstat(root / "d/setuid")
    assert stat.S_ISREG(f.st_mode)
    assert stat.S_IMODE(f.st_mode) == 0o4755
    assert (f.st_uid, f.st_gid, f.st_nlink) == (7, 8, 2)
    assert f.st_mtime_ns == MTIME * 10**9 + 500_000_000
    assert (root / "d/setuid").read_bytes() == b"#!/bin/sh\n"
    assert os.getxattr(root / "d/setuid", "user.note") == b"hi"
    assert os.lstat(root / "d/hard").st_ino == f.st_ino

    link = os.lstat(root / "d/link")
    assert stat.S_ISLNK(link.st_mode)
    assert os.readlink(root / "d/link") == "setuid"
    assert (link.st_uid, link.st_gid) == (5, 6)

    null = os.lstat(root / "dev/null")
    assert stat.S_ISCHR(null.st_mode)
    assert stat.S_IMODE(null.st_mode) == 0o666
    assert (os.major(null.st_rdev), os.minor(null.st_rdev)) == (1, 3)
    loop = os.lstat(root / "dev/loop0")
    assert stat.S_ISBLK(loop.st_mode)
    assert loop.st_rdev == os.makedev(7, 0)
    assert loop.st_gid == 6
    assert stat.S_ISFIFO(os.lstat(root / "run/fifo").st_mode)
    assert stat.S_IMODE(os.lstat(root / "tmp").st_mode) == 0o1777
    assert stat.S_IMODE(os.lstat(root / "empty").st_mode) == 0o400
    # parents the layer did not list are made 0755, root-owned
    assert stat.S_IMODE(os.lstat(root / "dev").st_mode) == 0o755


def test_directory_times_are_set_after_their_children(tmp_path: Path, root: Path) -> None:
    data = tar(
        entry("a/", tarfile.DIRTYPE, mtime=1000),
        entry("a/f", data=b"x"),
        entry("a/b/", tarfile.DIRTYPE, mtime=2000),
        entry("a/b/g", data=b"y"),
    )
    apply_bytes(tmp_path, data, Directory(root))
    assert os.lstat(root / "a").st_mtime == 1000
    assert os.lstat(root / "a/b").st_mtime == 2000


def test_existing_non_directories_are_replaced_and_directories_kept(
    tmp_path: Path, root: Path
) -> None:
    first = tar(
        entry("a/", tarfile.DIRTYPE),
        entry("a/keep", data=b"k"),
        entry("b", data=b"file"),
        entry("c/", tarfile.DIRTYPE),
        entry("c/x", data=b"x"),
        entry("s", tarfile.SYMTYPE, linkname="b"),
    )
    second = tar(
        entry("a/", tarfile.DIRTYPE, mode=0o700, uid=3),
        entry("b/", tarfile.DIRTYPE),
        entry("c", data=b"now a file"),
        entry("s", data=b"not a link"),
    )
    apply_bytes(tmp_path, first, Directory(root))
    apply_bytes(tmp_path, second, Directory(root))
    a = os.lstat(root / "a")
    assert (stat.S_IMODE(a.st_mode), a.st_uid) == (0o700, 3)
    assert (root / "a/keep").read_bytes() == b"k"
    assert (root / "b").is_dir()
    assert (root / "c").read_bytes() == b"now a file"
    assert not (root / "s").is_symlink()
    assert (root / "s").read_bytes() == b"not a link"
    assert (root / "b").is_dir()  # the symlink was replaced, not written through


def test_native_whiteouts_delete_files_and_directories(tmp_path: Path, root: Path) -> None:
    apply_bytes(
        tmp_path,
        images.layer_tar(
            [
                Dir("etc"),
                File("etc/motd", b"hi"),
                Dir("var/cache"),
                File("var/cache/x", b"x"),
                File("keep", b"k"),
            ]
        ),
        Directory(root),
    )
    data = images.layer_tar([Whiteout("etc/motd"), Whiteout("var/cache"), Whiteout("gone")])
    apply_bytes(tmp_path, data, Directory(root))
    assert sorted(os.listdir(root)) == ["etc", "keep", "var"]
    assert os.listdir(root / "etc") == []
    assert os.listdir(root / "var") == []


def test_native_opaque_directory_keeps_only_this_layers_children(
    tmp_path: Path, root: Path
) -> None:
    lower = [Dir("d"), File("d/old", b"o"), Dir("d/sub"), File("d/sub/old", b"o"), File("x")]
    apply_bytes(tmp_path, images.layer_tar(lower), Directory(root))
    data = tar(
        entry("d/", tarfile.DIRTYPE),
        entry("d/new", data=b"n"),
        entry("d/sub/", tarfile.DIRTYPE),
        entry("d/sub/new", data=b"n"),
        entry("d/.wh..wh..opq"),
    )
    apply_bytes(tmp_path, data, Directory(root))
    assert sorted(os.listdir(root / "d")) == ["new", "sub"]
    assert os.listdir(root / "d/sub") == ["new"]
    assert (root / "x").exists()


def test_overlay_whiteouts_become_char_devices_and_opaque_an_xattr(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    lower.mkdir(), upper.mkdir()
    apply_bytes(
        tmp_path,
        images.layer_tar([Dir("etc"), File("etc/motd"), Dir("opt"), File("opt/a")]),
        Directory(lower),
    )
    data = tar(
        entry("etc/", tarfile.DIRTYPE),
        entry("etc/.wh.motd", uid=4, gid=5),
        entry("opt/", tarfile.DIRTYPE),
        entry("opt/.wh..wh..opq"),
        entry("opt/b", data=b"b"),
    )
    apply_bytes(tmp_path, data, OverlayUpper(upper, (lower,)))
    motd = os.lstat(upper / "etc/motd")
    assert stat.S_ISCHR(motd.st_mode)
    assert motd.st_rdev == 0
    assert stat.S_IMODE(motd.st_mode) == 0
    assert (motd.st_uid, motd.st_gid) == (4, 5)
    assert os.getxattr(upper / "opt", "trusted.overlay.opaque") == b"y"
    assert sorted(os.listdir(upper / "opt")) == ["b"]
    assert not (upper / "etc/.wh.motd").exists()
    assert (lower / "etc/motd").exists()  # lowers are only read


def test_overlay_userxattr_mount_marks_opaque_with_user_xattr(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    lower.mkdir(), upper.mkdir()
    data = tar(
        entry("d/", tarfile.DIRTYPE),
        entry("d/.wh..wh..opq"),
        entry("f", pax_headers={"SCHILY.xattr.user.overlay.redirect": "/x"}),
    )
    apply_bytes(tmp_path, data, OverlayUpper(upper, (lower,), userxattr=True))
    assert os.getxattr(upper / "d", "user.overlay.opaque") == b"y"
    assert os.listxattr(upper / "f") == []  # a layer cannot forge overlay's own xattrs


def test_overlay_new_parents_copy_mode_and_owner_from_the_nearest_lower(tmp_path: Path) -> None:
    near, far, upper = tmp_path / "near", tmp_path / "far", tmp_path / "upper"
    for d in (near, far, upper):
        d.mkdir()
    apply_bytes(
        tmp_path,
        tar(
            entry(
                "a/",
                tarfile.DIRTYPE,
                mode=0o711,
                uid=1,
                gid=2,
                pax_headers={"SCHILY.xattr.user.far": "1"},
            ),
            entry("a/b/", tarfile.DIRTYPE, mode=0o701, uid=3, gid=4),
            entry("c/", tarfile.DIRTYPE, mode=0o700),
        ),
        Directory(far),
    )
    apply_bytes(
        tmp_path,
        tar(
            entry(
                "a/",
                tarfile.DIRTYPE,
                mode=0o750,
                uid=10,
                gid=20,
                pax_headers={"SCHILY.xattr.user.near": "1"},
            ),
            entry("c", data=b"file hides c/ below"),
        ),
        Directory(near),
    )
    data = tar(entry("a/b/new", data=b"n"), entry("c/x", data=b"x"), entry("z/y", data=b"y"))
    apply_bytes(tmp_path, data, OverlayUpper(upper, (near, far)))
    a, b = os.lstat(upper / "a"), os.lstat(upper / "a/b")
    assert (stat.S_IMODE(a.st_mode), a.st_uid, a.st_gid) == (0o750, 10, 20)
    assert os.listxattr(upper / "a") == ["user.near"]
    assert (stat.S_IMODE(b.st_mode), b.st_uid, b.st_gid) == (0o701, 3, 4)
    # `c` is a file in the nearest lower: a new directory there gets the defaults
    assert stat.S_IMODE(os.lstat(upper / "c").st_mode) == 0o755
    assert stat.S_IMODE(os.lstat(upper / "z").st_mode) == 0o755


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
@pytest.mark.parametrize("schema", ["oci", "docker"])
def test_diff_id_is_the_sha256_of_the_uncompressed_tar(
    tmp_path: Path, root: Path, compression: images.Compression, schema: images.Schema
) -> None:
    layer = images.make_layer(
        [
            Dir("bin"),
            File("bin/sh", b"x" * 100_000, 0o755),
            Symlink("bin/ls", "sh"),
            Hardlink("bin/cat", "bin/sh"),
            CharDevice("dev/null", 1, 3),
            Opaque("opt"),
            Whiteout("gone"),
        ],
        schema=schema,
        compression=compression,
    )
    path = blob(tmp_path, layer.data)
    result = apply_layer(
        path, layer.descriptor.media_type, Directory(root), layer.descriptor.digest
    )
    assert result == Applied(layer.diff_id, len(layer.tar))
    assert (root / "bin/sh").read_bytes() == b"x" * 100_000


def test_compression_is_read_from_the_blob_not_the_media_type(tmp_path: Path, root: Path) -> None:
    data = tar(entry("f", data=b"hello"))
    result = apply_bytes(tmp_path, gzip.compress(data), Directory(root), OCI_TAR)
    assert result.diff_id == sha256(data)
    assert (root / "f").read_bytes() == b"hello"


def test_concatenated_gzip_members_and_trailing_bytes_count(tmp_path: Path, root: Path) -> None:
    data = tar(entry("a", data=b"a" * 3000), entry("b", data=b"b")) + bytes(4096)
    packed = gzip.compress(data[:1000]) + gzip.compress(data[1000:]) + bytes(7)
    result = apply_bytes(tmp_path, packed, Directory(root), OCI_GZIP)
    assert result == Applied(sha256(data), len(data))
    assert (root / "a").read_bytes() == b"a" * 3000


def test_a_tar_without_end_blocks_is_accepted_like_go_does(tmp_path: Path, root: Path) -> None:
    data = tar(entry("a", data=b"a"))[:1024]  # header and data, no end-of-archive blocks
    assert apply_bytes(tmp_path, data, Directory(root)).diff_id == sha256(data)
    assert (root / "a").read_bytes() == b"a"


def test_unknown_media_type_is_unimplemented_and_named(tmp_path: Path, root: Path) -> None:
    with pytest.raises(Unimplemented, match=r"application/vnd\.oci\.image\.layer\.v1\.tar\+lz4"):
        apply_bytes(tmp_path, tar(), Directory(root), "application/vnd.oci.image.layer.v1.tar+lz4")


def test_a_blob_that_is_not_the_expected_digest_is_refused_before_writing(
    tmp_path: Path, root: Path
) -> None:
    data = gzip.compress(tar(entry("f", data=b"x")))
    wrong = "sha256:" + "0" * 64
    with pytest.raises(FailedPrecondition) as caught:
        apply_bytes(tmp_path, data, Directory(root), OCI_GZIP, expected=wrong)
    assert wrong in str(caught.value)
    assert sha256(data) in str(caught.value)
    assert os.listdir(root) == []


def test_xattrs_outside_what_layers_may_set_are_skipped(tmp_path: Path, root: Path) -> None:
    data = tar(
        entry(
            "f",
            pax_headers={"SCHILY.xattr.trusted.overlay.opaque": "y", "SCHILY.xattr.user.ok": "1"},
        ),
        entry("l", tarfile.SYMTYPE, linkname="f", pax_headers={"SCHILY.xattr.user.onlink": "1"}),
    )
    apply_bytes(tmp_path, data, Directory(root))
    assert os.listxattr(root / "f") == ["user.ok"]
    assert os.listxattr(root / "l", follow_symlinks=False) == []  # EPERM on a symlink: skipped


def test_a_relative_symlink_inside_the_root_is_followed_for_parents(
    tmp_path: Path, root: Path
) -> None:
    data = tar(
        entry("usr/lib/", tarfile.DIRTYPE),
        entry("lib", tarfile.SYMTYPE, linkname="usr/lib"),
        entry("usr/bin", tarfile.SYMTYPE, linkname="../lib/../../usr/./lib"),
        entry("lib/a", data=b"a"),
        entry("usr/bin/b", data=b"b"),
    )
    apply_bytes(tmp_path, data, Directory(root))
    assert sorted(os.listdir(root / "usr/lib")) == ["a", "b"]
    assert (root / "lib").is_symlink()  # and `..` after a symlink went up from usr/lib


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_long_names_in_every_tar_format(tmp_path: Path, root: Path, fmt: int) -> None:
    deep = "/".join(["directory-with-a-long-name"] * 6) + "/file"  # 160 bytes: prefix or ext
    link = deep if fmt != tarfile.USTAR_FORMAT else "file"  # USTAR has no long link names
    data = tar(
        entry(deep, data=b"deep", uid=3), entry("l", tarfile.SYMTYPE, linkname=link), fmt=fmt
    )
    apply_bytes(tmp_path, data, Directory(root))
    assert (root / deep).read_bytes() == b"deep"
    assert os.readlink(root / "l") == link


def test_large_ids_and_entries_named_with_dot_slash(tmp_path: Path, root: Path) -> None:
    data = tar(
        entry("./", tarfile.DIRTYPE, mode=0o700),
        entry("./a", uid=3_000_000, gid=70_000),
        fmt=tarfile.GNU_FORMAT,
    )
    apply_bytes(tmp_path, data, Directory(root))
    st = os.lstat(root / "a")
    assert (st.st_uid, st.st_gid) == (3_000_000, 70_000)
    assert stat.S_IMODE(os.lstat(root).st_mode) != 0o700  # the root entry is ignored


def test_busybox_image_layer_applies(tmp_path: Path, root: Path) -> None:
    layer = images.busybox_layer()
    result = apply_layer(blob(tmp_path, layer.data), layer.descriptor.media_type, Directory(root))
    assert result.diff_id == layer.diff_id
    assert os.readlink(root / "bin/sh") == "busybox"
    assert (root / "bin/busybox").read_bytes() == images.BUSYBOX.read_bytes()


def test_aufs_metadata_entries_are_skipped(tmp_path: Path, root: Path) -> None:
    data = tar(entry(".wh..wh.plnk/", tarfile.DIRTYPE), entry(".wh..wh.aufs"), entry("a"))
    apply_bytes(tmp_path, data, Directory(root))
    assert os.listdir(root) == ["a"]


def test_a_hard_link_to_a_missing_file_is_refused(tmp_path: Path, root: Path) -> None:
    with pytest.raises(InvalidArgument, match='entry "b": hard link target "nope" not found'):
        apply_bytes(tmp_path, tar(entry("b", tarfile.LNKTYPE, linkname="nope")), Directory(root))


def test_a_bind_mount_is_a_plain_directory_target() -> None:
    mount = Mount("bind", "/s/1/fs", ("rw", "rbind"))
    assert target_from_mounts([mount]) == Directory(Path("/s/1/fs"))
    as_dict = {"type": "none", "source": "/s/1/fs", "options": ["rbind", "rw"]}
    assert target_from_mounts([as_dict]) == Directory(Path("/s/1/fs"))


def test_an_overlay_mount_is_its_upper_dir_with_lowers_nearest_first() -> None:
    options = ("index=off", "workdir=/s/3/work", "upperdir=/s/3/fs", "lowerdir=/s/2/fs:/s/1/fs")
    assert target_from_mounts([Mount("overlay", "overlay", options)]) == OverlayUpper(
        Path("/s/3/fs"), (Path("/s/2/fs"), Path("/s/1/fs"))
    )
    with_userxattr = target_from_mounts(
        [{"type": "overlay", "source": "overlay", "options": [*options, "userxattr"]}]
    )
    assert isinstance(with_userxattr, OverlayUpper)
    assert with_userxattr.userxattr


@pytest.mark.parametrize(
    ("mounts", "error", "match"),
    [
        ([], InvalidArgument, "no mounts"),
        ([Mount("bind", "/a", ("ro", "rbind"))], InvalidArgument, "read-only"),
        ([Mount("bind", "relative", ("rbind",))], InvalidArgument, "not an absolute path"),
        ([Mount("overlay", "overlay", ("lowerdir=/a:/b",))], InvalidArgument, "no upperdir"),
        ([Mount("overlay", "overlay", ("upperdir=/u", "workdir=/w"))], InvalidArgument, "lowerdir"),
        ([Mount("tmpfs", "tmpfs")], Unimplemented, 'mount type "tmpfs"'),
        ([Mount("bind", "/a", ("rbind",))] * 2, Unimplemented, "2 mounts"),
    ],
)
def test_mounts_that_are_not_an_apply_target(
    mounts: list[Mount], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        target_from_mounts(mounts)


def test_a_missing_blob_or_target_is_not_found(tmp_path: Path, root: Path) -> None:
    with pytest.raises(NotFound, match="no blob at"):
        apply_layer(tmp_path / "nope", OCI_TAR, Directory(root))
    with pytest.raises(NotFound, match="apply: target"):
        apply_bytes(tmp_path, tar(), Directory(tmp_path / "missing"))


def test_errors_name_the_blob_by_its_digest_in_a_content_store(tmp_path: Path, root: Path) -> None:
    data = tar(entry("/abs"))
    path = blob(tmp_path / "blobs" / "sha256", data, sha256(data).removeprefix("sha256:"))
    with pytest.raises(InvalidArgument, match=f'layer {sha256(data)}: entry "/abs"'):
        apply_layer(path, OCI_TAR, Directory(root))


def test_an_overlay_of_upper_dirs_shows_what_plain_application_gives(tmp_path: Path) -> None:
    """The fast path checked by the kernel: mount the uppers and compare with a plain apply."""
    base = tar(
        entry("etc/", tarfile.DIRTYPE, mode=0o751, uid=2),
        entry("etc/motd", data=b"m"),
        entry("etc/conf.d/", tarfile.DIRTYPE),
        entry("etc/conf.d/a", data=b"a"),
        entry("opt/", tarfile.DIRTYPE),
        entry("opt/x", data=b"x"),
        entry("opt/sub/", tarfile.DIRTYPE),
        entry("opt/sub/y", data=b"y"),
        entry("bin", tarfile.SYMTYPE, linkname="usr/bin"),
    )
    second = tar(
        entry("etc/.wh.motd"),
        entry("etc/conf.d/b", data=b"b"),
        entry("opt/", tarfile.DIRTYPE),
        entry("opt/.wh..wh..opq"),
        entry("opt/z", data=b"z"),
        entry("usr/bin/", tarfile.DIRTYPE),
    )
    third = tar(entry("etc/.wh.conf.d"), entry("etc/motd", data=b"back"), entry("opt/sub/w"))
    plain = tmp_path / "plain"
    plain.mkdir()
    layers = [tmp_path / name for name in ("l1", "l2", "l3")]
    for layer in layers:
        layer.mkdir()
    apply_bytes(tmp_path, base, Directory(layers[0]))
    apply_bytes(tmp_path, second, OverlayUpper(layers[1], (layers[0],)))
    apply_bytes(tmp_path, third, OverlayUpper(layers[2], (layers[1], layers[0])))
    for data in (base, second, third):
        apply_bytes(tmp_path, data, Directory(plain))
    merged = tmp_path / "merged"
    merged.mkdir()
    lowerdir = ":".join(str(p) for p in reversed(layers))
    subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lowerdir}", str(merged)],
        check=True,
    )
    try:  # (directory mtimes differ: the layers change them at different times)
        assert tree(merged, dir_times=False) == tree(plain, dir_times=False)
    finally:
        subprocess.run(["umount", str(merged)], check=True)
