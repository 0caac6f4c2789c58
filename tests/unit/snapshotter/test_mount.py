"""Mount planning: option parsing, the read-only bind remount, the relative overlay rewrite."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snapshotter import linux
from snapshotter.mount import MountError, compact_overlay_dirs, parse_options, plan
from snapshotter.protocol import Mount

DAEMON_SNAPSHOTS = "/var/lib/ctrd/snapshots/overlayfs/snapshots"
TARGET = Path("/run/ctrd/rootfs")


def overlay(root: str, ids: range, upper: int | None = None) -> Mount:
    options = ["index=off"]
    if upper is not None:
        options += [f"workdir={root}/{upper}/work", f"upperdir={root}/{upper}/fs"]
    options.append("lowerdir=" + ":".join(f"{root}/{i}/fs" for i in ids))
    return Mount("overlay", "overlay", tuple(options))


@pytest.mark.parametrize(
    ("options", "flags", "propagation", "data"),
    [
        (["rw", "rbind"], linux.MS_BIND | linux.MS_REC, 0, []),
        (["ro", "rbind"], linux.MS_RDONLY | linux.MS_BIND | linux.MS_REC, 0, []),
        (["ro", "rw"], 0, 0, []),  # the last word wins
        (["nosuid", "nodev", "noexec", "suid"], linux.MS_NODEV | linux.MS_NOEXEC, 0, []),
        (["bind", "rprivate"], linux.MS_BIND, linux.MS_PRIVATE | linux.MS_REC, []),
        (
            ["index=off", "lowerdir=/a:/b", "ro"],
            linux.MS_RDONLY,
            0,
            ["index=off", "lowerdir=/a:/b"],
        ),
        (["mode=755", "size=65536k", "defaults"], 0, 0, ["mode=755", "size=65536k"]),
    ],
)
def test_options_split_into_flags_propagation_and_data(options, flags, propagation, data):
    assert parse_options(options) == (flags, propagation, data)


def test_a_read_only_bind_is_remounted_and_a_writable_one_is_not():
    ro = plan(Mount("bind", "/src", ("ro", "rbind")), TARGET)
    rw = plan(Mount("bind", "/src", ("rw", "rbind")), TARGET)
    assert (ro.remount_readonly, rw.remount_readonly) == (True, False)
    assert (ro.fstype, ro.source, ro.target, ro.data) == (None, "/src", str(TARGET), "")


def test_a_mount_with_a_target_goes_below_the_root():
    call = plan(Mount("bind", "/src", ("rbind",), target="/etc/hosts"), TARGET)
    assert call.target == f"{TARGET}/etc/hosts"


def test_a_short_overlay_keeps_absolute_paths_and_the_callers_cwd():
    call = plan(overlay(DAEMON_SNAPSHOTS, range(3, 0, -1), upper=4), TARGET)
    assert call.cwd is None
    assert call.fstype == "overlay"
    assert call.data.startswith(f"index=off,workdir={DAEMON_SNAPSHOTS}/4/work,")


def test_128_lowers_under_the_daemon_root_are_made_relative_to_the_snapshots_dir():
    mount = overlay(DAEMON_SNAPSHOTS, range(128, 0, -1), upper=129)
    assert len(",".join(mount.options)) > 4096
    call = plan(mount, TARGET, page_size=4096)
    assert call.cwd == DAEMON_SNAPSHOTS
    assert call.data == (
        "index=off,workdir=129/work,upperdir=129/fs,lowerdir="
        + ":".join(f"{i}/fs" for i in range(128, 0, -1))
    )
    assert len(call.data) < 4096 - 512


def test_the_rewrite_waits_for_the_threshold_of_pagesize_minus_512():
    for lowers in range(1, 200):
        mount = overlay(DAEMON_SNAPSHOTS, range(lowers, 0, -1))
        size = len(",".join(mount.options))
        assert (plan(mount, TARGET, page_size=4096).cwd is not None) == (size >= 4096 - 512)


def test_options_too_long_even_when_relative_fail_before_any_system_call():
    with pytest.raises(MountError, match="too long") as failed:
        plan(overlay(DAEMON_SNAPSHOTS, range(1000, 0, -1)), TARGET, page_size=4096)
    assert failed.value.errno == errno.E2BIG


def test_lowers_without_a_common_parent_below_the_root_stay_absolute():
    data = ["lowerdir=/a/1/fs:/b/2/fs"]
    assert compact_overlay_dirs(data) == (None, data)


def test_a_single_lower_is_relative_to_its_parent_never_dot():
    assert compact_overlay_dirs(["lowerdir=/s/1/fs"]) == ("/s/1", ["lowerdir=fs"])


def test_options_without_a_lowerdir_are_left_alone():
    data = ["upperdir=/s/1/fs", "workdir=/s/1/work"]
    assert compact_overlay_dirs(data) == (None, data)


_segment = st.text(alphabet="abcdefghij0123456789-_", min_size=1, max_size=8)


@given(
    prefix=st.lists(_segment, min_size=1, max_size=4),
    ids=st.lists(st.integers(1, 10**6), min_size=1, max_size=40, unique=True),
    upper=st.booleans(),
)
def test_relative_dirs_resolve_from_the_common_parent_to_the_same_paths_in_order(
    prefix: list[str], ids: list[int], upper: bool
):
    root = "/" + "/".join(prefix)
    lowers = [f"{root}/{i}/fs" for i in ids]
    data = ["index=off"]
    if upper:
        data += [f"workdir={root}/0/work", f"upperdir={root}/0/fs"]
    data += ["lowerdir=" + ":".join(lowers), "redirect_dir=off"]
    cwd, out = compact_overlay_dirs(data)
    assert cwd is not None
    assert len(out) == len(data)
    for before, after in zip(data, out, strict=True):
        name, _, value = before.partition("=")
        if name not in ("lowerdir", "upperdir", "workdir"):
            assert after == before
            continue
        new_name, _, new_value = after.partition("=")
        assert new_name == name
        resolved = [os.path.normpath(os.path.join(cwd, v)) for v in new_value.split(":")]
        assert resolved == value.split(":")
        assert not any(v.startswith(("/", ".")) for v in new_value.split(":"))
