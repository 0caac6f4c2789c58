"""An exec into a running container done by the shim itself: what `runc exec` does, from the
same inputs (runc's `state.json` for the container, the OCI process of the exec).

`runc exec` costs ~22 ms here: two Go programs start (runc, then `runc init`, which first
copies runc's 8.7 MB binary into a memfd). The same steps from a fork of the shim take ~3 ms,
which is most of what a `crictl exec` or a kubelet exec probe waits for in the runtime.

The steps, in the order of runc 1.1's `setnsProcess` and `linuxSetnsInit`:

1. In the shim (`plan`): everything read from the host. The container's namespaces are opened
   by their /proc paths and the init is checked to be the same process afterwards; its cgroups,
   rlimits, oom_score_adj, the process's user and capabilities are read. A container the plan
   does not cover is left to runc (`Unsupported`): a user namespace, an AppArmor or SELinux
   label, Intel RDT, systemd cgroups, an invalid process (runc words the error), an init that
   is gone, a seccomp filter `shim.runcseccomp` cannot rebuild exactly as runc would, or a
   shim whose own executable is not a sealed copy (below). A seccomp filter is rebuilt here,
   byte for byte runc's, once per container.
2. One fork, born in the container's PID namespace: the shim enters it for its children only
   (setns of the PID namespace), forks, and returns to its own at once, so no middle process
   is needed. The child: stdio on 0-2, not dumpable (nothing in the container may open its
   memory, its fds or /proc/PID/exe), every other fd of the shim closed, the container's
   oom_score_adj and rlimits, its cgroups, then setns into the other namespaces (joining the
   mount namespace makes / and the cwd the container's). The cgroups are joined without the
   kernel's global migration lock, whose first taking after a quiet moment waits for an RCU
   grace period (5-30 ms here; runc 1.1 pays it on every exec): the child is born in the
   cgroup2 one by clone3's CLONE_INTO_CGROUP (as runc 1.2 does), and moves itself into each
   cgroup v1 one by writing 0 to `tasks` (a thread moving itself takes no global lock; the
   child has one thread, so that moves the process). Without clone3 it writes cgroup.procs.
3. Then, as runc's init for an exec (Debian's 1.1.5, with the CVE-2024-21626 backport's
   order): a new session; a terminal made in the container's devpts, its master sent to the
   shim's console socket; the container's session keyring; no_new_privs; the seccomp filter
   here when the process has no no_new_privs (loading one then needs the root it still is),
   else just before the execve; the bounding set; groups, gid and uid, keeping the
   capabilities across; HOME from the container's /etc/passwd when the env has none, as runc;
   stdio owned by the user; the cwd; the capabilities; signals back to their defaults; every
   fd above 2 closed at exec;
   execve of the program found as Go's exec.LookPath finds it.

Failures come back on a close-on-exec pipe in runc's words, so clients read what they read from
runc (`exec: "x": executable file not found in $PATH`); EOF alone means it exec'd.

Safety, as runc's (CVE-2019-5736): a process that joins a container must not let the container
reach a host binary through /proc/PID/exe, not even by exec'ing a file whose interpreter is
`/proc/self/exe`. runc runs from a sealed memfd copy of itself; a shim does too: the zygote is
started from a sealed memfd copy of the interpreter (`supervisor.runtime.manager`), and a shim
whose /proc/self/exe is not sealed against writes leaves exec to runc. In the container's mount
namespace Python runs only from the setns to the execve, with every module imported and every C
function resolved beforehand and the collector off: the only files opened there are the
container's /etc/passwd (non-blocking, a regular file, bounded), /dev/null and /dev/ptmx.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import gc
import json
import os
import resource
import signal
import socket
import stat
import struct
import termios
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shim import runcseccomp
from shim.capnames import CAPABILITIES

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_INTO_CGROUP = 0x200000000
SYS_CLONE3 = 435  # the same number on every architecture
# Joined in runc's order (orderNamespacePaths); a user namespace is left to runc.
NAMESPACES = (
    ("NEWIPC", CLONE_NEWIPC),
    ("NEWUTS", CLONE_NEWUTS),
    ("NEWNET", CLONE_NEWNET),
    ("NEWPID", CLONE_NEWPID),
    ("NEWNS", CLONE_NEWNS),
    ("NEWCGROUP", CLONE_NEWCGROUP),
)

PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4
LINUX_CAPABILITY_VERSION_3 = 0x20080522
KEYCTL_JOIN_SESSION_KEYRING = 1
SYS_KEYCTL = {"x86_64": 250, "aarch64": 219}
CLOSE_RANGE_CLOEXEC = 4
TIOCSPTLCK = 0x40045431
TIOCGPTPEER = 0x5441
TIOCSCTTY = 0x540E
PASSWD_LIMIT = 1 << 20  # of the container's /etc/passwd read for HOME

# The OCI's rlimit names, by their Linux numbers (Python's resource module lacks some).
RLIMITS = {
    name: number
    for number, name in enumerate((
        "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_DATA", "RLIMIT_STACK", "RLIMIT_CORE",
        "RLIMIT_RSS", "RLIMIT_NPROC", "RLIMIT_NOFILE", "RLIMIT_MEMLOCK", "RLIMIT_AS",
        "RLIMIT_LOCKS", "RLIMIT_SIGPENDING", "RLIMIT_MSGQUEUE", "RLIMIT_NICE",
        "RLIMIT_RTPRIO", "RLIMIT_RTTIME",
    ))
}  # fmt: skip
CAPABILITY_NUMBERS = {name: number for number, name in enumerate(CAPABILITIES)}
CAP_KINDS = ("bounding", "effective", "permitted", "inheritable", "ambient")


class Unsupported(Exception):
    """This exec is left to the runtime's own command; the message says why."""


