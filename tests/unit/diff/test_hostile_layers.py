"""Hostile layers: each is refused cleanly, nothing outside the target changes, and the target
can still be removed.

The target sits at <tmp>/box/target, so `../..` from it lands in <tmp>, where a sentinel
directory and file wait to be overwritten; every test compares a snapshot of <tmp> (minus the
target) before and after, and checks the host paths an escape would have made.
"""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard

from supervisor.diff.apply import ApplyTarget, Directory, OverlayUpper
from supervisor.errors import CtrdError, FailedPrecondition, InvalidArgument
from tests.unit.diff.layers import (
    OCI_GZIP,
    OCI_TAR,
    OCI_ZSTD,
    apply_bytes,
    entry,
    sha256,
    tar,
    tree,
)

HOST_PROBES = [Path("/ctrd-hostile-probe"), Path("/etc/ctrd-hostile-probe")]


class Box:
    def __init__(self, tmp: Path, overlay: bool) -> None:
        self.tmp = tmp
        self.target = tmp / "box" / "target"
        self.target.mkdir(parents=True)
        self.sentinel = tmp / "sentinel"
        self.sentinel.mkdir()
        (self.sentinel / "file").write_bytes(b"keep")
        self.lower = tmp / "lower"
        self.lower.mkdir()
        self.apply_target: ApplyTarget = (
            OverlayUpper(self.target, (self.lower,)) if overlay else Directory(self.target)
        )
        self.before = self.outside()

    def outside(self) -> dict[str, Any]:
        return tree(self.tmp, skip=self.target) | {
            "blobs": None,  # written by the helper, not by the applier
            **{str(p): p.exists() for p in HOST_PROBES},
            "/etc/passwd": os.stat("/etc/passwd").st_mtime_ns,
        }

    def apply(self, data: bytes, media_type: str = OCI_TAR, **kw: Any) -> Any:
        return apply_bytes(self.tmp / "blobs-dir", data, self.apply_target, media_type, **kw)

    def refuses(self, data: bytes, error: type[CtrdError], match: str, **kw: Any) -> None:
        with pytest.raises(error, match=match):
            self.apply(data, **kw)

    def check(self) -> None:
        after = self.outside()
        for key in [k for k in after if k.startswith("blobs-dir")]:
            after.pop(key)
        before = {k: v for k, v in self.before.items() if not k.startswith("blobs-dir")}
        assert after == before, "something outside the target changed"
        shutil.rmtree(self.target)  # still removable


@pytest.fixture(params=["plain", "overlay"])
def box(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Box]:
    made = Box(tmp_path, overlay=request.param == "overlay")
    yield made
    made.check()


def test_dot_dot_escape(box: Box) -> None:
    box.refuses(
        tar(entry("../../etc/x", data=b"pwned")),
        InvalidArgument,
        r'layer .*: entry "\.\./\.\./etc/x": "\.\." in its path',
    )


def test_dot_dot_in_the_middle(box: Box) -> None:
    box.refuses(tar(entry("a/../../sentinel/file", data=b"pwned")), InvalidArgument, r'"\.\."')


def test_absolute_path(box: Box) -> None:
    box.refuses(
        tar(entry("/etc/ctrd-hostile-probe", data=b"pwned")),
        InvalidArgument,
        'entry "/etc/ctrd-hostile-probe": an absolute path',
    )


@pytest.mark.parametrize("link", ["/", "../..", "../../sentinel", "a/../../.."])
def test_file_written_through_a_symlink_that_leads_out(box: Box, link: str) -> None:
    data = tar(
        entry("evil", tarfile.SYMTYPE, linkname=link),
        entry("evil/ctrd-hostile-probe", data=b"pwned"),
        entry("evil/file", data=b"pwned"),
    )
    box.refuses(data, InvalidArgument, r'entry "evil/ctrd-hostile-probe": its parent "evil"')


def test_symlink_to_the_sentinel_by_absolute_path(box: Box) -> None:
    data = tar(
        entry("evil", tarfile.SYMTYPE, linkname=str(box.sentinel)),
        entry("evil/file", data=b"pwned"),
    )
    box.refuses(data, InvalidArgument, "absolute path")


