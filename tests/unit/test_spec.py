"""ctl.spec: the OCI spec ctrctl sends, built as `ctr run` builds it, with the image config
and the command line merged by Docker Engine 20.10's rules."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
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
    clean_path,
    container_labels,
    current_capabilities,
    docker_env,
    encode,
    generate,
    is_named_network,
    merge_env,
    parse_signal,
    resolve_user,
    stop_settings,
)
from supervisor.imageusers import layered_path, scoped_path

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


# --- env: dockerd's merge ------------------------------------------------------------------


def test_default_path_when_the_image_names_none():
    assert spec(config={"Cmd": ["sh"]})["process"]["env"] == [DEFAULT_PATH_ENV]
    assert spec(config={"Cmd": ["sh"], "Env": None})["process"]["env"] == [DEFAULT_PATH_ENV]
    assert spec(config={"Cmd": ["sh"], "Env": []})["process"]["env"] == [DEFAULT_PATH_ENV]
    # An image Env without PATH still gets the default one (containerd's rule gave none).
    assert spec(config={"Cmd": ["sh"], "Env": ["A=1"]})["process"]["env"] == [
        DEFAULT_PATH_ENV, "A=1",
    ]  # fmt: skip
    assert spec()["process"]["env"] == ["PATH=/bin", "LANG=C"]


def test_given_env_comes_first_then_the_images_it_does_not_name():
    env = spec(RunOptions(env=("NEW=1", "LANG=en", "B=2")), config={**BUSYBOX})["process"]["env"]
    assert env == ["PATH=/bin", "NEW=1", "LANG=en", "B=2"]
    given_path = spec(RunOptions(env=("PATH=/x",)), config={"Cmd": ["sh"]})["process"]["env"]
    assert given_path == ["PATH=/x"]


def test_a_bare_key_unsets_the_images_variable_and_the_defaults():
    assert spec(RunOptions(env=("LANG",)))["process"]["env"] == ["PATH=/bin"]
    assert spec(RunOptions(env=("PATH", "X")))["process"]["env"] == ["LANG=C"]


def test_hostname_and_tty_are_defaults_the_env_can_replace():
    env = spec(RunOptions(hostname="box", tty=True))["process"]["env"]
    assert env == ["PATH=/bin", "HOSTNAME=box", "TERM=xterm", "LANG=C"]
    env = spec(RunOptions(hostname="box", tty=True, env=("TERM=vt100", "HOSTNAME=h")))
    assert env["process"]["env"] == ["PATH=/bin", "HOSTNAME=h", "TERM=vt100", "LANG=C"]


def test_docker_env_repeats_stay_for_runc_to_fold():
    # dockerd leaves a repeated key twice (runc keeps its first place and last value).
    assert docker_env([], ["A=1", "A=2"]) == [DEFAULT_PATH_ENV, "A=1", "A=2"]


def test_merge_env_is_replace_or_append():
    assert merge_env(["A=1", "B=2"], ["B=3", "C=4", "A", "D"]) == ["B=3", "C=4"]
    assert merge_env([], ["A=1", "A=2"]) == ["A=1", "A=2"]  # no defaults: nothing to replace
    assert merge_env(["A=1"], ["A=x=y"]) == ["A=x=y"]


# --- entrypoint, cmd, args: dockerd's merge ---------------------------------------------------

IMAGE = {"Entrypoint": ["/entry", "-v"], "Cmd": ["serve", "--port=80"]}
EMPTY_ENTRYPOINT = {"Entrypoint": [""], "Cmd": ["echo", "from-cmd"]}


@pytest.mark.parametrize(
    ("options", "config", "args"),
    [
        (RunOptions(), IMAGE, ["/entry", "-v", "serve", "--port=80"]),
        (RunOptions(args=("run", "x")), IMAGE, ["/entry", "-v", "run", "x"]),
        (RunOptions(entrypoint=("/other",)), IMAGE, ["/other"]),
        (RunOptions(entrypoint=("/other",), args=("a",)), IMAGE, ["/other", "a"]),
        (RunOptions(entrypoint=("",), args=("sh",)), IMAGE, ["sh"]),
        (RunOptions(), EMPTY_ENTRYPOINT, ["echo", "from-cmd"]),
        (RunOptions(args=("cat", "/etc/motd")), EMPTY_ENTRYPOINT, ["cat", "/etc/motd"]),
        (RunOptions(entrypoint=("echo",)), EMPTY_ENTRYPOINT, ["echo"]),
        (RunOptions(), {"Entrypoint": ["/e"]}, ["/e"]),
        (RunOptions(args=("ls",)), {}, ["ls"]),
        (RunOptions(), {"Entrypoint": ["", "x"], "Cmd": ["y"]}, ["", "x", "y"]),
    ],
    ids=[
        "image", "args-replace-cmd", "entrypoint-drops-cmd", "entrypoint-and-args",
        "empty-entrypoint-flag", "image-empty-entrypoint", "image-empty-entrypoint-args",
        "entrypoint-over-empty", "entrypoint-alone", "args-alone", "only-exactly-empty",
    ],
)  # fmt: skip
def test_args_follow_dockers_merge(options, config, args):
    assert spec(options, config=config)["process"]["args"] == args


@pytest.mark.parametrize(
    ("options", "config"),
    [
        (RunOptions(), {}),
        (RunOptions(), {"Entrypoint": [""], "Cmd": None}),
        (RunOptions(entrypoint=("",)), {"Entrypoint": ["/e"], "Cmd": ["x"]}),
    ],
    ids=["neither", "image-empty-entrypoint-alone", "empty-entrypoint-flag-alone"],
)
def test_no_command_at_all_is_refused_in_dockers_words(options, config):
    with pytest.raises(ValueError, match=r"^No command specified$"):
        spec(options, config=config)


def test_image_config_of_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match="Cmd"):
        spec(config={"Cmd": "sh"})


# --- cwd ----------------------------------------------------------------------------------


def test_cwd_from_option_then_image_then_root_cleaned_as_go_does():
    assert spec(config={"Cmd": ["sh"], "WorkingDir": "/srv"})["process"]["cwd"] == "/srv"
    options = RunOptions(workdir="/tmp")
    assert spec(options, config={"Cmd": ["sh"], "WorkingDir": "/srv"})["process"]["cwd"] == "/tmp"
    assert spec()["process"]["cwd"] == "/"
    assert spec(RunOptions(workdir="//a/./b/../c/"))["process"]["cwd"] == "/a/c"
    # The image's relative WorkingDir is left for runc to refuse, as under dockerd.
    assert spec(config={"Cmd": ["sh"], "WorkingDir": "srv/"})["process"]["cwd"] == "srv"


def test_a_relative_workdir_is_refused_in_dockers_words():
    message = "the working directory 'tmp' is invalid, it needs to be an absolute path"
    with pytest.raises(ValueError, match=f"^{message}$"):
        spec(RunOptions(workdir="tmp"))


def test_clean_path_is_gos_filepath_clean():
    cases = {"/": "/", "//": "/", "/a//b/": "/a/b", "a/../..": "..", "./x": "x", "": ""}
    assert {path: clean_path(path) for path in cases} == cases


# --- users: runc's GetExecUser, as dockerd uses it -----------------------------------------


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("", User(0, 0, (0, 10))),  # root, with the groups listing root
        ("root", User(0, 0, (0, 10))),
        ("www-data", User(33, 33, (33, 50))),
        ("33", User(33, 33, (33, 50))),  # a uid with a passwd entry: by the entry's name
        ("1001", User(1001, 0, (0,))),  # without one: gid 0, no groups
        ("daemon", User(1, 1, (1, 50))),
        ("www-data:", User(33, 33, (33, 50))),  # an empty group is none
        # A group given: that gid, and no supplementary groups.
        ("www-data:www-data", User(33, 33, (33,))),
        ("1001:www-data", User(1001, 33, (33,))),
        ("www-data:1002", User(33, 1002, (1002,))),
        ("1001:1002", User(1001, 1002, (1002,))),
        ("33:daemon", User(33, 1, (1,))),
        (":staff", User(0, 50, (50,))),  # no user: root's entry
        ("www-data:staff:extra", User(33, 50, (50,))),  # fields past the group are ignored
    ],
)
def test_users_resolve_as_dockerd_does(rootfs, user, expected):
    assert resolve_user(user, rootfs) == expected


@pytest.mark.parametrize(
    ("user", "message"),
    [
        ("nobody", "unable to find user nobody: no matching entries in passwd file"),
        ("nobody:1", "unable to find user nobody: no matching entries in passwd file"),
        ("1:nogroup", "unable to find group nogroup: no matching entries in group file"),
        ("2147483648", "uids and gids must be in range 0-2147483647"),
        ("1:-1", "uids and gids must be in range 0-2147483647"),
    ],
)
def test_unknown_users_and_groups_are_refused_in_dockers_words(rootfs, user, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        resolve_user(user, rootfs)


def test_without_passwd_or_group_files_only_numbers_resolve(tmp_path):
    assert resolve_user("1001", tmp_path) == User(1001, 0, (0,))
    assert resolve_user("1001:1002", tmp_path) == User(1001, 1002, (1002,))
    assert resolve_user("", None) == User(0, 0, (0,))
    with pytest.raises(ValueError, match="unable to find user www-data"):
        resolve_user("www-data", tmp_path)
    with pytest.raises(ValueError, match="unable to find group www-data"):
        resolve_user("1:www-data", None)


def test_a_group_listing_the_user_by_its_own_gid_repeats_it_as_dockerd_does(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("app:x:1000:1000::/:/bin/sh\n")
    (tmp_path / "etc" / "group").write_text("app:x:1000:app\nstaff:x:50:app\n")
    assert resolve_user("app", tmp_path) == User(1000, 1000, (1000, 1000, 50))


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
    assert resolve_user("short", tmp_path) == User(0, 0, (0,))


@given(st.text(alphabet="0123456789:+-abwdt_ ", max_size=12))
def test_any_user_string_resolves_or_raises_value_error(user):
    root = Path(__file__).parent / "no-such-rootfs"
    try:
        got = resolve_user(user, root)
    except ValueError:
        return
    assert 0 <= got.uid < 2**31
    assert got.additional_gids[0] == got.gid


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


def test_tty_sets_terminal_and_term_among_the_defaults():
    process = spec(RunOptions(tty=True))["process"]
    assert process["terminal"] is True
    assert process["env"] == ["PATH=/bin", "TERM=xterm", "LANG=C"]


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
    assert s["process"]["env"] == ["PATH=/bin", f"HOSTNAME={socket.gethostname()}", "LANG=C"]
    assert spec(RunOptions(network="host", hostname="box"))["process"]["env"][1] == "HOSTNAME=box"
    named = spec(RunOptions(network="host", hostname="box", env=("HOSTNAME=x",)))
    assert named["process"]["env"] == ["PATH=/bin", "HOSTNAME=x", "LANG=C"]  # the env wins


def test_an_invalid_network_name_is_refused():
    with pytest.raises(ValueError, match="network"):
        spec(RunOptions(network="no such/net"))


def test_a_named_network_gets_its_own_namespace_and_the_networks_label():
    from ctl.spec import container_labels

    s = spec(RunOptions(network="front"))
    assert {"type": "network"} in s["linux"]["namespaces"]
    assert container_labels(BUSYBOX, RunOptions(network="front"))["ctrd.io/networks"] == "front"
    for mode in ("host", "none", "container:0123"):
        assert "ctrd.io/networks" not in container_labels(BUSYBOX, RunOptions(network=mode))


@pytest.mark.parametrize("network", ["", "default", "bridge"])
def test_the_default_network_is_dockers_bridge_in_its_own_namespace(network):
    assert container_labels(BUSYBOX, RunOptions(network=network))["ctrd.io/networks"] == "bridge"
    s = spec(RunOptions(network=network))
    assert {"type": "network"} in s["linux"]["namespaces"]
    assert not [m for m in s["mounts"] if m["destination"] in ("/etc/hosts", "/etc/resolv.conf")]


def test_container_mode_keeps_its_namespace_entry_and_names_the_shared_container():
    options = RunOptions(network="container:" + "ab" * 32)
    assert {"type": "network"} in spec(options)["linux"]["namespaces"]
    labels = container_labels(BUSYBOX, options)
    assert labels["ctrd.io/network-container"] == "ab" * 32
    assert "ctrd.io/networks" not in labels


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


# --- stop signal and timeout ---------------------------------------------------------------


def test_stop_signal_label_is_the_given_then_the_images_then_none():
    label = "io.containerd.image.config.stop-signal"
    none = RunOptions(network="none")
    mode = {"ctrctl.network-mode": "none"}  # inspect's HostConfig.NetworkMode
    assert container_labels({}, none) == mode  # none of its own: stop sends SIGTERM
    assert container_labels({"StopSignal": "SIGUSR1"}, none) == {label: "SIGUSR1", **mode}
    given = RunOptions(stop_signal="QUIT", stop_timeout=3, network="none")
    assert container_labels({"StopSignal": "SIGUSR1"}, given) == {
        label: "QUIT", "ctrctl.stop-timeout": "3", **mode,
    }  # fmt: skip


def test_stop_settings_read_the_labels_with_dockers_defaults():
    label = "io.containerd.image.config.stop-signal"
    assert stop_settings({}) == (signal.SIGTERM, 10.0)
    assert stop_settings({label: "usr2", "ctrctl.stop-timeout": "-1"}) == (signal.SIGUSR2, -1.0)
    assert stop_settings({label: "SIGNONSENSE"}) == (signal.SIGTERM, 10.0)  # as dockerd's


@pytest.mark.parametrize(
    ("text", "number"),
    [("SIGUSR1", 10), ("usr1", 10), ("9", 9), ("KILL", 9), ("RTMIN", signal.SIGRTMIN),
     ("RTMIN+2", signal.SIGRTMIN + 2), ("SIGRTMAX-1", signal.SIGRTMAX - 1)],
)  # fmt: skip
def test_signals_parse_as_dockers(text, number):
    assert parse_signal(text) == number


@pytest.mark.parametrize("text", ["0", "-3", "", "SIG", "FOO", "RTMIN-1", "RTMAX+1", "TERM "])
def test_bad_signals_are_refused_in_dockers_words(text):
    with pytest.raises(ValueError, match=f"^Invalid signal: {re.escape(text)}$"):
        parse_signal(text)
    with pytest.raises(ValueError, match="Invalid signal"):
        spec(RunOptions(stop_signal=text or "x y"))


def test_network_modes_are_not_network_names() -> None:
    # `default` is ctrctl's own default value for --network: no lookup of a network so named;
    # nor of `bridge`, which the daemon makes when a container first needs it
    names = ("default", "host", "none", "", "bridge", "container:x", "front")
    assert [is_named_network(n) for n in names] == [
        False, False, False, False, False, False, True,
    ]  # fmt: skip


def _layers_for_lookup(tmp_path: Path) -> tuple[str, ...]:
    """Three layers (top first) with what overlayfs merges: a whiteout, an opaque directory,
    a file over a directory, a directory over a file, links crossing layers."""
    top, mid, low = (tmp_path / name for name in ("top", "mid", "low"))
    for layer in (top, mid, low):
        (layer / "etc").mkdir(parents=True)
    (low / "etc" / "passwd").write_text("low\n")
    (low / "etc" / "group").write_text("low\n")
    (mid / "etc" / "group").write_text("mid\n")
    os.mknod(top / "etc" / "group", 0o600 | 0o020000, os.makedev(0, 0))  # a whiteout
    (low / "data").mkdir()
    (low / "data" / "passwd").write_text("hidden\n")
    (low / "data" / "shadow").write_text("low data\n")
    (mid / "data").mkdir()
    os.setxattr(mid / "data", "trusted.overlay.opaque", b"y")
    (mid / "data" / "hosts").write_text("mid data\n")
    (top / "data").mkdir()
    (top / "data" / "passwd").write_text("top data\n")
    (top / "link").symlink_to("/data/hosts")
    (mid / "etc" / "alias").symlink_to("../data/shadow")
    (low / "file-then-dir").write_text("low\n")
    (top / "file-then-dir").mkdir()
    (low / "dir-then-file").mkdir()
    (low / "dir-then-file" / "inside").write_text("low\n")
    (top / "dir-then-file").write_text("top\n")
    return tuple(str(layer) for layer in (top, mid, low))


PATHS_TO_LOOK_UP = ("/etc/passwd", "/etc/group", "/data/passwd", "/data/shadow", "/data/hosts",
                    "/link", "/etc/alias", "/file-then-dir", "/dir-then-file/inside",
                    "/nothing/here", "/etc/../etc/./passwd", "/")  # fmt: skip


def test_an_overlays_files_are_found_in_its_layers_as_overlayfs_merges_them(tmp_path):
    """ctrctl reads an image's /etc/passwd from its snapshot's layers, without mounting it:
    what it finds is what a real overlay mount of the same layers shows."""
    layers = _layers_for_lookup(tmp_path)
    merged = tmp_path / "merged"
    merged.mkdir()
    lower = ":".join(layers)  # read-only overlay: no upper dir, every layer a lower one
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lower}", merged],
                   check=True)  # fmt: skip
    try:
        for path in PATHS_TO_LOOK_UP:
            found = layered_path(layers, path)
            seen = scoped_path(merged, path)
            if not seen.exists():
                assert found is None, path
                continue
            assert found is not None, path
            if seen.is_dir():
                assert os.path.isdir(found), path
            else:
                assert Path(found).read_bytes() == seen.read_bytes(), path
    finally:
        subprocess.run(["umount", merged], check=True)
    assert layered_path(layers, "/etc/passwd") == os.path.join(layers[2], "etc", "passwd")
    assert layered_path(layers, "/etc/group") is None  # the whiteout
    assert layered_path(layers, "/data/shadow") is None  # under the opaque directory
    assert layered_path(layers, "/link") == os.path.join(layers[1], "data", "hosts")
    assert resolve_user("", layers) == User(0, 0, (0,))  # no /etc/group: no extras
