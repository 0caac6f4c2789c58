"""The shim's own exec (shim/nsexec.py) against runc's: the same process, seen from inside.

Two daemons, one with `[runtime] native_exec` (the default) and one without, both running runc
through a wrapper that records every `runc exec`. The same containers and the same execs go to
both; what the exec'd process sees of itself (ids, capabilities, no_new_privs, seccomp mode,
namespaces, cgroups, rlimits, oom_score_adj, umask, cwd, env, session, fds, terminal) and
what a failed exec says must be equal, the seccomp programs loaded must be runc's (read back
with ptrace), and the native daemon must have run no `runc exec` at all.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import itertools
import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shim import runcseccomp
from tests.conftest import Ctrd
from tests.integration.test_tasks import pull

# What an exec'd shell reports of itself. SigIgn is left out: runc's Go leaves signal 32
# ignored in what it execs, an artefact the shim does not copy (its processes ignore nothing).
PROBE = r"""
grep -E '^(Uid|Gid|Groups|Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs|Seccomp|SigBlk|SigCgt)' \
    /proc/self/status
echo "umask $(umask)"; echo "pwd $(pwd)"; env | sort
cat /proc/self/cgroup /proc/self/oom_score_adj
for n in ipc mnt net pid uts cgroup; do
  [ "$(readlink /proc/self/ns/$n)" = "$(readlink /proc/1/ns/$n)" ] && echo "$n: the init's"
