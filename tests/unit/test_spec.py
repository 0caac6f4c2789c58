"""ctl.spec: the OCI spec ctrctl sends, built by containerd 1.6's client rules (`ctr run`)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ctl.spec import (
    DEFAULT_CAPABILITIES,
    DEFAULT_PATH_ENV,
    RunOptions,
    User,
    capabilities_from_bitmap,
    current_capabilities,
    encode,
    generate,
    merge_env,
    resolve_user,
    scoped_path,
)

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin
"""
GROUP = """\
# a comment line, as glibc allows in /etc/group
root:x:0:
daemon:x:1:
www-data:x:33:
staff:x:50:www-data,daemon
wheel:x:10:root
"""
BUSYBOX = {"Env": ["PATH=/bin", "LANG=C"], "Cmd": ["sh"]}


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text(PASSWD)
    (tmp_path / "etc" / "group").write_text(GROUP)
    return tmp_path


def spec(options: RunOptions = RunOptions(), config=BUSYBOX, rootfs: Path | None = None):  # noqa: B008
    return generate("ns1", "c1", config, options, rootfs)


# --- the default spec ------------------------------------------------------------------------


def test_default_spec_is_containerd_16s_with_the_namespaced_cgroup():
    s = spec()
    assert s["ociVersion"] == "1.0.2-dev"
    assert s["root"] == {"path": "rootfs"}
    assert s["linux"]["cgroupsPath"] == "/ns1/c1"
    assert [ns["type"] for ns in s["linux"]["namespaces"]] == [
        "pid", "ipc", "uts", "mount", "network",
    ]  # fmt: skip
    process = s["process"]
    assert process["cwd"] == "/"
    assert process["noNewPrivileges"] is True
    assert process["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
    assert process["user"] == {"uid": 0, "gid": 0, "additionalGids": [0]}
    caps = list(DEFAULT_CAPABILITIES)
    assert process["capabilities"] == {"bounding": caps, "effective": caps, "permitted": caps}
    assert "terminal" not in process
    assert [m["destination"] for m in s["mounts"]] == [
        "/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/run",
    ]  # fmt: skip
    assert s["mounts"][5] == {
        "destination": "/sys", "type": "sysfs", "source": "sysfs",
        "options": ["nosuid", "noexec", "nodev", "ro"],
    }  # fmt: skip
    assert "/proc/kcore" in s["linux"]["maskedPaths"]
    assert s["linux"]["readonlyPaths"][-1] == "/proc/sysrq-trigger"
    assert set(s) == {"ociVersion", "process", "root", "mounts", "linux"}


def test_device_cgroup_denies_all_then_allows_the_unix_defaults():
    devices = spec()["linux"]["resources"]["devices"]
    assert devices[0] == {"allow": False, "access": "rwm"}
    assert devices[1] == {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"}
    assert {"allow": True, "type": "c", "major": 136, "access": "rwm"} in devices  # any pts
    assert len(devices) == 10
    assert spec()["linux"]["resources"] == {"devices": devices}  # no limits unless asked


def test_the_spec_is_json_and_encodes_compactly():
    s = spec()
    assert json.loads(encode(s)) == s
    assert b" " not in encode(s).replace(b"PATH=", b"")


# --- env ---------------------------------------------------------------------------------


def test_default_path_only_when_the_image_has_no_env():
    assert spec(config={"Cmd": ["sh"]})["process"]["env"] == [DEFAULT_PATH_ENV]
    assert spec(config={"Cmd": ["sh"], "Env": None})["process"]["env"] == [DEFAULT_PATH_ENV]
    assert spec()["process"]["env"] == ["PATH=/bin", "LANG=C"]


def test_given_env_replaces_the_images_in_place_appends_new_and_drops_bare_keys():
    env = spec(RunOptions(env=("NEW=1", "PATH=/usr/bin", "LANG")))["process"]["env"]
    assert env == ["PATH=/usr/bin", "LANG=C", "NEW=1"]  # as ctr: a bare key unsets nothing


def test_given_env_replaces_the_default_path_too():
    env = spec(RunOptions(env=("PATH=/x",)), config={"Cmd": ["sh"]})["process"]["env"]
    assert env == ["PATH=/x"]


def test_merge_env_is_containerds_replace_or_append():
    assert merge_env(["A=1", "B=2"], ["B=3", "C=4", "A", "D"]) == ["B=3", "C=4"]
    assert merge_env([], ["A=1", "A=2"]) == ["A=1", "A=2"]  # no defaults: nothing to replace
    assert merge_env(["A=1"], ["A=x=y"]) == ["A=x=y"]


def test_an_empty_image_env_still_gets_the_default_path():
    assert spec(config={"Cmd": ["sh"], "Env": []})["process"]["env"] == [DEFAULT_PATH_ENV]


# --- entrypoint, cmd, args, cwd ----------------------------------------------------------

IMAGE = {"Entrypoint": ["/entry", "-v"], "Cmd": ["serve", "--port=80"]}


@pytest.mark.parametrize(
    ("options", "args"),
    [
        (RunOptions(), ["/entry", "-v", "serve", "--port=80"]),
        (RunOptions(args=("run", "x")), ["/entry", "-v", "run", "x"]),
        (RunOptions(entrypoint=("/other",)), ["/other"]),
        (RunOptions(entrypoint=("/other",), args=("a",)), ["/other", "a"]),
        (RunOptions(entrypoint=(), args=("sh",)), ["sh"]),
    ],
    ids=["image", "args-replace-cmd", "entrypoint-drops-cmd", "entrypoint-and-args", "cleared"],
)
def test_args_follow_dockers_override_rules(options, args):
    assert spec(options, config=IMAGE)["process"]["args"] == args


def test_cmd_alone_and_args_alone():
    assert spec()["process"]["args"] == ["sh"]
    assert spec(RunOptions(args=("ls",)), config={})["process"]["args"] == ["ls"]


@pytest.mark.parametrize(
    ("options", "config"),
    [(RunOptions(), {}), (RunOptions(entrypoint=()), {"Entrypoint": ["/e"], "Cmd": ["x"]})],
)
def test_no_command_at_all_is_refused(options, config):
    with pytest.raises(ValueError, match="no command"):
        spec(options, config=config)


def test_image_config_of_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match="Cmd"):
        spec(config={"Cmd": "sh"})


def test_cwd_from_option_then_image_then_root():
    assert spec(config={"Cmd": ["sh"], "WorkingDir": "/srv"})["process"]["cwd"] == "/srv"
    options = RunOptions(workdir="/tmp")
    assert spec(options, config={"Cmd": ["sh"], "WorkingDir": "/srv"})["process"]["cwd"] == "/tmp"
    with pytest.raises(ValueError, match="absolute"):
        spec(RunOptions(workdir="tmp"))


# --- users -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("", User(0, 0, (0, 10))),  # root, with the groups listing root
        ("root", User(0, 0, (0, 10))),
        ("www-data", User(33, 33, (33, 50))),
        ("www-data:www-data", User(33, 33, (33, 50))),
        ("1001:www-data", User(1001, 33, (33,))),
        ("www-data:1002", User(33, 1002, (1002, 50))),
        ("1001:1002", User(1001, 1002, (1002,))),
        ("33", User(33, 33, (33, 50))),  # a uid with a passwd entry takes its gid
        ("1001", User(1001, 0, (0,))),  # without one: gid 0, as WithUserID
        ("daemon", User(1, 1, (1, 50))),
        ("33:daemon", User(33, 1, (1, 50))),
    ],
)
def test_users_resolve_as_containerd_does(rootfs, user, expected):
    assert resolve_user(user, rootfs) == expected


