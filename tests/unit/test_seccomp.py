"""supervisor.seccomp: the default profile's policy, and profiles resolved as dockerd does."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor import seccomp

DEFAULT_CAPS = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)  # fmt: skip


def allowed(oci: dict[str, Any]) -> set[str]:
    """Names allowed without any argument condition."""
    return {
        name
        for call in oci["syscalls"]
        if call["action"] == seccomp.ALLOW and not call.get("args")
        for name in call["names"]
    }


def conditional(oci: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [call for call in oci["syscalls"] if name in call["names"] and call.get("args")]


def default(caps=DEFAULT_CAPS, arch="amd64", kernel=(6, 1)) -> dict[str, Any]:
    return seccomp.to_oci(seccomp.DEFAULT, caps, arch, kernel)


def test_everything_not_listed_fails_with_eperm_on_the_native_and_compat_arches():
    oci = default()
    assert (oci["defaultAction"], oci["defaultErrnoRet"]) == ("SCMP_ACT_ERRNO", 1)
    assert oci["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    assert default(arch="arm64")["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]


def test_ordinary_programs_calls_are_allowed():
    names = allowed(default())
    ordinary = (
        "read", "write", "openat", "close", "mmap", "execve", "exit_group", "futex", "pipe2",
        "wait4", "rt_sigaction", "getdents64", "statx", "clock_gettime", "epoll_wait",
        "accept4", "sendmsg", "setuid", "prctl", "arch_prctl", "chroot",
    )  # fmt: skip
    assert set(ordinary) <= names, set(ordinary) - names


def test_namespaces_mounts_keys_modules_and_the_clock_are_denied_by_default():
    denied = (
        "unshare", "setns", "mount", "umount2", "pivot_root", "add_key", "keyctl",
        "request_key", "init_module", "reboot", "settimeofday", "bpf", "perf_event_open",
        "kexec_load", "open_by_handle_at", "clone3", "io_uring_setup", "userfaultfd",
        "personality", "socket", "clone",
    )  # fmt: skip
    assert not set(denied) & allowed(default())


def test_ptrace_by_kernel_version_and_capability():
    assert "ptrace" not in allowed(default(kernel=(4, 4)))
    assert "ptrace" in allowed(default(kernel=(4, 8)))
    assert "kcmp" not in allowed(default())
    assert "kcmp" in allowed(default(caps=(*DEFAULT_CAPS, "CAP_SYS_PTRACE")))


@pytest.mark.parametrize(
    ("cap", "names"),
    [
        ("CAP_SYS_ADMIN", ("unshare", "setns", "mount", "clone", "clone3", "sethostname")),
        ("CAP_SYS_BOOT", ("reboot",)),
        ("CAP_SYS_MODULE", ("init_module", "finit_module", "delete_module")),
        ("CAP_SYS_TIME", ("settimeofday", "clock_settime")),
        ("CAP_SYS_NICE", ("mbind", "set_mempolicy")),
        ("CAP_SYSLOG", ("syslog",)),
    ],
)
def test_calls_allowed_with_the_capability_that_governs_them(cap, names):
    assert not set(names) & allowed(default())
    assert set(names) <= allowed(default(caps=(*DEFAULT_CAPS, cap)))


def test_clone_without_namespace_flags_and_clone3_enosys_unless_sys_admin():
    oci = default()
    [clone] = conditional(oci, "clone")
    assert clone["args"] == [
        {"index": 0, "value": 0x7E020000, "op": "SCMP_CMP_MASKED_EQ"}
    ]  # every CLONE_NEW* flag, which must all be clear
    [clone3] = [call for call in oci["syscalls"] if call["names"] == ["clone3"]]
    assert (clone3["action"], clone3["errnoRet"]) == ("SCMP_ACT_ERRNO", 38)
    admin = default(caps=(*DEFAULT_CAPS, "CAP_SYS_ADMIN"))
    assert not conditional(admin, "clone")
    assert not any(c["action"] == "SCMP_ACT_ERRNO" for c in admin["syscalls"])
    [s390] = conditional(default(arch="s390x"), "clone")
    assert s390["args"][0]["index"] == 1  # the flags are clone's second argument there


def test_personality_only_with_its_harmless_values_and_no_vsock_or_alg_sockets():
    oci = default()
    values = sorted(c["args"][0]["value"] for c in conditional(oci, "personality"))
    assert values == [0, 8, 0x20000, 0x20008, 0xFFFFFFFF]
    sockets = {(c["args"][0]["op"], c["args"][0]["value"]) for c in conditional(oci, "socket")}
    assert sockets == {("SCMP_CMP_LT", 38), ("SCMP_CMP_EQ", 39), ("SCMP_CMP_GT", 40)}


def test_arch_specific_calls_only_on_their_arch():
    assert "arch_prctl" not in allowed(default(arch="arm64"))
    assert "set_tls" in allowed(default(arch="arm64"))
    assert "set_tls" not in allowed(default())


def test_a_docker_profile_resolves_includes_and_excludes():
    profile = seccomp.parse(
        {
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [
                {"name": "mkdir", "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                {"names": ["mount"], "action": "SCMP_ACT_ERRNO",
                 "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
                {"names": ["kill"], "action": "SCMP_ACT_LOG",
                 "includes": {"arches": ["arm64"], "minKernel": "5.4"}},
                {"names": ["socket"], "action": "SCMP_ACT_ERRNO",
                 "args": [{"index": 0, "value": 16, "valueTwo": 0, "op": "SCMP_CMP_EQ"}]},
            ],
        }
    )  # fmt: skip
    oci = seccomp.to_oci(profile, ["CAP_CHOWN"], "amd64", (6, 1))
    assert oci == {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": ["mount"], "action": "SCMP_ACT_ERRNO"},
            {"names": ["socket"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 0, "value": 16, "op": "SCMP_CMP_EQ"}]},
        ],
    }  # fmt: skip
    admin = seccomp.to_oci(profile, ["CAP_SYS_ADMIN"], "arm64", (5, 4))
    assert [c["names"] for c in admin["syscalls"]] == [["mkdir"], ["kill"], ["socket"]]


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"architectures": ["SCMP_ARCH_X86_64"], "archMap": [{"architecture": "x"}]},
         "'architectures' and 'archMap' were specified in the seccomp profile"),
        ({"syscalls": [{"name": "a", "names": ["b"], "action": "SCMP_ACT_ALLOW"}]},
         "'name' and 'names' were specified in the seccomp profile"),
        ({"defaultAction": "SCMP_ACT_MAYBE"}, "unknown action"),
        ({"syscalls": [{"names": ["a"], "action": "SCMP_ACT_ALLOW",
                        "args": [{"index": 0, "value": 1, "op": "EQ"}]}]}, "unknown operator"),
        ([], "decoding seccomp profile failed"),
        ({"syscalls": "read"}, "decoding seccomp profile failed"),
    ],
)  # fmt: skip
def test_profiles_docker_refuses_are_refused_in_its_words(data, words):
    with pytest.raises(seccomp.ProfileError, match=words):
        seccomp.parse(data)


scalars = (
    st.none()
    | st.booleans()
    | st.integers(-2, 2**40)
    | st.sampled_from(
        ["", "SCMP_ACT_ALLOW", "SCMP_CMP_EQ", "amd64", "CAP_SYS_ADMIN", "4.8", "x.y", "read"]
    )
)
values = scalars | st.lists(scalars, max_size=3)
objects = st.dictionaries(
    st.sampled_from(["name", "names", "action", "errnoRet", "args", "includes", "excludes",
                     "index", "value", "valueTwo", "op", "arches", "caps", "minKernel",
                     "architecture", "subArchitectures"]),
    values | st.lists(st.dictionaries(st.sampled_from(["index", "value", "op", "caps"]), values),
                      max_size=2),
    max_size=5,
)  # fmt: skip


@given(
    st.dictionaries(
        st.sampled_from(["defaultAction", "architectures", "archMap", "syscalls", "flags",
                         "defaultErrnoRet"]),
        values | st.lists(objects, max_size=3),
    )
)  # fmt: skip
def test_parse_never_raises_anything_but_profile_error(data):
    try:
        profile = seccomp.parse(data)
    except seccomp.ProfileError:
        return
    seccomp.to_oci(profile, DEFAULT_CAPS, "amd64", (6, 1))


def test_the_default_profile_parses_back_from_its_docker_form():
    """The default written out in docker's format (as `docker run --security-opt
    seccomp=FILE` would take it) resolves to the same filter."""
    rules = []
    for rule in seccomp.DEFAULT.rules:
        call: dict[str, Any] = {"names": list(rule.names), "action": rule.action}
        if rule.errno is not None:
            call["errnoRet"] = rule.errno
        if rule.args:
            call["args"] = [arg.to_oci() for arg in rule.args]
        for key, part in (("includes", rule.includes), ("excludes", rule.excludes)):
            if not part.empty():
                call[key] = {"arches": list(part.arches), "caps": list(part.caps)}
                if part.min_kernel:
                    call[key]["minKernel"] = "{}.{}".format(*part.min_kernel)
        rules.append(call)
    data = {
        "defaultAction": seccomp.DEFAULT.default_action,
        "defaultErrnoRet": seccomp.DEFAULT.default_errno,
        "archMap": [{"architecture": k, "subArchitectures": list(v)}
                    for k, v in seccomp.DEFAULT.arch_map],
        "syscalls": rules,
    }  # fmt: skip
    assert seccomp.to_oci(seccomp.parse(data), DEFAULT_CAPS, "amd64", (6, 1)) == default()