done
set -- $(cut -d' ' -f4-7 /proc/$$/stat)
echo "ppid $1 leader $([ $2 = $$ ] && [ $3 = $$ ] && echo yes) tty $4"
ulimit -a; ls /proc/self/fd | sort -n | tr '\n' ' '; echo
ls -ln /proc/self/fd/0 /proc/self/fd/1 /proc/self/fd/2 | cut -c1-30
"""

# The two daemons' container names: cgroups are named after them (/default/NAME), so they carry
# the pid, lest two runs of the suite at once share one.
N, R = f"n{os.getpid()}", f"r{os.getpid()}"
CONTAINERS = {
    "plain": ("--security-opt", "seccomp=unconfined"),
    "filtered": (),  # docker's default seccomp profile, as ctrctl gives it
    "filtered-nnp": ("--security-opt", "no-new-privileges", "--user", "1000"),
    "user": (
        "--security-opt", "seccomp=unconfined", "--security-opt", "no-new-privileges",
        "--user", "1000:1000", "-w", "/tmp", "--cap-add", "NET_ADMIN", "--cap-drop", "CHOWN",
        "--ulimit", "nofile=512:1024", "--oom-score-adj", "500", "-e", "FROM_RUN=1",
    ),
    "privileged": ("--privileged",),
}  # fmt: skip
EXECS = {
    "as-is": (),
    "root-in-etc": ("-u", "0", "-w", "/etc", "-e", "EXTRA=x"),
    "nobody": ("-u", "65534:65534"),
    "uid-without-home": ("-u", "4242"),
    "home-given": ("-u", "1000", "-e", "HOME=/given"),
}
FAILURES = (
    ("no-such-command",),
    ("/nonexistent",),
    ("./true",),
    ("/etc/passwd",),
    ("/etc",),
)


def _wrapper(directory: Path) -> Path:
    runc = shutil.which("runc")
    assert runc, "runc is not installed"
    calls = directory / "calls"
    script = directory / "runc"  # the shim does runc's work only for a binary named runc
    script.write_text(
        f'#!/bin/sh\nfor a in "$@"; do [ "$a" = exec ] && echo "$*" >> {calls}; done\n'
        f'exec {runc} "$@"\n'
    )
    script.chmod(0o755)
    return script


def _daemon(make_ctrd, base: Path, native: bool) -> tuple[Ctrd, Path]:
    base.mkdir(parents=True)
    wrapper = _wrapper(base)
    config = base / "ctrd.toml"
    table = f"ctrdx{os.getpid()}{'n' if native else 'r'}"
    config.write_text(
        f'[network]\nnft_table = "{table}"\n'
        f'[runtime]\nbinary = "{wrapper}"\nnative_exec = {"true" if native else "false"}\n'
    )
    daemon = make_ctrd(base)
    daemon.extra_args = ("--config", str(config))
    daemon.nft_table = table
    daemon.start()
    return daemon, base / "calls"


def _ctrctl(daemon: Ctrd, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ctl", "--address", daemon.address, *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def _seen(result: subprocess.CompletedProcess[str], name: str) -> tuple[int, str, str]:
    def clean(text: str) -> str:  # the name, and the hostname made of its first 12
        return text.replace(name, "C").replace(name[:12], "C")

    return result.returncode, clean(result.stdout), clean(result.stderr)


def _in_a_terminal(daemon: Ctrd, name: str) -> tuple[int, str]:
    """`ctrctl exec -it NAME sh` in a pty: what the shell says of its terminal, and the exit."""
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.execv(
            sys.executable,
            [sys.executable, "-m", "ctl", "--address", daemon.address, "exec", "-it", name, "sh"],
        )
    os.write(fd, b"tty; ls -l /proc/self/fd/0 | cut -c1-10; [ -t 0 ] && echo t; exit 3\n")
    out = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    lines = [line.strip() for line in out.decode(errors="replace").splitlines()]
    # (the typed line is echoed once or twice, by timing: only the shell's answers count)
    answers = [line for line in lines if re.fullmatch(r"/dev/pts/\d+|crw\S*|t", line)]
    return os.waitstatus_to_exitcode(status), "\n".join(answers)


@pytest.mark.timeout(300)
def test_the_shims_exec_gives_the_process_runc_gives(make_ctrd, short_tmp, busybox_image):
    native, native_calls = _daemon(make_ctrd, short_tmp / "n", native=True)
    runc, runc_calls = _daemon(make_ctrd, short_tmp / "r", native=False)
    for daemon in (native, runc):
        ref = pull(daemon, busybox_image)
        tag = N if daemon is native else R
        for kind, options in CONTAINERS.items():
            started = _ctrctl(
                daemon, "run", "-d", "--network", "none", "--name", f"{tag}-{kind}",
                *options, ref, "sleep", "1000",
            )  # fmt: skip
            assert started.returncode == 0, started.stderr

    for kind in CONTAINERS:
        for label, options in EXECS.items():
            seen = []
            for daemon, tag in ((native, N), (runc, R)):
                name = f"{tag}-{kind}"
                done = _ctrctl(daemon, "exec", *options, name, "sh", "-c", PROBE)
                seen.append(_seen(done, name))
            assert seen[0] == seen[1], f"{kind} {label}"
            assert seen[0][0] == 0, seen[0]
        for command in FAILURES:
            seen = [
                _seen(_ctrctl(daemon, "exec", f"{tag}-{kind}", *command), f"{tag}-{kind}")
                for daemon, tag in ((native, N), (runc, R))
            ]
            assert seen[0] == seen[1], f"{kind} {command}"
            assert seen[0][0] in (126, 127), seen[0]
        bad_cwd = [
            _seen(_ctrctl(daemon, "exec", "-w", "/nope", f"{tag}-{kind}", "true"), f"{tag}-{kind}")
            for daemon, tag in ((native, N), (runc, R))
        ]
        assert bad_cwd[0] == bad_cwd[1]
        assert "chdir to cwd" in bad_cwd[0][2]
        terminals = [
            _in_a_terminal(daemon, f"{tag}-{kind}") for daemon, tag in ((native, N), (runc, R))
        ]
        assert terminals[0] == terminals[1]
        assert terminals[0][0] == 3
        assert "/dev/pts/" in terminals[0][1], terminals[0]

    # The filters: what runc loaded is one of the programs runc may build (its stub's order
    # is a Go map's), and the shim loaded the one runc builds most often.
    for kind in ("filtered", "filtered-nnp"):
        config = None
        loaded = {}
        for daemon, tag in ((native, N), (runc, R)):
            name = f"{tag}-{kind}"
            state = daemon.state / "runc" / "default" / name / "state.json"
            config = json.loads(state.read_text())["config"]["seccomp"]
            pid = _background_sleep(daemon, name)
            try:
                loaded[tag] = _filters(pid)
                # joined every cgroup of the init's, v1 and v2 (as the host sees it)
                init = json.loads(state.read_text())["init_process_pid"]
                cgroups = Path(f"/proc/{pid}/cgroup").read_text()
                assert cgroups == Path(f"/proc/{init}/cgroup").read_text()
                assert f"0::/default/{name}\n" in cgroups, cgroups
            finally:
                os.kill(pid, signal.SIGKILL)
        assert config is not None
        possible = runcseccomp.variants(config)
        assert len(loaded[R]) == 1, "runc's exec has one filter"
        assert loaded[R][0] in possible
        assert loaded[N] == [runcseccomp.program(config)]
        assert loaded[N][0] in possible
    # Every exec of the native daemon was the shim's; the other daemon's all runc's.
    assert not native_calls.exists(), native_calls.read_text()
    runc_execs = runc_calls.read_text().splitlines()
    assert len(runc_execs) > len(CONTAINERS) * (len(EXECS) + len(FAILURES) + 2), len(runc_execs)


def _background_sleep(daemon: Ctrd, name: str) -> int:
    """The host pid of a `sleep 1001` an exec into `name` leaves running."""
    done = _ctrctl(daemon, "exec", name, "sh", "-c", "sleep 1001 >/dev/null 2>&1 &")
    assert done.returncode == 0, done.stderr
    init = json.loads((daemon.state / "runc" / "default" / name / "state.json").read_text())
    ns = os.readlink(f"/proc/{init['init_process_pid']}/ns/pid")
    for _ in range(100):
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                    same = os.readlink(f"/proc/{entry}/ns/pid") == ns
                except OSError:
                    continue
                if same and cmdline == b"sleep\x001001\x00":
                    return int(entry)
        time.sleep(0.05)
    raise AssertionError(f"no sleep 1001 in {name}")


def _filters(pid: int) -> list[bytes]:
    """A process's seccomp programs, newest first (PTRACE_SECCOMP_GET_FILTER: the test runs
    as root, not under seccomp itself)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.restype = ctypes.c_long
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    seize, interrupt, detach, get_filter = 0x4206, 0x4207, 17, 0x420C

    def check(result: int) -> int:
        if result < 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        return result

    check(libc.ptrace(seize, pid, None, None))
    try:
        check(libc.ptrace(interrupt, pid, None, None))
        os.waitpid(pid, 0x40000000)  # __WALL: the tracee's stop
        out = []
        for index in itertools.count():
            count = libc.ptrace(get_filter, pid, ctypes.c_void_p(index), None)
            if count < 0 and ctypes.get_errno() == errno.ENOENT:
                return out
            buffer = ctypes.create_string_buffer(8 * check(count))
            check(libc.ptrace(get_filter, pid, ctypes.c_void_p(index), buffer))
            out.append(buffer.raw)
        return out
    finally:
        libc.ptrace(detach, pid, None, None)