def test_chained_symlinks_that_lead_out(box: Box) -> None:
    data = tar(
        entry("a/", tarfile.DIRTYPE),
        entry("a/up", tarfile.SYMTYPE, linkname=".."),
        entry("b", tarfile.SYMTYPE, linkname="a/up/a/up/.."),
        entry("b/sentinel/file", data=b"pwned"),
    )
    box.refuses(data, InvalidArgument, "leads outside")


def test_symlink_loop(box: Box) -> None:
    data = tar(
        entry("a", tarfile.SYMTYPE, linkname="b"),
        entry("b", tarfile.SYMTYPE, linkname="a"),
        entry("a/x", data=b"x"),
    )
    box.refuses(data, InvalidArgument, "too many levels of symbolic links")


def test_a_file_replaces_a_symlink_instead_of_writing_through_it(box: Box) -> None:
    outside = box.sentinel / "file"
    data = tar(
        entry("evil", tarfile.SYMTYPE, linkname=str(outside)), entry("evil", data=b"replaced")
    )
    box.apply(data)
    assert (box.target / "evil").read_bytes() == b"replaced"


@pytest.mark.parametrize("target", ["/etc/passwd", "../outside", "../../sentinel/file"])
def test_hard_link_to_a_host_file(box: Box, target: str) -> None:
    box.refuses(
        tar(entry("x", tarfile.LNKTYPE, linkname=target)),
        InvalidArgument,
        'entry "x": (an absolute|"\\.\\.")',
    )


def test_hard_link_through_a_symlink_that_leads_out(box: Box) -> None:
    data = tar(
        entry("evil", tarfile.SYMTYPE, linkname="/etc"),
        entry("x", tarfile.LNKTYPE, linkname="evil/passwd"),
    )
    box.refuses(data, InvalidArgument, 'entry "x": its parent "evil" is a symlink')


def test_metadata_of_a_hard_link_to_a_symlink_is_not_applied_through_it(box: Box) -> None:
    outside = box.sentinel / "file"
    data = tar(
        entry("s", tarfile.SYMTYPE, linkname=str(outside)),
        entry("h", tarfile.LNKTYPE, linkname="s", mode=0o777, uid=1234, mtime=1),
    )
    box.apply(data)
    assert os.readlink(box.target / "h") == str(outside)  # the link itself was linked


@pytest.mark.parametrize("name", [".wh..", "a/.wh...", "a/.wh."])
def test_whiteouts_that_do_not_name_a_sibling(box: Box, name: str) -> None:
    data = tar(entry("a/", tarfile.DIRTYPE), entry(name))
    box.refuses(data, InvalidArgument, f'entry "{name}": invalid whiteout name')


@pytest.mark.parametrize("name", ["evil/.wh.file", "evil/.wh..wh..opq"])
def test_whiteouts_through_a_symlink_that_leads_out(box: Box, name: str) -> None:
    data = tar(entry("evil", tarfile.SYMTYPE, linkname=str(box.sentinel)), entry(name))
    box.refuses(data, InvalidArgument, 'its parent "evil" is a symlink')


def test_trusted_xattrs_cannot_be_forged(box: Box) -> None:
    data = tar(
        entry(
            "d/",
            tarfile.DIRTYPE,
            pax_headers={"SCHILY.xattr.trusted.overlay.redirect": "/../../sentinel"},
        )
    )
    box.apply(data)
    assert os.listxattr(box.target / "d") == []