class ExecFailed(Exception):
    """The process did not start; the message is what runc would have said."""


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class _CloneArgs(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in ("flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack",
                     "stack_size", "tls", "set_tid", "set_tid_size", "cgroup")
    ]  # fmt: skip


class _Libc:
    """The C functions the forked processes call, resolved once, before any fork."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        # clone3 with the GIL held throughout, as os.fork holds it (a PyDLL call keeps it)
        self.clone3 = ctypes.PyDLL(None, use_errno=True).syscall
        self.clone3.restype = ctypes.c_long
        self.clone3.argtypes = [ctypes.c_long, ctypes.c_void_p, ctypes.c_size_t]
        self.before_fork = ctypes.pythonapi.PyOS_BeforeFork
        self.after_fork_child = ctypes.pythonapi.PyOS_AfterFork_Child
        self.after_fork_parent = ctypes.pythonapi.PyOS_AfterFork_Parent
        self.setns = libc.setns
        self.prctl = libc.prctl
        self.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                               ctypes.c_ulong]  # fmt: skip
        self.capset = libc.capset
        self.syscall = libc.syscall
        self.close_range = libc.close_range
        self.close_range.argtypes = [ctypes.c_uint, ctypes.c_uint, ctypes.c_int]

    def check(self, result: int, what: str) -> int:
        if result < 0:
            e = ctypes.get_errno()
            raise ExecFailed(f"{what}: {_go_strerror(e)}")
        return result


_libc: _Libc | None = None


def _c() -> _Libc:
    global _libc
    if _libc is None:
        _libc = _Libc()
    return _libc


@dataclass
class Plan:
    """What the forked processes need, all read from the host beforehand."""

    namespaces: list[tuple[int, int]]  # (fd, CLONE_NEW*)
    cgroup_tasks: list[str]  # the `tasks` files of its cgroup v1 hierarchies
    cgroup2: str | None  # its cgroup2 directory (hybrid or unified hosts)
    oom_score_adj: int | None
    rlimits: list[tuple[int, int, int]]
    args: list[str]
    env: list[str]
    cwd: str
    terminal: bool
    console_size: tuple[int, int] | None  # (height, width): the pty's from the start
    uid: int
    gid: int
    groups: list[int]
    caps: dict[str, int]  # kind -> bits
    no_new_privileges: bool
    keyring: bytes | None
    last_cap: int
    keyctl: int
    seccomp: bytes | None = None  # runc's filter for the container (shim.runcseccomp)
    fds: list[int] = field(default_factory=list)  # to close once forked
    fprog: Any = None  # the filter as a struct sock_fprog, made before the fork
    cgroup2_fd: int | None = None  # the cgroup2 directory, open for CLONE_INTO_CGROUP

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()


_sealed: bool | None = None


def self_sealed() -> bool:
    """Whether this process runs from an executable nothing can write (a sealed memfd)."""
    global _sealed
    if _sealed is None:
        try:
            fd = os.open("/proc/self/exe", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            _sealed = False
        else:
            try:
                _sealed = bool(fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_WRITE)
            except OSError:  # not a memfd
                _sealed = False
            finally:
                os.close(fd)
    return _sealed


def plan(
    cid: str,
    state: dict[str, Any],
    process: dict[str, Any],
    alive: Callable[[int, int], bool],
    runtime: str = "runc",
) -> Plan:
    """The plan of an exec of `process` into the container whose runc state is `state`;
    Unsupported when it is runc's to do. `alive(pid, start)`: whether the init still runs;
    `runtime` the runc binary (its version decides whether its seccomp filter is rebuilt)."""
    if not self_sealed():
        raise Unsupported("the shim does not run from a sealed executable")
    keyctl = SYS_KEYCTL.get(os.uname().machine)
    if keyctl is None:
        raise Unsupported("an architecture this exec does not know")
    try:
        config = state["config"]
        kinds = {ns["type"] for ns in config.get("namespaces") or []}
        seccomp = None
        if config.get("seccomp"):
            try:
                runcseccomp.check_runc(runtime)
                seccomp = runcseccomp.program(config["seccomp"])
            except runcseccomp.Unsupported as e:
                raise Unsupported(f"a seccomp filter: {e}") from None
        if kinds - {kind for kind, _ in NAMESPACES}:
            raise Unsupported("a user or time namespace")
        if config.get("apparmor_profile") or process.get("apparmorProfile"):
            raise Unsupported("an AppArmor profile")
        if config.get("process_label") or process.get("selinuxLabel"):
            raise Unsupported("an SELinux label")
        if config.get("intel_rdt") or state.get("intel_rdt_path") or state.get("rootless"):
            raise Unsupported("Intel RDT or a rootless container")
        if (config.get("cgroups") or {}).get("systemd"):
            raise Unsupported("systemd cgroups")
        args = process.get("args") or []
        cwd = process.get("cwd") or ""
        if not args or not cwd.startswith("/"):
            raise Unsupported("an invalid process, which runc words")
        user = process.get("user") or {}
        init = int(state["init_process_pid"])
        started = int(state["init_process_start"])
        limits = _rlimits(process.get("rlimits"), config.get("rlimits"))
        caps = _caps(process.get("capabilities") or _config_caps(config))
        namespace_paths = state.get("namespace_paths") or {}
        cgroup_paths = state.get("cgroup_paths") or {}
        cgroup_v1 = sorted({path for kind, path in cgroup_paths.items() if kind and path})
        oom = config.get("oom_score_adj")
        result = Plan(
            namespaces=[],
            cgroup_tasks=[os.path.join(path, "tasks") for path in cgroup_v1],
            cgroup2=cgroup_paths.get("") or None,
            oom_score_adj=None if oom is None else int(oom),
            rlimits=limits,
            args=[str(a) for a in args],
            env=[str(e) for e in process.get("env") or []],
            cwd=cwd,
            terminal=bool(process.get("terminal")),
            console_size=_console_size(process.get("consoleSize")),
            uid=int(user.get("uid") or 0),
            gid=int(user.get("gid") or 0),
            groups=[int(g) for g in user.get("additionalGids") or []],
            caps=caps,
            no_new_privileges=bool(process.get("noNewPrivileges")),
            keyring=None if config.get("no_new_keyring") else f"_ses.{cid}".encode(),
            last_cap=_last_cap(),
            keyctl=keyctl,
            seccomp=seccomp,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise Unsupported(f"a state or process this exec does not read: {e!r}") from None
    result.cgroup_tasks = [path for path in result.cgroup_tasks if os.path.exists(path)]
    try:
        if result.cgroup2 is not None:
            try:
                fd = os.open(result.cgroup2, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except FileNotFoundError:
                result.cgroup2 = None
            else:
                result.fds.append(fd)
                result.cgroup2_fd = fd
        for kind, flag in NAMESPACES:
            if kind in kinds:
                fd = os.open(namespace_paths[kind], os.O_RDONLY | os.O_CLOEXEC)
                result.fds.append(fd)
                result.namespaces.append((fd, flag))
        if not alive(init, started):  # the namespaces opened must be that init's
            raise Unsupported("the container's init is gone")
    except (OSError, KeyError):
        result.close()
        raise Unsupported("the container's namespaces are gone") from None
    except BaseException:
        result.close()
        raise
    return result


def start(plan: Plan, stdio: tuple[int, int, int], console_socket: str) -> int:
    """Start the planned process; its pid. ExecFailed in runc's words if it did not start."""
    c = _c()
    buffer = None
    if plan.seccomp is not None:
        buffer = ctypes.create_string_buffer(plan.seccomp, len(plan.seccomp))
        plan.fprog = _SockFprog(len(plan.seccomp) // 8, ctypes.addressof(buffer))
    pid_ns = next((fd for fd, flag in plan.namespaces if flag == CLONE_NEWPID), None)
    errors_r, errors_w = os.pipe2(os.O_CLOEXEC)
    console = None
    try:
        if plan.terminal:
            console = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            console.connect(console_socket)
        own_pid_ns = _own_pid_namespace() if pid_ns is not None else None
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            if pid_ns is not None:  # for the child only: the shim stays where it is
                c.check(c.setns(pid_ns, CLONE_NEWPID), "nsenter: failed to setns to the PID ns")
            try:
                pid, born_in_cgroup2 = _fork(c, plan.cgroup2_fd)
                if pid == 0:
                    if born_in_cgroup2:
                        plan.cgroup2 = None
                    _child(c, plan, stdio, errors_w, console)  # never returns
            finally:
                if own_pid_ns is not None:
                    c.check(c.setns(own_pid_ns, CLONE_NEWPID), "setns back to the shim's PID ns")
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    finally:
        os.close(errors_w)
        if console is not None:
            console.close()
        plan.close()
    try:
        report = b""
        while chunk := os.read(errors_r, 65536):  # EOF: it exec'd (or died on its way)
            report += chunk
    finally:
        os.close(errors_r)
    if report.startswith(b"E"):
        raise ExecFailed(report[1:].rstrip(b"\0").decode(errors="replace"))
    return pid


_clone3 = True  # until the kernel says it has none


def _fork(c: _Libc, cgroup2: int | None) -> tuple[int, bool]:
    """os.fork, the child born in the cgroup2 directory `cgroup2` when clone3 can do that:
    (pid, whether it was). The shim has one thread, so a clone3 made here is as safe as a fork
    (no lock of another thread's to inherit held); Python's own fork steps run around it."""
    global _clone3
    if cgroup2 is None or not _clone3:
        return os.fork(), False
    args = _CloneArgs(flags=CLONE_INTO_CGROUP, exit_signal=signal.SIGCHLD, cgroup=cgroup2)
    c.before_fork()
    pid = c.clone3(SYS_CLONE3, ctypes.addressof(args), ctypes.sizeof(args))
    if pid == 0:
        c.after_fork_child()
        return 0, True
    c.after_fork_parent()
    if pid > 0:
        return pid, True
    if ctypes.get_errno() in (errno.ENOSYS, errno.E2BIG, errno.EINVAL):  # no such clone3
        _clone3 = False
    return os.fork(), False  # a cgroup clone3 refused: the child's write words the error


_pid_ns: int | None = None


def _own_pid_namespace() -> int:
    """An fd of the shim's own PID namespace, to return its children's to (kept open)."""
    global _pid_ns
    if _pid_ns is None:
        _pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    return _pid_ns


# -- in the forked process: no imports, no host files after the setns ------------------------


def _child(
    c: _Libc,
    plan: Plan,
    stdio: tuple[int, int, int],
    report: int,
    console: socket.socket | None,
) -> None:
    """Born in the container's PID namespace; joins the rest, then becomes the process."""
    gc.disable()
    try:
        high = [os.dup(fd) for fd in stdio]
        for target, fd in enumerate(high):
            os.dup2(fd, target)
        for fd in high:
            if fd > 2:
                os.close(fd)
        c.check(c.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl")
        # Nothing of the shim's goes into the container: every fd but stdio, the report, the
        # console's socket and the namespaces is closed before the first setns.
        keep = [report, *(fd for fd, _ in plan.namespaces)]
        if console is not None:
            keep.append(console.fileno())
        low = 3
        for fd in sorted(keep):
            if fd > low:
                c.check(c.close_range(low, fd - 1, 0), "error closing fds")
            low = max(low, fd + 1)
        c.check(c.close_range(low, 0xFFFFFFFF, 0), "error closing fds")
        if plan.oom_score_adj is not None:
            _write("/proc/self/oom_score_adj", str(plan.oom_score_adj).encode())
        for kind, soft, hard in plan.rlimits:
            resource.setrlimit(kind, (soft, hard))
        for tasks in plan.cgroup_tasks:
            _write(tasks, b"0")  # 0: the writer, its one thread
        if plan.cgroup2 is not None:  # not born there
            _write(os.path.join(plan.cgroup2, "cgroup.procs"), b"0")
        for fd, flag in plan.namespaces:
            if flag != CLONE_NEWPID:  # born there
                c.check(c.setns(fd, flag), f"nsenter: failed to setns to fd {fd}")
            os.close(fd)
    except BaseException as e:
        _fail(report, e)
    _process(c, plan, report, console)


def _process(c: _Libc, plan: Plan, report: int, console: socket.socket | None) -> None:
    try:
        os.setsid()
        if console is not None:
            _terminal(console, plan.console_size)
        if plan.keyring is not None:
            result = c.syscall(plan.keyctl, KEYCTL_JOIN_SESSION_KEYRING, plan.keyring)
            if result < 0 and ctypes.get_errno() != errno.ENOSYS:
                c.check(result, "unable to join session keyring")
        if plan.no_new_privileges:
            c.check(c.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl")
        c.check(c.close_range(3, 0xFFFFFFFF, CLOSE_RANGE_CLOEXEC), "error closing exec fds")
        if plan.fprog is not None and not plan.no_new_privileges:
            _load_seccomp(c, plan)  # runc's early load: still root, CAP_SYS_ADMIN needed
        env = list(plan.env)
        if not any(e.startswith("HOME=") for e in env):
            env.append("HOME=" + _home(plan.uid))
        _own_stdio(plan.uid)
        chdir_later = False
        try:
            os.chdir(plan.cwd)
        except PermissionError:  # perhaps the user may: again once it is the user
            chdir_later = True
        except OSError as e:
            raise ExecFailed(_chdir_error(plan.cwd, e)) from None
        bounding = plan.caps["bounding"]
        for cap in range(plan.last_cap + 1):
            if not bounding >> cap & 1:
                c.check(c.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), "prctl")
        c.check(c.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0), "prctl")
        os.setgroups(plan.groups)
        os.setgid(plan.gid)
        os.setuid(plan.uid)
        if chdir_later:
            try:
                os.chdir(plan.cwd)
            except OSError as e:
                raise ExecFailed(_chdir_error(plan.cwd, e)) from None
        c.check(c.prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0), "prctl")
        _capset(c, plan.caps)
        c.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
        for cap in range(plan.last_cap + 1):
            if plan.caps["ambient"] >> cap & 1:
                c.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0)
        path = _look_path(plan.args[0], env)
        for sig in signal.valid_signals():  # those the shim set (Python knows them all)
            if signal.getsignal(sig) != signal.SIG_DFL:
                with contextlib.suppress(OSError, ValueError):
                    signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        environ = _environ(env)
        if plan.fprog is not None and plan.no_new_privileges:
            _load_seccomp(c, plan)  # as late as runc: only the execve runs under it
        try:
            os.execve(path, plan.args, environ)
        except OSError as e:
            raise ExecFailed(f"exec {path}: {_go_strerror(e.errno)}") from None
    except BaseException as e:
        _fail(report, e)


