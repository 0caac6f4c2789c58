"""ctl.secopts: docker's safe defaults and security flags, parsed and written into the spec."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import pytest

from ctl import secopts
from ctl.spec import DEFAULT_CAPABILITIES, RunOptions, generate
from supervisor import seccomp

CONFIG = {"Cmd": ["sh"]}


def flags(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    secopts.add_flags(parser.add_argument)
    return parser.parse_args(list(argv))


def options(*argv: str) -> secopts.SecurityOptions:
    return secopts.from_args(flags(*argv), warn=lambda text: None)


def spec(*argv: str, privileged: bool = False) -> dict[str, Any]:
    run = RunOptions(args=["sh"], privileged=privileged, security=options(*argv))
    return generate("default", "c1", CONFIG, run)


def test_no_security_options_leave_ctrs_spec_as_it_was():
    plain = generate("default", "c1", CONFIG, RunOptions(args=["sh"]))
    assert "seccomp" not in plain["linux"]
    assert plain["process"]["noNewPrivileges"] is True
    assert "oomScoreAdj" not in plain["process"]
    assert not any(m["destination"] == "/sys/fs/cgroup" for m in plain["mounts"])


def test_ctrctls_defaults_are_dockers():
    made = spec()
    process, linux = made["process"], made["linux"]
    assert linux["seccomp"] == seccomp.runtime_default(DEFAULT_CAPABILITIES)
    assert process["noNewPrivileges"] is False
    assert process["oomScoreAdj"] in (0, int(Path("/proc/self/oom_score_adj").read_text()))
    destinations = [m["destination"] for m in made["mounts"]]
    assert destinations.index("/sys/fs/cgroup") == destinations.index("/sys") + 1
    cgroup = made["mounts"][destinations.index("/sys/fs/cgroup")]
    assert cgroup == {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                      "options": ["ro", "nosuid", "noexec", "nodev"]}  # fmt: skip


def test_privileged_is_unconfined_with_the_cgroups_writable():
    made = spec(privileged=True)
    assert "seccomp" not in made["linux"]
    [cgroup] = [m for m in made["mounts"] if m["destination"] == "/sys/fs/cgroup"]
    assert cgroup["options"][0] == "rw"


def test_seccomp_unconfined_and_a_profile_file(tmp_path):
    assert "seccomp" not in spec("--security-opt", "seccomp=unconfined")["linux"]
    profile = tmp_path / "p.json"
    profile.write_text('{"defaultAction": "SCMP_ACT_LOG", "syscalls": []}')
    made = spec("--security-opt", f"seccomp={profile}")
    assert made["linux"]["seccomp"] == {"defaultAction": "SCMP_ACT_LOG", "syscalls": []}


@pytest.mark.parametrize(
    ("argv", "caps"),
    [
        (("--cap-add", "net_admin"), [*DEFAULT_CAPABILITIES, "CAP_NET_ADMIN"]),
        (("--cap-drop", "CAP_CHOWN", "--cap-drop", "kill"),
         [c for c in DEFAULT_CAPABILITIES if c not in ("CAP_CHOWN", "CAP_KILL")]),
        (("--cap-drop", "all", "--cap-add", "sys_time"), ["CAP_SYS_TIME"]),
        (("--cap-add", "CHOWN"), list(DEFAULT_CAPABILITIES)),  # already there: once
    ],
)  # fmt: skip
def test_capabilities_are_tweaked_as_docker_tweaks_them(argv, caps):
    capabilities = spec(*argv)["process"]["capabilities"]
    assert capabilities == {"bounding": caps, "effective": caps, "permitted": caps}


def test_cap_add_all_is_every_capability_the_host_has_but_the_dropped():
    host = ["CAP_CHOWN", "CAP_SYS_ADMIN", "CAP_KILL"]
    adds, drops = (
        secopts.normalize_capabilities(["all"]),
        secopts.normalize_capabilities(["SYS_ADMIN"]),
    )
    tweaked = secopts.tweak_capabilities(DEFAULT_CAPABILITIES, adds, drops, lambda: host)
    assert tweaked == ["CAP_CHOWN", "CAP_KILL"]
    from ctl.spec import current_capabilities

    everything = spec("--cap-add", "ALL")["process"]["capabilities"]["bounding"]
    assert everything == current_capabilities()


def test_the_profile_follows_the_final_capabilities():
    names = {n for c in spec("--cap-add", "SYS_ADMIN")["linux"]["seccomp"]["syscalls"]
             for n in c["names"]}  # fmt: skip
    assert "unshare" in names
    names = {n for c in spec()["linux"]["seccomp"]["syscalls"] for n in c["names"]}
    assert "unshare" not in names


def test_no_new_privileges_values():
    assert spec("--security-opt", "no-new-privileges")["process"]["noNewPrivileges"] is True
    for value, wanted in (("true", True), ("1", True), ("False", False), ("f", False)):
        made = spec("--security-opt", f"no-new-privileges={value}")
        assert made["process"]["noNewPrivileges"] is wanted


def test_systempaths_unconfined_drops_masked_and_read_only_paths():
    linux = spec("--security-opt", "systempaths=unconfined")["linux"]
    assert "maskedPaths" not in linux
    assert "readonlyPaths" not in linux


def test_ulimits_replace_or_join_the_rlimits():
    made = spec("--ulimit", "nofile=100:200", "--ulimit", "core=-1", "--ulimit", "nproc=7")
    assert made["process"]["rlimits"] == [
        {"type": "RLIMIT_NOFILE", "hard": 200, "soft": 100},
        {"type": "RLIMIT_CORE", "hard": 2**64 - 1, "soft": 2**64 - 1},
        {"type": "RLIMIT_NPROC", "hard": 7, "soft": 7},
    ]


def test_a_device_is_made_and_allowed_with_its_permissions():
    st = os.stat("/dev/null")
    made = spec("--device", "/dev/null:/dev/mine:rw")
    assert made["linux"]["devices"] == [
        {"path": "/dev/mine", "type": "c", "major": 1, "minor": 3, "fileMode": st.st_mode & 0o7777,
         "uid": st.st_uid, "gid": st.st_gid}
    ]  # fmt: skip
    assert made["linux"]["resources"]["devices"][-1] == {
        "allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"
    }  # fmt: skip


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("/dev/null", ("/dev/null", "/dev/null", "rwm")),
        ("/dev/null:r", ("/dev/null", "/dev/null", "r")),
        ("/dev/null:/dev/x", ("/dev/null", "/dev/x", "rwm")),
        ("/dev/null:/dev/x/../y:mw", ("/dev/null", "/dev/y", "mw")),
    ],
)
def test_device_flags_split_as_dockers_cli_splits_them(text, parsed):
    assert secopts.parse_device(text) == parsed


def test_a_device_directory_gives_every_device_under_it():
    nodes = secopts.host_devices("/dev/pts", "/dev/inside", "r")
    assert "/dev/inside/ptmx" in [node.path for node in nodes]
    assert all(node.path.startswith("/dev/inside/") for node in nodes)


def test_init_is_pid_1_before_the_command_bound_read_only():
    made = spec("--init")
    assert made["process"]["args"] == ["/sbin/docker-init", "--", "sh"]
    assert made["mounts"][-1] == {"destination": "/sbin/docker-init", "type": "bind",
                                  "source": secopts.TINI, "options": ["rbind", "ro"]}  # fmt: skip


@pytest.mark.parametrize(
    ("text", "size"),
    [("128m", 128 << 20), ("1g", 1 << 30), ("1GiB", 1 << 30), ("4096", 4096), ("0", 64 << 20),
     ("1.5k", 1536)],
)  # fmt: skip
def test_shm_size_in_dockers_units(text, size):
    [shm] = [m for m in spec("--shm-size", text)["mounts"] if m["destination"] == "/dev/shm"]
    assert shm["options"][-1] == f"size={size}"
    assert sum(o.startswith("size=") for o in shm["options"]) == 1


def test_oom_score_adj_is_raised_to_our_own_without_cap_sys_resource(tmp_path):
    status, own = tmp_path / "status", tmp_path / "oom"
    status.write_text("Name:\tx\nCapEff:\t000001fffeffffff\n")  # all but CAP_SYS_RESOURCE
    own.write_text("100\n")
    said: list[str] = []
    assert secopts.oom_score_adj(-500, said.append, str(status), str(own)) == 100
    assert said == [
        "WARNING: this host refuses an oom_score_adj below 100 without CAP_SYS_RESOURCE:"
        " --oom-score-adj -500 is raised to 100"
    ]
    assert secopts.oom_score_adj(None, said.append, str(status), str(own)) == 100
    assert len(said) == 1  # the default is raised quietly
    assert secopts.oom_score_adj(300, said.append, str(status), str(own)) == 300
    status.write_text("CapEff:\t000001ffffffffff\n")
    assert secopts.oom_score_adj(-500, said.append, str(status), str(own)) == -500


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (("--security-opt", "bogus"), 'Invalid --security-opt: "bogus"'),
        (("--security-opt", "foo=bar"), 'invalid --security-opt 2: "foo=bar"'),
        (("--security-opt", "no-new-privileges=maybe"),
         'invalid --security-opt 2: "no-new-privileges=maybe"'),
        (("--security-opt", "seccomp=/no/such/file"),
         r"opening seccomp profile \(/no/such/file\) failed: open /no/such/file: no such file"),
        (("--cap-add", "FOO"), 'invalid CapAdd: unknown capability: "CAP_FOO"'),
        (("--cap-drop", "CAP_NOPE"), 'invalid CapDrop: unknown capability: "CAP_NOPE"'),
        (("--device", "/dev/nope"),
         'error gathering device information while adding custom device "/dev/nope": no such'),
        (("--device", "/etc/hostname"), "not a device node"),
        (("--device", "/dev/null:rel"), "rel is not an absolute path"),
        (("--device", "/dev/null:/x:rwx"), "bad mode specified: rwx"),
        (("--device", "a:b:c:d"), "bad format for path: a:b:c:d"),
        (("--ulimit", "nofile"), "invalid ulimit argument: nofile"),
        (("--ulimit", "files=1"), "invalid ulimit type: files"),
        (("--ulimit", "nofile=1:2:3"), "too many limit value arguments - 1:2:3"),
        (("--ulimit", "nofile=x"), 'strconv.ParseInt: parsing "x": invalid syntax'),
        (("--ulimit", "nofile=10:5"),
         "ulimit soft limit must be less than or equal to hard limit: 10 > 5"),
        (("--shm-size", "-1"),
         "invalid argument \"-1\" for \"--shm-size\" flag: invalid size: '-1'"),
        (("--shm-size", "lots"), "invalid size: 'lots'"),
        (("--oom-score-adj", "-1001"), r"Invalid value -1001, range for oom score adj is \[-1000"),
    ],
)  # fmt: skip
def test_bad_flags_are_refused_in_dockers_words(argv, words):
    with pytest.raises(ValueError, match=words):
        options(*argv)


def test_a_seccomp_file_that_is_not_json(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("hello")
    with pytest.raises(ValueError, match=rf"compacting json for seccomp profile \({bad}\) failed"):
        options("--security-opt", f"seccomp={bad}")


def test_label_and_apparmor_are_ignored_with_a_warning():
    said: list[str] = []
    secopts.from_args(flags("--security-opt", "label=disable", "--security-opt",
                            "apparmor=unconfined"), warn=said.append)  # fmt: skip
    assert len(said) == 2
    assert all("ignored" in line for line in said)


def test_the_security_options_are_values():
    with pytest.raises(AttributeError):
        options().init = True  # type: ignore[misc]
    assert Path(secopts.TINI).name == "tini-static"


def test_a_cgroup_namespace_of_its_own_on_cgroup_v2_hosts_only(tmp_path):
    assert not secopts.unified_cgroups(str(tmp_path))
    (tmp_path / "cgroup.controllers").write_text("cpu memory\n")
    assert secopts.unified_cgroups(str(tmp_path))
    security = options()._replace(cgroup_namespace=True)
    made = generate("default", "c1", CONFIG, RunOptions(args=["sh"], security=security))
    assert made["linux"]["namespaces"][-1] == {"type": "cgroup"}
    here = spec()["linux"]["namespaces"]
    assert ({"type": "cgroup"} in here) == secopts.unified_cgroups()
