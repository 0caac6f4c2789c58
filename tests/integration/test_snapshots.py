"""Snapshots and unpacking through the real ctr: pull, check, snapshot commands, mounts."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from tests.support import images

pytestmark = pytest.mark.integration


def chain_ids(diff_ids: list[str]) -> list[str]:
    import hashlib

    chain = [diff_ids[0]]
    for diff_id in diff_ids[1:]:
        chain.append("sha256:" + hashlib.sha256(f"{chain[-1]} {diff_id}".encode()).hexdigest())
    return chain


def snapshot_rows(ctrd, ns: str = "default") -> dict[str, tuple[str, str]]:
    """KEY -> (PARENT, KIND) from `ctr snapshots ls` (fixed-width columns; PARENT may be empty)."""
    header, *rows = ctrd.ctr("snapshots", "ls", ns=ns).stdout.splitlines()
    parent_at, kind_at = header.index("PARENT"), header.index("KIND")
    return {
        r[:parent_at].strip(): (r[parent_at:kind_at].strip(), r[kind_at:].strip()) for r in rows
    }


class Mounted:
    """Runs the mount command ctr prints, and unmounts it at the end."""

    def __init__(self, ctrd, key: str, target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        command = ctrd.ctr("snapshots", "mounts", str(target), key).stdout.strip()
        assert command.startswith("mount "), command
        subprocess.run(command, shell=True, check=True)
        self.target = target

    def __enter__(self) -> Path:
        return self.target

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["umount", str(self.target)], check=True)


def test_ctr_pull_unpacks_and_check_says_complete(ctrd, busybox2_image, short_tmp):
    ctrd.ctr("images", "pull", "--plain-http", busybox2_image.ref)
    check = ctrd.ctr("images", "check").stdout
    assert "complete" in check
    assert "incomplete" not in check
    chain = chain_ids(busybox2_image.image.diff_ids)
    rows = snapshot_rows(ctrd)
    assert rows[chain[0]] == ("", "Committed")
    assert rows[chain[1]] == (chain[0], "Committed")
    ctrd.ctr("snapshots", "prepare", "work", chain[1])
    with Mounted(ctrd, "work", short_tmp / "mnt") as root:
        assert (root / "etc" / "extra").read_bytes() == images.EXTRA
        assert not (root / "etc" / "motd").exists()  # deleted by the second layer
        assert (root / "bin" / "busybox").stat().st_size > 100_000
        (root / "written").write_text("rw")
    assert "work" in snapshot_rows(ctrd)
    ctrd.ctr("snapshots", "rm", "work")


def settle_gc(ctrd) -> None:
    """Wait out the collection a pull schedules: ctr makes views without a gc.root label, and
    (as with containerd) the next collection takes an unreferenced view."""
    ctrd.ctr("leases", "create", "--id", "flush")
    ctrd.ctr("leases", "rm", "--sync", "flush")


def test_ctr_snapshot_commands(ctrd, busybox_image, short_tmp):
    ctrd.ctr("images", "pull", "--plain-http", busybox_image.ref)
    settle_gc(ctrd)
    base = chain_ids(busybox_image.image.diff_ids)[0]
    ctrd.ctr("snapshots", "prepare", "tapsnap", base)
    with Mounted(ctrd, "tapsnap", short_tmp / "a") as root:
        (root / "new-file").write_text("committed")
    ctrd.ctr("snapshots", "commit", "tapsnap-c", "tapsnap")
    assert snapshot_rows(ctrd)["tapsnap-c"] == (base, "Committed")
    assert "tapsnap" not in snapshot_rows(ctrd)
    ctrd.ctr("snapshots", "view", "tapview", "tapsnap-c")
    with Mounted(ctrd, "tapview", short_tmp / "v") as root:
        assert (root / "new-file").read_text() == "committed"
        with pytest.raises(OSError, match="Read-only file system") as e:
            (root / "other").write_text("no")
        assert e.value.errno == errno.EROFS
    info = ctrd.ctr("snapshots", "info", "tapsnap-c").stdout
    assert '"Kind": "Committed"' in info
    assert f'"Parent": "{base}"' in info
    ctrd.ctr("snapshots", "label", "tapsnap-c", "foo=bar")
    assert '"foo": "bar"' in ctrd.ctr("snapshots", "info", "tapsnap-c").stdout
    usage = ctrd.ctr("snapshots", "usage", "tapsnap-c").stdout.splitlines()[1]
    assert usage.split()[0] == "tapsnap-c"
    tree = ctrd.ctr("snapshots", "tree").stdout
    assert base in tree
    assert "tapsnap-c" in tree
    failed = ctrd.ctr("snapshots", "rm", "tapsnap-c", check=False)  # it has a child view
    assert failed.returncode == 1
    assert "cannot remove snapshot" in failed.stderr
    ctrd.ctr("snapshots", "rm", "tapview")
    ctrd.ctr("snapshots", "rm", "tapsnap-c")
    missing = ctrd.ctr("snapshots", "rm", "does-not-exist", check=False)
    assert missing.returncode == 1
    assert "snapshot does-not-exist does not exist: not found" in missing.stderr


def test_snapshots_are_per_namespace(ctrd, busybox_image):
    ctrd.ctr("images", "pull", "--plain-http", busybox_image.ref)
    ctrd.ctr("images", "pull", "--plain-http", busybox_image.ref, ns="second")
    base = chain_ids(busybox_image.image.diff_ids)[0]
    assert base in snapshot_rows(ctrd)
    assert base in snapshot_rows(ctrd, ns="second")
    ctrd.ctr("images", "rm", "--sync", busybox_image.ref, ns="second")
    assert snapshot_rows(ctrd, ns="second") == {}
    assert base in snapshot_rows(ctrd)


def test_image_rm_sync_collects_its_snapshots_and_their_directories(ctrd, busybox2_image):
    ctrd.ctr("images", "pull", "--plain-http", busybox2_image.ref)
    snapshots = ctrd.root / "snapshots" / "overlayfs" / "snapshots"
    assert len(list(snapshots.iterdir())) == 2
    ctrd.ctr("images", "rm", "--sync", busybox2_image.ref)
    assert snapshot_rows(ctrd) == {}
    assert list(snapshots.iterdir()) == []


def test_ctr_images_import_unpacks(ctrd, short_tmp):
    image = images.busybox2_image()
    archive = images.oci_archive(image, short_tmp / "bb.tar", "docker.io/library/bb:2")
    ctrd.ctr("images", "import", str(archive))
    chain = chain_ids(image.diff_ids)
    assert snapshot_rows(ctrd)[chain[1]][1] == "Committed"


def test_a_128_layer_image_pulls_unpacks_and_mounts(ctrd, registry, short_tmp):
    image = images.many_layers(128)
    pushed = registry.push("library/many", "128", image)
    ctrd.ctr("images", "pull", "--plain-http", pushed.ref, timeout=300)
    top = chain_ids(image.diff_ids)[-1]
    ctrd.ctr("snapshots", "view", "all-layers", top)
    # ctr's printed mount command would exceed the kernel's option page with 128 absolute
    # lower dirs; ctrd's own mount helper (used for task root filesystems) must manage it.
    from snapshotter.mount import mount_all, unmount
    from snapshotter.protocol import Mount
    from supervisor.api.containerd.services.snapshots.v1 import snapshots_pb2, snapshots_pb2_grpc

    stub = ctrd.stub(snapshots_pb2_grpc.SnapshotsStub)
    answer = stub.Mounts(
        snapshots_pb2.MountsRequest(snapshotter="overlayfs", key="all-layers"),
        metadata=(("containerd-namespace", "default"),),
    )
    mounts = [Mount(m.type, m.source, tuple(m.options), m.target) for m in answer.mounts]
    assert sum(len(o) for o in mounts[0].options) > 4096
    target = short_tmp / "many"
    target.mkdir()
    mount_all(mounts, target)
    try:
        assert sorted(os.listdir(target / "layers")) == [f"{i:04d}" for i in range(1, 128)]
        assert (target / "layers" / "0127").read_text() == "0127\n"
        assert (target / "bin" / "busybox").exists()
    finally:
        unmount(target)


def test_ctr_snapshots_diff_makes_a_layer_of_the_changes(ctrd, busybox_image, short_tmp):
    import gzip
    import io
    import tarfile

    ctrd.ctr("images", "pull", "--plain-http", busybox_image.ref)
    settle_gc(ctrd)
    base = chain_ids(busybox_image.image.diff_ids)[0]
    ctrd.ctr("snapshots", "prepare", "changed", base)
    with Mounted(ctrd, "changed", short_tmp / "c") as root:
        (root / "added.txt").write_text("new\n")
        (root / "etc" / "motd").unlink()
    out = ctrd.ctr("snapshots", "diff", "changed").stdout.encode("latin-1")
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(out))) as tar:
        names = tar.getnames()
        assert tar.extractfile("added.txt").read() == b"new\n"
    assert "etc/.wh.motd" in names
    assert not any(n.startswith("bin/") for n in names)