def _load_seccomp(c: _Libc, plan: Plan) -> None:
    """The filter, loaded as runc loads it: prctl(PR_SET_SECCOMP), no flags."""
    if c.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(plan.fprog), 0, 0) < 0:
        why = _go_strerror(ctypes.get_errno())
        message = f"error loading seccomp filter into kernel: error loading seccomp filter: {why}"
        if plan.no_new_privileges:
            message = f"unable to init seccomp: {message}"
        raise ExecFailed(message)


def _terminal(console: socket.socket, size: tuple[int, int] | None) -> None:
    """A pty in the container's devpts, of the process's console size if it has one: the
    master to the shim, the peer as stdio and the controlling terminal (runc's setupConsole
    and Setctty)."""
    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(master, TIOCSPTLCK, b"\0\0\0\0")
        peer = fcntl.ioctl(master, TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY)
        if size is not None:
            fcntl.ioctl(peer, termios.TIOCSWINSZ, struct.pack("HHHH", *size, 0, 0))
        socket.send_fds(console, [b"/dev/ptmx"], [master])
    finally:
        os.close(master)
        console.close()
    for target in (0, 1, 2):
        os.dup2(peer, target)
    os.close(peer)
    fcntl.ioctl(0, TIOCSCTTY, 0)


def _home(uid: int) -> str:
    """The user's home in the container's /etc/passwd, else "/" (runc's GetExecUser)."""
    try:
        fd = os.open("/etc/passwd", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return "/"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return "/"
        data = os.read(fd, PASSWD_LIMIT)
    finally:
        os.close(fd)
    for line in data.decode(errors="replace").splitlines():
        fields = line.strip().split(":")
        if len(fields) >= 6 and fields[2].strip() == str(uid):
            return fields[5]
    return "/"


def _own_stdio(uid: int) -> None:
    """runc's fixStdioPermissions: stdio that is not /dev/null becomes the user's."""
    try:
        null = os.stat("/dev/null").st_rdev
    except OSError as e:
        raise ExecFailed(f"stat /dev/null: {_go_strerror(e.errno)}") from None
    for fd in (0, 1, 2):
        st = os.fstat(fd)
        if st.st_uid == uid or (st.st_rdev and st.st_rdev == null):
            continue
        try:
            os.fchown(fd, uid, -1)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.EPERM, errno.EROFS):
                raise


