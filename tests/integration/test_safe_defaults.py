"""ctrctl's containers get docker's safe defaults, and the flags that tune them act as docker's.

Each behaviour is run through the real dockerd 20.10 (`docker run --network none`) and through
`ctrctl run`, both on one ctrd for the module, and must read the same from inside the
container, and be what the test expects, so the expectation is proven on docker itself:
the default seccomp profile (a user namespace refused, allowed with `seccomp=unconfined`,
with CAP_SYS_ADMIN, or under a profile file; a profile file's own rules), capabilities in
/proc/self/status `CapEff`, `NoNewPrivs`, ulimits in /proc/self/limits, a device node and its
cgroup permissions, `/sys/fs/cgroup` read-only, the /dev/shm size, `oom_score_adj`, `--init`
as PID 1 reaping an orphan and passing SIGTERM on; and bad input refused in the same words,
exit 125, with nothing made.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Ctrd
from tests.support.dockerd import IMAGE, Dockerd, busybox_archive

pytestmark = pytest.mark.integration

NONE = ("--network", "none")
DEFAULT_CAPS = "00000000a80425fb"  # docker's 14 default capabilities
# Prints what the defaults and the flags decide, one fact a line.
REPORT = (
    "grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status;"
    " unshare -U true 2>/dev/null && echo userns=allowed || echo userns=denied;"
    " echo oom=$(cat /proc/self/oom_score_adj);"
    " df -k /dev/shm | awk 'NR==2 {print \"shm=\" $2}';"
    # the mount options of the first cgroup hierarchy (v1 or v2) under /sys/fs/cgroup
    " echo cgroup=$(grep -E ' - cgroup2? ' /proc/self/mountinfo | head -1 | cut -d' ' -f6"
    " | cut -d, -f1)"
)
DEFAULTS = (
    f"CapEff:\t{DEFAULT_CAPS}\nNoNewPrivs:\t0\nSeccomp:\t2\nuserns=denied\noom=0\nshm=65536\n"
    "cgroup=ro\n"
)


@dataclass(frozen=True)
class Engines:
    ctrd: Ctrd
    docker: Dockerd
    base: Path

    def ctrctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ctl", "--address", self.ctrd.address, *args],
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    def run(self, client: str, *args: str) -> subprocess.CompletedProcess[str]:
        """`run` (with its flags and the image) through `client`, docker or ctrctl."""
        if client == "docker":
            return self.docker.docker("run", *args, check=False)
        return self.ctrctl("run", *args)

    def cli(self, client: str, *args: str) -> subprocess.CompletedProcess[str]:
        if client == "docker":
            return self.docker.docker(*args, check=False)
        return self.ctrctl(*args)


@pytest.fixture(scope="module")
def engines() -> Iterator[Engines]:
    """One ctrd and one dockerd on it for the module, the busybox image loaded in both."""
    base = Path(tempfile.mkdtemp(prefix="ctrd-", dir="/tmp"))
    daemon = Ctrd(base)
    (base / "docker").mkdir()
    docker = Dockerd(base / "docker", daemon.address)
    try:
        daemon.start()
        docker.start()
        archive = busybox_archive(base / "busybox.tar")
        docker.docker("load", "-i", str(archive))
        engines = Engines(daemon, docker, base)
        loaded = engines.ctrctl("load", "-i", str(archive), timeout=120)
        assert loaded.returncode == 0, loaded.stderr
        yield engines
    finally:
        docker.remove_all()
        docker.stop()
        docker.cleanup()
        status = daemon.stop()
        daemon.cleanup()
        log = daemon.log()
        shutil.rmtree(base, ignore_errors=True)
    assert status == 0, log[-4000:]
    assert "Traceback" not in log, log[-5000:]


@pytest.fixture(params=["docker", "ctrctl"])
def client(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def ran(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_defaults_are_dockers(engines, client):
    """Seccomp on (a user namespace refused), docker's capabilities, no no-new-privileges,
    oom_score_adj 0, a 64m /dev/shm, the cgroup hierarchies read-only."""
    out = ran(engines.run(client, "--rm", *NONE, IMAGE, "sh", "-c", REPORT))
    assert out == DEFAULTS


FLAG_CASES = {
    "unconfined": (("--security-opt", "seccomp=unconfined"),
                   {"Seccomp:": "0", "userns": "allowed"}),
    # the default profile allows namespaces to a container given CAP_SYS_ADMIN
    "cap-sys-admin": (("--cap-add", "sys_admin"),
                      {"Seccomp:": "2", "userns": "allowed", "CapEff:": "00000000a82425fb"}),
    "caps-nnp-oom-shm": (("--cap-drop", "ALL", "--cap-add", "NET_ADMIN", "--cap-add",
                          "CAP_CHOWN", "--security-opt", "no-new-privileges", "--oom-score-adj",
                          "300", "--shm-size", "128m"),
                         {"CapEff:": "0000000000001001", "NoNewPrivs:": "1", "oom": "300",
                          "shm": "131072"}),
    "cap-drop": (("--cap-drop", "net_raw", "--security-opt", "no-new-privileges=false"),
                 {"CapEff:": "00000000a80405fb", "NoNewPrivs:": "0"}),
}  # fmt: skip


def facts(report: str) -> dict[str, str]:
    return dict(line.replace("=", "\t", 1).split("\t", 1) for line in report.splitlines())


@pytest.mark.parametrize("case", FLAG_CASES)
def test_flags_change_what_docker_changes(engines, client, case):
    flags, wanted = FLAG_CASES[case]
    out = ran(engines.run(client, "--rm", *NONE, *flags, IMAGE, "sh", "-c", REPORT))
    assert facts(out) == {**facts(DEFAULTS), **wanted}


def test_privileged_runs_unconfined_with_the_cgroups_writable(engines):
    """ctrctl only: dockerd's --privileged asks for every capability the kernel knows, and
    root here lacks CAP_SYS_RESOURCE, so runc refuses docker's; ctrctl's is the host's own
    (ctr's WithAllCurrentCapabilities)."""
    out = ran(engines.ctrctl("run", "--rm", *NONE, "--privileged", IMAGE, "sh", "-c", REPORT))
    got = facts(out)
    del got["CapEff:"]
    wanted = {**facts(DEFAULTS), "Seccomp:": "0", "userns": "allowed", "cgroup": "rw"}
    del wanted["CapEff:"]
    assert got == wanted


def test_a_seccomp_profile_file_in_dockers_format(engines, client):
    profile = engines.base / "no-mkdir.json"
    profile.write_text(
        json.dumps(
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [
                    {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"},
                    {"names": ["unshare"], "action": "SCMP_ACT_ALLOW"},
                ],
            }
        )
    )
    script = "mkdir /tmp/d && echo made || echo refused; unshare -U true && echo userns"
    out = ran(
        engines.run(
            client, "--rm", *NONE, "--security-opt", f"seccomp={profile}", IMAGE, "sh", "-c",
            script,
        )
    )  # fmt: skip
    assert out == "refused\nuserns\n"


def test_ulimits_and_a_device_with_its_cgroup_permissions(engines, client):
    script = (
        "grep -E '^Max (open files|core file size|processes)' /proc/self/limits"
        " | tr -s ' ' | sed 's/ $//';"
        " stat -c '%t:%T %F' /dev/myfuse;"
        " cat /dev/myfuse 2>&1 | head -c0 && echo read;"
        " (echo x > /dev/myfuse) 2>/dev/null && echo written || echo write-denied;"
        " test -e /dev/fuse || echo no-host-name"
    )
    flags = ("--ulimit", "nofile=100:200", "--ulimit", "core=-1", "--ulimit", "nproc=50",
             "--device", "/dev/fuse:/dev/myfuse:r")  # fmt: skip
    out = ran(engines.run(client, "--rm", *NONE, *flags, IMAGE, "sh", "-c", script))
    assert out.splitlines() == [
        "Max core file size unlimited unlimited bytes",
        "Max processes 50 50 processes",
        "Max open files 100 200 files",
        "a:e5 character special file",
        "read",
        "write-denied",
        "no-host-name",
    ]


def test_init_is_pid_1_reaps_orphans_and_passes_sigterm_on(engines, client):
    """With --init an orphan is reaped (without it, PID 1 `sleep` leaves a zombie), and
    `stop` ends the container at once: tini passes SIGTERM to `sleep`, which a PID 1 ignores."""
    orphan = "(sleep 0.2 &); exec sleep 100"
    zombies = "grep -l '^State:.Z' /proc/[0-9]*/status | wc -l"
    names = {"init": f"init-{client}", "bare": f"bare-{client}"}
    for kind, name in names.items():
        flags = ("--init",) if kind == "init" else ()
        ran(engines.run(client, "-d", "--name", name, *NONE, *flags, IMAGE, "sh", "-c", orphan))
    try:
        time.sleep(0.8)
        look = f"tr '\\0' ' ' < /proc/1/cmdline; echo; {zombies}"
        found = {k: ran(engines.cli(client, "exec", n, "sh", "-c", look)) for k, n in names.items()}
        assert found == {"init": f"/sbin/docker-init -- sh -c {orphan} \n0\n",
                         "bare": "sleep 100 \n1\n"}  # fmt: skip
        started = time.monotonic()
        ran(engines.cli(client, "stop", "-t", "20", names["init"]))
        assert time.monotonic() - started < 10
        assert ran(engines.cli(client, "wait", names["init"])) == "143\n"  # tini: 128 + TERM
    finally:
        for name in names.values():
            engines.cli(client, "rm", "-f", name)


def test_a_negative_oom_score_adj_is_raised_where_the_host_refuses_it(engines):
    """Root here may lack CAP_SYS_RESOURCE (runc would then fail the start): ctrctl raises the
    value to its own oom_score_adj and says so; with the capability the value is kept."""
    status = Path("/proc/self/status").read_text()
    capeff = int(next(line for line in status.splitlines() if line.startswith("CapEff:"))[7:], 16)
    own = int(Path("/proc/self/oom_score_adj").read_text())
    privileged = bool(capeff >> 24 & 1)
    out = engines.ctrctl(
        "run", "--rm", *NONE, "--oom-score-adj", "-300", IMAGE, "cat", "/proc/self/oom_score_adj"
    )
    assert out.returncode == 0, out.stderr
    if privileged or own <= -300:
        assert out.stdout == "-300\n"
    else:
        assert out.stdout == f"{own}\n"
        assert f"--oom-score-adj -300 is raised to {own}" in out.stderr


BAD_INPUT = [
    (("--cap-add", "FOO"), 'unknown capability: "CAP_FOO"'),
    # docker's CLI says 127 for this one (a start error that reads "no such file or
    # directory" is taken for a missing command); ctrctl says 125, its code for bad input
    (("--device", "/dev/nope"),
     'error gathering device information while adding custom device "/dev/nope": no such file'
     " or directory"),
    (("--ulimit", "nofile"),
     'invalid argument "nofile" for "--ulimit" flag: invalid ulimit argument: nofile'),
    (("--ulimit", "nofile=10:5"), "ulimit soft limit must be less than or equal to hard limit"),
    (("--shm-size", "-1"), "invalid argument \"-1\" for \"--shm-size\" flag: invalid size: '-1'"),
    (("--oom-score-adj", "2000"), "Invalid value 2000, range for oom score adj is [-1000, 1000]"),
    (("--security-opt", "foo=bar"), 'invalid --security-opt 2: "foo=bar"'),
]  # fmt: skip


@pytest.mark.parametrize(("flags", "words"), BAD_INPUT, ids=[f[0] for f, _ in BAD_INPUT])
def test_bad_input_is_refused_in_dockers_words_and_leaves_nothing(engines, client, flags, words):
    refused = engines.run(client, "--rm", *NONE, *flags, IMAGE, "true")
    docker_says_127 = client == "docker" and flags[0] == "--device"
    assert refused.returncode == (127 if docker_says_127 else 125)
    assert words in refused.stderr
    assert ran(engines.cli(client, "ps", "-aq")) == ""


def test_a_seccomp_file_that_is_not_json_is_refused_as_docker_refuses_it(engines, client):
    bad = engines.base / "not-json"
    bad.write_text("hello\n")
    refused = engines.run(client, "--rm", *NONE, "--security-opt", f"seccomp={bad}", IMAGE, "true")
    assert refused.returncode == 125
    assert f"compacting json for seccomp profile ({bad}) failed" in refused.stderr
    assert ran(engines.cli(client, "ps", "-aq")) == ""
    if client == "ctrctl":
        keys = engines.ctrd.ctr("snapshots", "ls").stdout.splitlines()[1:]
        assert all(line.startswith("sha256:") for line in keys), keys  # no container's left


def test_the_default_profile_is_applied_to_exec_too(engines):
    name = "execd"
    ran(engines.ctrctl("run", "-d", "--name", name, *NONE, IMAGE, "sleep", "100"))
    try:
        out = engines.ctrctl("exec", name, "sh", "-c", "unshare -U true")
        assert out.returncode != 0
        assert "Operation not permitted" in out.stderr + out.stdout
    finally:
        engines.ctrctl("rm", "-f", name)