def test_device_nodes_are_allowed_inside(box: Box) -> None:
    data = tar(
        entry("dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0, mode=0o600),
        entry("dev/mem", tarfile.CHRTYPE, devmajor=1, devminor=1, mode=0o640),
    )
    box.apply(data)
    sda = os.lstat(box.target / "dev/sda")
    assert stat.S_ISBLK(sda.st_mode)
    assert sda.st_rdev == os.makedev(8, 0)
    assert stat.S_ISCHR(os.lstat(box.target / "dev/mem").st_mode)


def test_a_huge_pax_header(box: Box) -> None:
    big = tarfile.TarInfo("x")
    big.pax_headers = {"comment": "a" * (10 << 20)}
    box.refuses(tar((big, b"")), InvalidArgument, r"tar header #1: an extended header of \d+ bytes")


def test_a_huge_name(box: Box) -> None:
    box.refuses(
        tar(entry("n" * 100_000, data=b"x")),
        InvalidArgument,
        r"a path of 100000 bytes \(at most 4096\)",
    )


def test_a_huge_gnu_long_name(box: Box) -> None:
    box.refuses(
        tar(entry("n" * (2 << 20), data=b"x"), fmt=tarfile.GNU_FORMAT),
        InvalidArgument,
        "an extended header of",
    )


def test_a_name_component_over_255_bytes(box: Box) -> None:
    box.refuses(tar(entry("d/" + "n" * 300)), InvalidArgument, "component of 300 bytes")


def test_a_truncated_gzip_stream(box: Box) -> None:
    data = gzip.compress(tar(entry("a", data=os.urandom(50_000))))
    box.refuses(
        data[: len(data) // 2], InvalidArgument, "the gzip stream is truncated", media_type=OCI_GZIP
    )


def test_a_corrupt_gzip_stream(box: Box) -> None:
    data = bytearray(gzip.compress(tar(entry("a", data=b"a" * 50_000))))
    data[20:30] = b"\xff" * 10
    box.refuses(bytes(data), InvalidArgument, "the gzip stream is corrupt", media_type=OCI_GZIP)


def test_garbage_after_a_gzip_stream(box: Box) -> None:
    data = gzip.compress(tar(entry("a", data=b"a"))) + b"garbage"
    box.refuses(data, InvalidArgument, "trailing data after the gzip stream", media_type=OCI_GZIP)


@pytest.mark.parametrize("cut", [6, 0.5, -1])
def test_a_truncated_zstd_stream(box: Box, cut: float) -> None:
    data = zstandard.ZstdCompressor().compress(tar(entry("a", data=os.urandom(300_000))))
    end = int(len(data) * cut) if isinstance(cut, float) else cut
    box.refuses(data[:end], InvalidArgument, "the zstd stream is truncated", media_type=OCI_ZSTD)


def test_a_tar_cut_in_the_middle_of_a_file(box: Box) -> None:
    data = tar(entry("a", data=b"a" * 5000))
    box.refuses(data[:2048], InvalidArgument, "the stream ends inside the entry's data")


def test_not_a_tar_at_all(box: Box) -> None:
    box.refuses(b"\x01" * 4096, InvalidArgument, "bad checksum")


def test_a_malformed_number(box: Box) -> None:
    data = bytearray(tar(entry("a", data=b"a")))
    data[124:136] = b"99999999999\0"  # size: not octal
    data[148:156] = b"%06o\0 " % (sum(data[:148]) + 256 + sum(data[156:512]))
    box.refuses(bytes(data), InvalidArgument, "a malformed size field")


def test_sparse_files_are_refused(box: Box) -> None:
    data = bytearray(tar(entry("a", data=b"a")))
    data[156:157] = b"S"
    data[148:156] = b"%06o\0 " % (sum(data[:148]) + 256 + sum(data[156:512]))
    box.refuses(bytes(data), InvalidArgument, "sparse files are not supported")


def test_a_wrong_compressed_digest(box: Box) -> None:
    data = gzip.compress(tar(entry("a", data=b"a")))
    wrong = sha256(b"something else")
    with pytest.raises(FailedPrecondition) as caught:
        box.apply(data, OCI_GZIP, expected=wrong)
    assert wrong in str(caught.value)
    assert sha256(data) in str(caught.value)
    assert os.listdir(box.target) == []


def test_a_failure_midway_leaves_a_removable_target(box: Box) -> None:
    data = tar(
        entry("ro/", tarfile.DIRTYPE, mode=0o500),
        entry("ro/f", data=b"x", mode=0o000),
        entry("ro/sub/", tarfile.DIRTYPE, mode=0o000),
        entry("../oops"),
    )
    box.refuses(data, InvalidArgument, "oops")
    assert (box.target / "ro/f").exists()  # what came before the bad entry stays, removably