def _capset(c: _Libc, caps: dict[str, int]) -> None:
    header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for word in (0, 1):
        data[word].effective = caps["effective"] >> (32 * word) & 0xFFFFFFFF
        data[word].permitted = caps["permitted"] >> (32 * word) & 0xFFFFFFFF
        data[word].inheritable = caps["inheritable"] >> (32 * word) & 0xFFFFFFFF
    c.check(c.capset(ctypes.byref(header), data), "capset")


def _look_path(name: str, env: list[str]) -> str:
    """Go 1.19's exec.LookPath over the process's PATH, with its errors."""
    if "/" in name:
        _executable(name, name)
        return name
    path = next((e[5:] for e in reversed(env) if e.startswith("PATH=")), "")
    for directory in path.split(":") if path else []:
        candidate = os.path.join(directory or ".", name)
        try:
            _executable(candidate, name)
        except ExecFailed:
            continue
        if not candidate.startswith("/"):
            raise ExecFailed(
                f"exec: {_quote(name)}: cannot run executable found relative to current directory"
            )
        return candidate
    raise ExecFailed(f"exec: {_quote(name)}: executable file not found in $PATH")


def _executable(path: str, name: str) -> None:
    try:
        st = os.stat(path)
    except OSError as e:
        raise ExecFailed(f"exec: {_quote(name)}: stat {path}: {_go_strerror(e.errno)}") from None
    if stat.S_ISDIR(st.st_mode) or not st.st_mode & 0o111:
        raise ExecFailed(f"exec: {_quote(name)}: permission denied")