@pytest.mark.parametrize(
    ("user", "message"),
    [
        ("nobody", "user 'nobody' not found in the image's /etc/passwd"),
        ("nobody:1", "user 'nobody' not found"),
        ("1:nogroup", "group 'nogroup' not found in the image's /etc/group"),
        ("a:b:c", "invalid user"),
        ("4294967296", "ids go from 0"),
    ],
)
def test_unknown_users_and_groups_are_refused_clearly(rootfs, user, message):
    with pytest.raises(ValueError, match=message):
        resolve_user(user, rootfs)


def test_without_passwd_or_group_files_only_numbers_resolve(tmp_path):
    assert resolve_user("1001", tmp_path) == User(1001, 0, (0,))
    assert resolve_user("1001:1002", tmp_path) == User(1001, 1002, (1002,))
    assert resolve_user("", None) == User(0, 0, (0,))
    with pytest.raises(ValueError, match="has no /etc/passwd"):
        resolve_user("www-data", tmp_path)
    with pytest.raises(ValueError, match="has no /etc/group"):
        resolve_user("1:www-data", None)


def test_the_given_user_overrides_the_images(rootfs):
    config = {**BUSYBOX, "User": "www-data"}
    assert spec(config=config, rootfs=rootfs)["process"]["user"] == {
        "uid": 33, "gid": 33, "additionalGids": [33, 50],
    }  # fmt: skip
    got = spec(RunOptions(user="1001:1002"), config=config, rootfs=rootfs)["process"]["user"]
    assert got == {"uid": 1001, "gid": 1002, "additionalGids": [1002]}


