"""shim.nsexec's plan and its words: what it leaves to runc, and errors as runc gives them.
(The exec itself against runc's: tests/integration/test_nsexec.py.)"""

from __future__ import annotations

import os
from typing import Any

import pytest

from shim import nsexec


def _state(**config: Any) -> dict[str, Any]:
    base = {
        "namespaces": [{"type": "NEWPID", "path": ""}, {"type": "NEWNS", "path": ""}],
        "capabilities": {"Bounding": ["CAP_KILL"], "Effective": ["CAP_KILL"]},
        "rlimits": [{"type": 7, "hard": 1024, "soft": 512}],
        "oom_score_adj": 10,
    }
    base.update(config)
    return {
        "init_process_pid": os.getpid(),
        "init_process_start": 1,
        "namespace_paths": {"NEWPID": "/proc/self/ns/pid", "NEWNS": "/proc/self/ns/mnt"},
        "cgroup_paths": {},
        "config": base,
    }


PROCESS = {"args": ["true"], "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 5, "gid": 6}}


@pytest.fixture
def sealed(monkeypatch):
    monkeypatch.setattr(nsexec, "_sealed", True)


def _plan(state: dict[str, Any], process: dict[str, Any] = PROCESS) -> nsexec.Plan:
    return nsexec.plan("c1", state, process, lambda pid, start: True)


def test_a_shim_not_running_from_a_sealed_copy_leaves_exec_to_runc(monkeypatch):
    monkeypatch.setattr(nsexec, "_sealed", None)
    assert not nsexec.self_sealed()  # pytest's python is a file on disk
    with pytest.raises(nsexec.Unsupported, match="sealed"):
        _plan(_state())


@pytest.mark.parametrize(
    ("state", "process", "why"),
    [
        (_state(seccomp={"default_action": 2, "syscalls": [{"name": "kill", "action": 7}]}),
         PROCESS, "seccomp filter: a seccomp notify rule"),
        (_state(seccomp={"default_action": 2, "architectures": ["sparc"]}), PROCESS,
         "seccomp architecture sparc"),
        (_state(namespaces=[{"type": "NEWUSER", "path": ""}]), PROCESS, "user"),
        (_state(apparmor_profile="docker-default"), PROCESS, "AppArmor"),
        (_state(), {**PROCESS, "apparmorProfile": "x"}, "AppArmor"),
        (_state(process_label="system_u:x"), PROCESS, "SELinux"),
        (_state(cgroups={"systemd": True}), PROCESS, "systemd"),
        (_state(), {**PROCESS, "args": []}, "invalid process"),
        (_state(), {**PROCESS, "cwd": "tmp"}, "invalid process"),
        (_state(), {**PROCESS, "rlimits": [{"type": "RLIMIT_NOPE", "soft": 1, "hard": 1}]},
         "rlimit"),
        ({"config": {}}, PROCESS, "does not read"),
    ],
)  # fmt: skip
def test_what_runc_keeps(sealed, state, process, why):
    with pytest.raises(nsexec.Unsupported, match=why):
        _plan(state, process)


def test_a_filter_for_a_runc_it_was_not_compared_with_is_runcs(sealed, tmp_path):
    fake = tmp_path / "runc"
    fake.write_text("#!/bin/sh\necho runc version 1.2.0\necho libseccomp: 2.5.4\n")
    fake.chmod(0o755)
    with pytest.raises(nsexec.Unsupported, match=r"runc 1\.2\.0"):
        nsexec.plan("c1", _state(seccomp={"default_action": 2}), PROCESS, lambda *_: True,
                    str(fake))  # fmt: skip


def test_an_init_gone_is_runcs_to_report(sealed):
    with pytest.raises(nsexec.Unsupported, match="gone"):
        nsexec.plan("c1", _state(), PROCESS, lambda pid, start: False)


def test_the_plan_reads_the_process_over_the_container(sealed):
    plan = _plan(
        _state(),
        {
            **PROCESS,
            "user": {"uid": 5, "gid": 6, "additionalGids": [7, 8]},
            "capabilities": {"bounding": ["CAP_CHOWN", "CAP_NOT_A_CAP"], "ambient": []},
            "rlimits": [{"type": "RLIMIT_NPROC", "soft": 3, "hard": 4}],
            "noNewPrivileges": True,
            "terminal": True,
            "consoleSize": {"height": 30, "width": 100},
        },
    )
    try:
        assert (plan.uid, plan.gid, plan.groups) == (5, 6, [7, 8])
        assert plan.caps["bounding"] == 1  # CAP_CHOWN; the unknown name ignored, as runc
        assert plan.caps["effective"] == 0
        assert plan.rlimits == [(6, 3, 4)]  # RLIMIT_NPROC is 6 on Linux
        assert plan.no_new_privileges
        assert plan.terminal
        assert plan.console_size == (30, 100)  # rows, columns: the pty's before the exec
        assert plan.keyring == b"_ses.c1"
        assert plan.oom_score_adj == 10
        assert [flag for _, flag in plan.namespaces] == [nsexec.CLONE_NEWPID, nsexec.CLONE_NEWNS]
    finally:
        plan.close()
    assert plan.fds == []


def test_the_containers_capabilities_and_rlimits_when_the_process_has_none(sealed):
    plan = _plan(_state(no_new_keyring=True))
    plan.close()
    assert plan.caps["bounding"] == plan.caps["effective"] == 1 << 5  # CAP_KILL
    assert plan.rlimits == [(7, 512, 1024)]
    assert plan.keyring is None


@pytest.mark.parametrize(
    ("name", "path", "says"),
    [
        ("sh", "/bin", None),
        ("nosuch", "/bin", 'exec: "nosuch": executable file not found in $PATH'),
        ("sh", "", 'exec: "sh": executable file not found in $PATH'),
        ("sh", "bin", 'exec: "sh": cannot run executable found relative to current directory'),
        ("/nonexistent", "/bin",
         'exec: "/nonexistent": stat /nonexistent: no such file or directory'),
        ("/etc/passwd", "/bin", 'exec: "/etc/passwd": permission denied'),
        ("/etc", "/bin", 'exec: "/etc": permission denied'),
    ],
)  # fmt: skip
def test_the_program_is_found_as_gos_lookpath_finds_it(monkeypatch, name, path, says):
    monkeypatch.chdir("/")
    env = [f"PATH={path}"] if path else []
    if says is None:
        assert nsexec._look_path(name, env) == f"{path}/{name}"
    else:
        with pytest.raises(nsexec.ExecFailed) as e:
            nsexec._look_path(name, env)
        assert str(e.value) == says