def _environ(env: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for entry in env:
        key, sep, value = entry.partition("=")
        if sep:
            out[key] = value
    return out


def _chdir_error(cwd: str, e: OSError) -> str:
    return f"chdir to cwd ({_quote(cwd)}) set in config.json failed: {_go_strerror(e.errno)}"


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _fail(report: int, e: BaseException) -> None:
    if isinstance(e, ExecFailed):
        message = str(e)
    elif isinstance(e, OSError):
        where = f" {e.filename}" if e.filename else ""
        message = f"{type(e).__name__}{where}: {_go_strerror(e.errno)}"
    else:
        message = repr(e)
    try:
        os.write(report, b"E" + message.encode(errors="replace") + b"\0")
    finally:
        os._exit(1)


# -- read in the shim ---------------------------------------------------------------------


def _go_strerror(number: int | None) -> str:
    """An errno as Go prints it (glibc's text, lower-cased first letter)."""
    text = os.strerror(number or 0)
    return text[:1].lower() + text[1:]


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _rlimits(
    process: list[dict[str, Any]] | None, config: list[dict[str, Any]] | None
) -> list[tuple[int, int, int]]:
    """The process's rlimits (OCI names), else the container's (runc's numbers)."""
    if process:
        out = []
        for limit in process:
            kind = RLIMITS.get(limit["type"])
            if kind is None:
                raise Unsupported(f"an rlimit this exec does not know: {limit['type']}")
            out.append((kind, int(limit["soft"]), int(limit["hard"])))
        return out
    return [(int(r["type"]), int(r["soft"]), int(r["hard"])) for r in config or []]


def _console_size(size: Any) -> tuple[int, int] | None:
    """The OCI process's consoleSize as (rows, columns), if it has a usable one."""
    if not isinstance(size, dict):
        return None
    height, width = size.get("height"), size.get("width")
    if isinstance(height, int) and isinstance(width, int) and 0 < height < 65536 > width > 0:
        return height, width
    return None


def _config_caps(config: dict[str, Any]) -> dict[str, list[str]]:
    caps = config.get("capabilities") or {}
    return {kind: caps.get(kind.capitalize()) or [] for kind in CAP_KINDS}


def _caps(caps: dict[str, list[str]]) -> dict[str, int]:
    """Each kind's names as bits; names this kernel or table lacks are left out, as runc
    ignores them."""
    last = _last_cap()
    out = {}
    for kind in CAP_KINDS:
        bits = 0
        for name in caps.get(kind) or []:
            number = CAPABILITY_NUMBERS.get(name, last + 1)
            if number <= last:
                bits |= 1 << number
        out[kind] = bits
    return out


_cap_last: int | None = None


def _last_cap() -> int:
    global _cap_last
    if _cap_last is None:
        try:
            with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
                _cap_last = int(f.read())
        except (OSError, ValueError):
            _cap_last = len(CAPABILITIES) - 1
    return _cap_last