def test_shims_run_from_a_sealed_copy_of_the_interpreter(ctrd, busybox_image):
    """runc's answer to CVE-2019-5736, kept by the shim that execs into containers: its
    /proc/PID/exe is a memfd nobody can write, not the host's python."""
    ref = pull(ctrd, busybox_image)
    assert _ctrctl(ctrd, "run", "-d", "--network", "none", "--name", "s", ref,
                   "sleep", "1000").returncode == 0  # fmt: skip
    shim = int((Path(ctrd.state) / "tasks" / "default" / "s" / "shim.pid").read_text())
    assert os.readlink(f"/proc/{shim}/exe").startswith("/memfd:")
    fd = os.open(f"/proc/{shim}/exe", os.O_RDONLY)
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    finally:
        os.close(fd)
    # (a write while it runs is ETXTBSY anyway; the seals stop the one after it exits)
    for seal in (fcntl.F_SEAL_WRITE, fcntl.F_SEAL_GROW, fcntl.F_SEAL_SHRINK, fcntl.F_SEAL_SEAL):
        assert seals & seal, (seals, seal)


FORK_PROBE = r"""
import os, sys
from shim import nsexec

def born_where(fd):
    r, w = os.pipe()
    pid, born = nsexec._fork(nsexec._c(), fd)
    if pid == 0:
        line = [l for l in open("/proc/self/cgroup").read().splitlines() if l.startswith("0::")]
        os.write(w, line[0].encode())
        os._exit(0)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return born, os.read(r, 4096).decode()

target, v1 = sys.argv[1], sys.argv[2]
fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
print(*born_where(fd))
wrong = os.open(v1, os.O_RDONLY | os.O_DIRECTORY)  # not a cgroup2 directory: refused
print(*born_where(wrong), nsexec._clone3)
nsexec._clone3 = False  # a kernel without clone3
print(*born_where(fd))
"""


def test_exec_children_are_born_in_the_cgroup2_cgroup(short_tmp):
    """The fork of the shim's exec: born in the container's cgroup2 cgroup by clone3 (no
    migration, no wait for the global lock), and a plain fork when clone3 cannot."""
    mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    root = next(line.split()[4] for line in mounts if " - cgroup2 " in line)
    v1 = next((line.split()[4] for line in mounts if " - cgroup " in line), "/proc")
    own = next(line for line in Path("/proc/self/cgroup").read_text().splitlines()
               if line.startswith("0::"))[3:]  # fmt: skip
    name = f"ctrd-born-{os.getpid()}"
    target = Path(root) / name
    target.mkdir()
    try:
        out = subprocess.run(
            [sys.executable, "-c", FORK_PROBE, str(target), v1],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout.splitlines()  # fmt: skip
    finally:
        target.rmdir()
    assert out[0] == f"True 0::/{name}", out
    assert out[1] == f"False 0::{own} True", out  # refused: the plain fork, clone3 kept
    assert out[2] == f"False 0::{own}", out