def test_passwd_is_read_through_symlinks_that_stay_inside_the_rootfs(tmp_path):
    image = tmp_path / "image"
    (image / "etc").mkdir(parents=True)
    (image / "data").mkdir()
    (image / "data" / "passwd").write_text(PASSWD)
    (image / "etc" / "passwd").symlink_to("/data/passwd")  # absolute: inside the image
    (image / "etc" / "group").symlink_to("../../../../../data/group")  # cannot climb out
    assert scoped_path(image, "/etc/passwd") == image / "data" / "passwd"
    assert scoped_path(image, "/etc/group") == image / "data" / "group"
    (image / "etc" / "loop").symlink_to("/etc/loop")
    with pytest.raises(ValueError, match="too many symlinks"):
        scoped_path(image, "/etc/loop")
    assert resolve_user("www-data", image) == User(33, 33, (33,))  # no /etc/group: no extras


def test_malformed_lines_read_as_runc_reads_them(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("\n  odd:x:notanumber\n\nshort\n")
    (tmp_path / "etc" / "group").write_text("g:x:7:odd\n")
    assert resolve_user("odd", tmp_path) == User(0, 0, (0, 7))
    assert resolve_user("short", tmp_path) == User(0, 0, (0, 7))


@given(st.text(alphabet="0123456789:+-abwdt_ ", max_size=12))
def test_any_user_string_resolves_or_raises_value_error(user):
    root = Path(__file__).parent / "no-such-rootfs"
    try:
        got = resolve_user(user, root)
    except ValueError:
        return
    assert 0 <= got.uid < 2**32
    assert got.gid in got.additional_gids


# --- resources, tty, hostname, read-only, mounts, annotations ----------------------------


def test_memory_cpus_and_pids_limits():
    resources = spec(RunOptions(memory=64 << 20, cpus=1.5, pids_limit=100))["linux"]["resources"]
    assert resources["memory"] == {"limit": 64 << 20}
    assert resources["cpu"] == {"quota": 150_000, "period": 100_000}
    assert resources["pids"] == {"limit": 100}
    assert spec(RunOptions(cpus=0.3))["linux"]["resources"]["cpu"]["quota"] == 30_000
    assert "memory" not in spec(RunOptions(memory=0))["linux"]["resources"]  # as ctr: 0 is unset
    with pytest.raises(ValueError, match="memory"):
        spec(RunOptions(memory=-1))


def test_tty_sets_terminal_and_appends_term():
    process = spec(RunOptions(tty=True, env=("TERM=vt100",)))["process"]
    assert process["terminal"] is True
    assert process["env"] == ["PATH=/bin", "LANG=C", "TERM=vt100", "TERM=xterm"]  # as WithTTY


def test_hostname_read_only_annotations():
    s = spec(RunOptions(hostname="box", read_only=True, annotations={"a": "b"}))
    assert s["hostname"] == "box"
    assert s["root"] == {"path": "rootfs", "readonly": True}
    assert s["annotations"] == {"a": "b"}
    assert "annotations" not in spec()


def test_extra_mounts_follow_the_defaults_as_copies():
    mount = {"destination": "/data", "type": "bind", "source": "/srv", "options": ["rbind"]}
    s = spec(RunOptions(mounts=[mount]))
    assert s["mounts"][-1] == mount
    s["mounts"][-1]["options"].append("ro")
    assert mount["options"] == ["rbind"]
    with pytest.raises(ValueError, match="destination"):
        spec(RunOptions(mounts=[{"source": "/srv"}]))


# --- network -----------------------------------------------------------------------------


@pytest.mark.parametrize("network", ["", "none"])
def test_own_network_namespace_by_default_and_with_none(network):
    s = spec(RunOptions(network=network))
    assert {"type": "network"} in s["linux"]["namespaces"]
    assert s == spec()


def test_host_network_as_ctr_net_host():
    s = spec(RunOptions(network="host"))
    assert [ns["type"] for ns in s["linux"]["namespaces"]] == ["pid", "ipc", "uts", "mount"]
    assert s["mounts"][-2:] == [
        {"destination": "/etc/hosts", "type": "bind", "source": "/etc/hosts",
         "options": ["rbind", "ro"]},
        {"destination": "/etc/resolv.conf", "type": "bind", "source": "/etc/resolv.conf",
         "options": ["rbind", "ro"]},
    ]  # fmt: skip
    assert s["process"]["env"] == ["PATH=/bin", "LANG=C", f"HOSTNAME={socket.gethostname()}"]
    named = spec(RunOptions(network="host", hostname="box", env=("HOSTNAME=x",)))
    assert named["process"]["env"] == ["PATH=/bin", "LANG=C", "HOSTNAME=box"]


def test_unknown_network_mode_is_refused():
    with pytest.raises(ValueError, match="network"):
        spec(RunOptions(network="bridge"))


# --- privileged --------------------------------------------------------------------------


def test_privileged_gets_current_caps_host_devices_and_no_masks():
    s = spec(RunOptions(privileged=True))
    caps = current_capabilities()
    assert s["process"]["capabilities"] == (
        {"bounding": caps, "effective": caps, "permitted": caps} if caps else {}
    )
    assert "maskedPaths" not in s["linux"]
    assert "readonlyPaths" not in s["linux"]
    sysfs = next(m for m in s["mounts"] if m["type"] == "sysfs")
    assert sysfs["options"] == ["nosuid", "noexec", "nodev", "rw"]
    assert s["linux"]["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    null = next(d for d in s["linux"]["devices"] if d["path"] == "/dev/null")
    st_ = os.stat("/dev/null")
    assert null == {
        "path": "/dev/null", "type": "c", "major": 1, "minor": 3,
        "fileMode": st_.st_mode & 0o7777, "uid": st_.st_uid, "gid": st_.st_gid,
    }  # fmt: skip
    paths = [d["path"] for d in s["linux"]["devices"]]
    assert not any(p.startswith(("/dev/pts/", "/dev/shm/")) or p == "/dev/console" for p in paths)
    assert spec()["process"]["capabilities"]["bounding"] == list(DEFAULT_CAPABILITIES)


def test_capabilities_from_bitmap_by_number_dropping_unknown_bits():
    assert capabilities_from_bitmap(0) == []
    assert capabilities_from_bitmap(1 | 1 << 21) == ["CAP_CHOWN", "CAP_SYS_ADMIN"]
    assert capabilities_from_bitmap(1 << 40 | 1 << 41 | 1 << 63) == ["CAP_CHECKPOINT_RESTORE"]


def test_current_capabilities_read_capeff(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapPrm:\t0000000000000001\nCapEff:\t0000000000200001\n")
    assert current_capabilities(str(status)) == ["CAP_CHOWN", "CAP_SYS_ADMIN"]
