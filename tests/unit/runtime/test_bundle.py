"""Bundles: spec written, rootfs mounted; all or nothing; delete idempotent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from snapshotter.mount import MountError
from snapshotter.protocol import Mount
from supervisor.errors import AlreadyExists, InvalidArgument
from supervisor.runtime.bundle import Bundle

SPEC = json.dumps({"ociVersion": "1.0.2", "root": {"path": "rootfs"}}).encode()


def mounted(path: Path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    src = tmp_path / "image-root"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "motd").write_text("hello\n")
    return src


def test_create_writes_the_spec_and_mounts_the_rootfs_delete_undoes_it(tmp_path, source):
    bundle = Bundle.at(tmp_path / "state", "default", "c1")
    bundle.create(SPEC, [Mount("bind", str(source), ("rbind", "rw"))])
    try:
        assert (bundle.path / "config.json").read_bytes() == SPEC
        assert (bundle.rootfs / "etc" / "motd").read_text() == "hello\n"
        assert oct(bundle.path.stat().st_mode & 0o777) == "0o700"
        with pytest.raises(AlreadyExists):
            bundle.create(SPEC, [])
    finally:
        bundle.delete()
    assert not mounted(bundle.rootfs)
    assert not bundle.path.exists()
    assert not bundle.path.parent.exists()
    bundle.delete()  # again: nothing to do


def test_records_are_written_beside_the_spec(tmp_path):
    bundle = Bundle.at(tmp_path / "state", "default", "c5")
    bundle.create(SPEC, [], {"instance": "shim:1", "runtime.json": "{}"})
    assert (bundle.path / "instance").read_text() == "shim:1"
    assert (bundle.path / "runtime.json").read_text() == "{}"
    bundle.delete()


def test_a_failed_mount_leaves_nothing(tmp_path):
    bundle = Bundle.at(tmp_path / "state", "default", "c2")
    with pytest.raises(MountError):
        bundle.create(
            SPEC, [Mount("bind", str(tmp_path / "missing"), ("rbind",))], {"instance": "shim:2"}
        )
    assert not bundle.path.exists()


def test_bad_specs_and_ids_are_invalid(tmp_path):
    with pytest.raises(InvalidArgument):
        Bundle.at(tmp_path, "default", "../escape")
    bundle = Bundle.at(tmp_path, "default", "c3")
    with pytest.raises(InvalidArgument, match="not JSON"):
        bundle.create(b"{nope", [])
    assert not bundle.path.exists()


def test_no_mounts_means_the_spec_names_its_own_root(tmp_path):
    bundle = Bundle.at(tmp_path, "moby", "c4")
    bundle.create(SPEC, [])
    assert not bundle.rootfs.exists()
    bundle.delete()
