"""Seccomp profiles: ctrd's default one, docker's profile format, and the OCI `linux.seccomp`.

A profile here is what docker's `--security-opt seccomp=FILE` takes (moby's `types.Seccomp`):
a default action, the architectures (`architectures`, or an `archMap` from a native
architecture to the ones it also runs), and rules, each a set of syscall names with an action,
optional argument conditions, and `includes`/`excludes` that make the rule count only for a
container with (or without) some capabilities, on some architectures (Go's names: amd64,
arm64, ...), or from a kernel version on. `to_oci` resolves those conditions for one container
(its bounding capabilities), one machine and one kernel into the plain OCI form runc takes,
as dockerd does when it starts a container. `parse` reads a profile from decoded JSON with
docker's words for what it refuses.

`DEFAULT` is ctrd's default profile: Docker Engine's policy in substance, its data written
here, grouped by what the calls are for. Everything not listed fails with EPERM
(SCMP_ACT_ERRNO, errno 1); the lists allow what ordinary programs need, and keep out what
reaches past the container: namespaces and mounts (unshare, setns, mount, clone with namespace
flags: only with CAP_SYS_ADMIN), the kernel's keyring (add_key, keyctl, request_key: never),
modules, reboot, the clock, tracing other processes (with the capability that governs each),
`personality` but for its harmless values, io_uring (a kernel surface of its own that
seccomp cannot see into), and sockets of the kernel's crypto (AF_ALG) and vsock families.
clone3 answers ENOSYS without CAP_SYS_ADMIN (its flags are behind a pointer a filter cannot
read), so that libc falls back to clone, whose flags are checked. ctrctl applies it to every
container it makes (as dockerd does) and the CRI's `RuntimeDefault` is meant to be the same
profile.

runc skips names its libseccomp does not know on the running architecture (chown32 on
x86_64, arch_prctl on arm64...), so one list serves every architecture.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from itertools import repeat
from typing import Any, NamedTuple

ALLOW = "SCMP_ACT_ALLOW"
ERRNO = "SCMP_ACT_ERRNO"
EPERM = 1
ENOSYS = 38
AF_ALG = 38
AF_VSOCK = 40  # AF_ALG + 2: AF_NFC (39) between them is allowed
ACTIONS = frozenset(
    {ALLOW, ERRNO, "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD",
     "SCMP_ACT_TRAP", "SCMP_ACT_TRACE", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY"}
)  # fmt: skip
OPERATORS = frozenset(
    {"SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT",
     "SCMP_CMP_MASKED_EQ"}
)  # fmt: skip

# The kernel's machine name (uname -m) -> Go's GOARCH, the names profiles use in their rules.
GO_ARCHES = {
    "x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm", "armv8l": "arm",
    "i686": "386", "i386": "386", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64",
    "mips64": "mips64", "mips64el": "mips64le",
}  # fmt: skip
# GOARCH -> the seccomp architecture of its native calls (an archMap's key).
SECCOMP_ARCHES = {
    "amd64": "SCMP_ARCH_X86_64", "arm64": "SCMP_ARCH_AARCH64", "arm": "SCMP_ARCH_ARM",
    "386": "SCMP_ARCH_X86", "ppc64le": "SCMP_ARCH_PPC64LE", "s390x": "SCMP_ARCH_S390X",
    "riscv64": "SCMP_ARCH_RISCV64", "mips64": "SCMP_ARCH_MIPS64",
    "mips64le": "SCMP_ARCH_MIPSEL64",
}  # fmt: skip

# clone's namespace flags: CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET.
CLONE_NAMESPACE_FLAGS = (
    0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
)
# personality(2) values a program may set: PER_LINUX, PER_LINUX32, UNAME26, both, and
# 0xffffffff, which only asks for the current one.
PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)


class ProfileError(ValueError):
    """A profile that makes no filter, in docker's words where docker refuses it."""


class Arg(NamedTuple):
    """A condition on argument number `position` (OCI's LinuxSeccompArg, whose `index` it is)."""

    position: int
    value: int
    op: str
    value_two: int = 0

    def to_oci(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.position, "value": self.value}
        if self.value_two:
            out["valueTwo"] = self.value_two
        out["op"] = self.op
        return out


class Filter(NamedTuple):
    """docker's `includes`/`excludes`: architectures (GOARCH), capabilities, a kernel."""

    arches: tuple[str, ...] = ()
    caps: tuple[str, ...] = ()
    min_kernel: tuple[int, int] | None = None

    def empty(self) -> bool:
        return not (self.arches or self.caps or self.min_kernel)


class Rule(NamedTuple):
    """Syscalls `names` get `action` (with `errno`), when `args` all hold; the rule counts
    for a container that `includes` describes and `excludes` does not."""

    names: tuple[str, ...]
    action: str = ALLOW
    errno: int | None = None
    args: tuple[Arg, ...] = ()
    includes: Filter = Filter()
    excludes: Filter = Filter()


class Profile(NamedTuple):
    default_action: str
    default_errno: int | None = None
    architectures: tuple[str, ...] = ()
    # native seccomp architecture -> the others its machine runs (x86_64 -> x86, x32)
    arch_map: tuple[tuple[str, tuple[str, ...]], ...] = ()
    rules: tuple[Rule, ...] = ()
    flags: tuple[str, ...] = ()


# --- the default profile: what a container may call --------------------------------------------


def _names(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# Files, directories, links, attributes, descriptors.
_FILES = _names("""
    open openat openat2 creat close close_range read readv pread64 preadv preadv2
    write writev pwrite64 pwritev pwritev2 lseek _llseek readahead
    dup dup2 dup3 fcntl fcntl64 flock ioctl
    stat stat64 lstat lstat64 fstat fstat64 fstatat64 newfstatat statx
    statfs statfs64 fstatfs fstatfs64
    access faccessat faccessat2 chdir fchdir getcwd umask
    mkdir mkdirat mknod mknodat rmdir rename renameat renameat2
    link linkat symlink symlinkat unlink unlinkat readlink readlinkat
    getdents getdents64 name_to_handle_at
    chmod fchmod fchmodat chown chown32 fchown fchown32 fchownat lchown lchown32
    truncate truncate64 ftruncate ftruncate64 fallocate fadvise64 fadvise64_64
    fsync fdatasync sync syncfs sync_file_range
    utime utimes utimensat utimensat_time64 futimesat
    getxattr lgetxattr fgetxattr getxattrat setxattr lsetxattr fsetxattr setxattrat
    listxattr llistxattr flistxattr listxattrat removexattr lremovexattr fremovexattr
    removexattrat fchmodat2 cachestat statmount listmount
    pipe pipe2 copy_file_range sendfile sendfile64 splice tee vmsplice
""")
# Waiting for descriptors, and descriptors that stand for events.
_EVENTS = _names("""
    select _newselect pselect6 pselect6_time64 poll ppoll ppoll_time64
    epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_wait epoll_wait_old
    epoll_pwait epoll_pwait2 eventfd eventfd2 signalfd signalfd4
    inotify_init inotify_init1 inotify_add_watch inotify_rm_watch fanotify_mark
    timerfd_create timerfd_gettime timerfd_gettime64 timerfd_settime timerfd_settime64
    io_setup io_destroy io_submit io_cancel io_getevents io_pgetevents io_pgetevents_time64
""")
# Memory.
_MEMORY = _names("""
    brk mmap mmap2 munmap mremap mprotect madvise mincore msync remap_file_pages
    mlock mlock2 mlockall munlock munlockall membarrier memfd_create memfd_secret
    pkey_alloc pkey_free pkey_mprotect process_mrelease mseal map_shadow_stack
""")
# Processes, threads, scheduling, limits, the process's own identity.
_PROCESSES = _names("""
    fork vfork execve execveat exit exit_group wait4 waitid waitpid
    getpid getppid gettid getpgid getpgrp getsid setpgid setsid
    set_tid_address set_robust_list get_robust_list set_thread_area get_thread_area
    futex futex_time64 futex_waitv futex_wait futex_wake futex_requeue
    rseq restart_syscall prctl capget capset seccomp uretprobe riscv_hwprobe
    landlock_create_ruleset landlock_add_rule landlock_restrict_self
    pidfd_open pidfd_send_signal getcpu getrandom sysinfo uname times
    getrlimit setrlimit ugetrlimit prlimit64 getrusage getpriority setpriority
    ioprio_get ioprio_set
    sched_yield sched_getaffinity sched_setaffinity sched_getattr sched_setattr
    sched_getparam sched_setparam sched_getscheduler sched_setscheduler
    sched_get_priority_max sched_get_priority_min
    sched_rr_get_interval sched_rr_get_interval_time64
""")
# User and group ids.
_CREDENTIALS = _names("""
    getuid getuid32 geteuid geteuid32 getgid getgid32 getegid getegid32
    getresuid getresuid32 getresgid getresgid32 getgroups getgroups32
    setuid setuid32 setgid setgid32 setreuid setreuid32 setregid setregid32
    setresuid setresuid32 setresgid setresgid32 setfsuid setfsuid32 setfsgid setfsgid32
    setgroups setgroups32
""")
# Signals.
_SIGNALS = _names("""
    kill tkill tgkill pause alarm sigaltstack sigprocmask sigreturn
    rt_sigaction rt_sigprocmask rt_sigreturn rt_sigpending rt_sigsuspend
    rt_sigqueueinfo rt_tgsigqueueinfo rt_sigtimedwait rt_sigtimedwait_time64
""")
# Reading clocks and sleeping (setting a clock is CAP_SYS_TIME's, below). adjtimex and
# clock_adjtime only read unless the caller has CAP_SYS_TIME, which the kernel checks.
_TIME = _names("""
    time gettimeofday clock_gettime clock_gettime64 clock_getres clock_getres_time64
    clock_nanosleep clock_nanosleep_time64 nanosleep adjtimex clock_adjtime clock_adjtime64
    getitimer setitimer timer_create timer_delete timer_getoverrun
    timer_gettime timer_gettime64 timer_settime timer_settime64
""")
# Sockets (socket itself below: not of the vsock family).
_SOCKETS = _names("""
    socketpair socketcall bind listen accept accept4 connect shutdown
    getsockname getpeername getsockopt setsockopt
    send sendto sendmsg sendmmsg recv recvfrom recvmsg recvmmsg recvmmsg_time64
""")
# System V IPC and POSIX message queues (the container has its own IPC namespace).
_IPC = _names("""
    ipc shmget shmat shmdt shmctl semget semop semtimedop semtimedop_time64 semctl
    msgget msgsnd msgrcv msgctl
    mq_open mq_unlink mq_timedsend mq_timedsend_time64 mq_timedreceive
    mq_timedreceive_time64 mq_notify mq_getsetattr
""")

# Calls that only some architectures have (GOARCH names).
_ARCH_CALLS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("amd64", "x32"), ("arch_prctl",)),
    (("amd64", "x32", "x86"), ("modify_ldt",)),
    (("arm", "arm64"),
     ("arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint",
      "cacheflush", "set_tls")),
    (("ppc64le",), ("sync_file_range2", "swapcontext")),
    (("s390", "s390x"), ("s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr")),
    (("riscv64",), ("riscv_flush_icache",)),
)  # fmt: skip

# Calls allowed only to a container holding the capability that governs them (the kernel
# checks the capability too; the filter keeps the attack surface closed without it).
_CAPABILITY_CALLS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("CAP_SYS_ADMIN",
     ("unshare", "setns", "clone", "clone3", "mount", "mount_setattr", "umount", "umount2",
      "move_mount", "open_tree", "fsopen", "fsconfig", "fsmount", "fspick", "sethostname",
      "setdomainname", "quotactl", "quotactl_fd", "lookup_dcookie", "fanotify_init",
      "perf_event_open", "bpf", "syslog", "lsm_get_self_attr", "lsm_set_self_attr",
      "lsm_list_modules")),
    ("CAP_DAC_READ_SEARCH", ("open_by_handle_at",)),
    ("CAP_SYS_BOOT", ("reboot",)),
    ("CAP_SYS_CHROOT", ("chroot",)),
    ("CAP_SYS_MODULE", ("init_module", "finit_module", "delete_module")),
    ("CAP_SYS_PACCT", ("acct",)),
    ("CAP_SYS_PTRACE",
     ("ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "kcmp",
      "pidfd_getfd")),
    ("CAP_SYS_RAWIO", ("iopl", "ioperm")),
    ("CAP_SYS_TIME", ("settimeofday", "stime", "clock_settime", "clock_settime64")),
    ("CAP_SYS_TTY_CONFIG", ("vhangup",)),
    ("CAP_SYS_NICE", ("get_mempolicy", "set_mempolicy", "set_mempolicy_home_node", "mbind")),
    ("CAP_SYSLOG", ("syslog",)),
    ("CAP_BPF", ("bpf",)),
    ("CAP_PERFMON", ("perf_event_open",)),
)  # fmt: skip


def _default_rules() -> tuple[Rule, ...]:
    rules = [
        Rule(_FILES + _EVENTS + _MEMORY + _PROCESSES + _CREDENTIALS + _SIGNALS + _TIME
             + _SOCKETS + _IPC),
        # ptrace and reading another process's memory: since 4.8 the seccomp filter is
        # checked again after a tracer's changes, so a traced process cannot step around it.
        Rule(("ptrace", "process_vm_readv", "process_vm_writev"),
             includes=Filter(min_kernel=(4, 8))),
        # Every socket family but AF_ALG (the kernel's crypto, a long line of bugs) and
        # AF_VSOCK (the hypervisor's sockets): three rules, as a rule's conditions on one
        # argument would be ORed by runc, not ANDed.
        Rule(("socket",), args=(Arg(0, AF_ALG, "SCMP_CMP_LT"),)),
        Rule(("socket",), args=(Arg(0, AF_ALG + 1, "SCMP_CMP_EQ"),)),
        Rule(("socket",), args=(Arg(0, AF_VSOCK, "SCMP_CMP_GT"),)),
        *(Rule(("personality",), args=(Arg(0, value, "SCMP_CMP_EQ"),))
          for value in PERSONALITIES),
        *(Rule(names, includes=Filter(arches=arches)) for arches, names in _ARCH_CALLS),
        *(Rule(names, includes=Filter(caps=(cap,))) for cap, names in _CAPABILITY_CALLS),
        # Without CAP_SYS_ADMIN: clone without namespace flags (the flags are the second
        # argument on s390), and clone3 answering "not implemented".
        Rule(("clone",), args=(Arg(0, CLONE_NAMESPACE_FLAGS, "SCMP_CMP_MASKED_EQ"),),
             excludes=Filter(arches=("s390", "s390x"), caps=("CAP_SYS_ADMIN",))),
        Rule(("clone",), args=(Arg(1, CLONE_NAMESPACE_FLAGS, "SCMP_CMP_MASKED_EQ"),),
             includes=Filter(arches=("s390", "s390x")),
             excludes=Filter(caps=("CAP_SYS_ADMIN",))),
        Rule(("clone3",), action=ERRNO, errno=ENOSYS, excludes=Filter(caps=("CAP_SYS_ADMIN",))),
    ]  # fmt: skip
    return tuple(rules)


DEFAULT = Profile(
    default_action=ERRNO,
    default_errno=EPERM,
    arch_map=(
        ("SCMP_ARCH_X86_64", ("SCMP_ARCH_X86", "SCMP_ARCH_X32")),
        ("SCMP_ARCH_AARCH64", ("SCMP_ARCH_ARM",)),
        ("SCMP_ARCH_S390X", ("SCMP_ARCH_S390",)),
        ("SCMP_ARCH_PPC64LE", ()),
        ("SCMP_ARCH_RISCV64", ()),
        ("SCMP_ARCH_MIPS64", ("SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64N32")),
        ("SCMP_ARCH_MIPSEL64", ("SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64N32")),
    ),
    rules=_default_rules(),
)


# --- resolving a profile for one container -----------------------------------------------------


def go_arch(machine: str | None = None) -> str:
    """GOARCH for the kernel's machine name (this machine's by default)."""
    machine = machine or os.uname().machine
    return GO_ARCHES.get(machine, machine)


def kernel_version(release: str | None = None) -> tuple[int, int]:
    """(major, minor) of a kernel release string (this kernel's by default)."""
    found = re.match(r"(\d+)\.(\d+)", release or os.uname().release)
    return (int(found.group(1)), int(found.group(2))) if found else (0, 0)


def to_oci(
    profile: Profile,
    capabilities: Iterable[str],
    arch: str | None = None,
    kernel: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """The OCI `linux.seccomp` of `profile` for a container whose bounding set is
    `capabilities`, on GOARCH `arch` and kernel `kernel` (this machine's by default): the
    rules whose `includes` all hold and whose `excludes` none does, as dockerd resolves them."""
    arch = arch or go_arch()
    kernel = kernel or kernel_version()
    caps = frozenset(capabilities)
    out: dict[str, Any] = {"defaultAction": profile.default_action}
    if profile.default_errno is not None:
        out["defaultErrnoRet"] = profile.default_errno
    architectures = list(profile.architectures)
    native = SECCOMP_ARCHES.get(arch)
    for name, others in profile.arch_map:
        if name == native:
            architectures += [name, *others]
            break
    if architectures:
        out["architectures"] = architectures
    if profile.flags:
        out["flags"] = list(profile.flags)
    syscalls = []
    for rule in profile.rules:
        if not _applies(rule, caps, arch, kernel):
            continue
        call: dict[str, Any] = {"names": list(rule.names), "action": rule.action}
        if rule.errno is not None:
            call["errnoRet"] = rule.errno
        if rule.args:
            call["args"] = [arg.to_oci() for arg in rule.args]
        syscalls.append(call)
    out["syscalls"] = syscalls
    return out


def runtime_default(capabilities: Iterable[str]) -> dict[str, Any]:
    """The default profile for a container with these bounding capabilities, on this host."""
    return to_oci(DEFAULT, capabilities)


def _applies(rule: Rule, caps: frozenset[str], arch: str, kernel: tuple[int, int]) -> bool:
    excluded = rule.excludes
    if excluded.arches and arch in excluded.arches:
        return False
    if excluded.caps and any(cap in caps for cap in excluded.caps):
        return False
    if excluded.min_kernel is not None and kernel >= excluded.min_kernel:
        return False
    included = rule.includes
    if included.arches and arch not in included.arches:
        return False
    if included.caps and not all(cap in caps for cap in included.caps):
        return False
    return included.min_kernel is None or kernel >= included.min_kernel


# --- docker's JSON format ----------------------------------------------------------------------


def parse(data: object) -> Profile:
    """A profile from decoded JSON in docker's format. ProfileError for what makes none."""
    if not isinstance(data, Mapping):
        raise ProfileError("decoding seccomp profile failed: not a JSON object")
    if data.get("architectures") and data.get("archMap"):
        raise ProfileError(
            "'architectures' and 'archMap' were specified in the seccomp profile, use either"
            " 'architectures' or 'archMap'"
        )  # docker's words
    default_action = _text(data, "defaultAction") or ERRNO
    _check_action(default_action)
    arch_map = tuple(
        (_text(entry, "architecture"), tuple(_texts(entry, "subArchitectures")))
        for entry in map(_object, _list(data, "archMap"), repeat("archMap"))
    )
    return Profile(
        default_action=default_action,
        default_errno=_optional_int(data, "defaultErrnoRet"),
        architectures=tuple(_texts(data, "architectures")),
        arch_map=arch_map,
        rules=tuple(_rule(_object(call, "syscalls")) for call in _list(data, "syscalls")),
        flags=tuple(_texts(data, "flags")),
    )


def _rule(call: Mapping[str, Any]) -> Rule:
    name, names = _text(call, "name"), _texts(call, "names")
    if name and names:
        raise ProfileError(
            "'name' and 'names' were specified in the seccomp profile, use either 'name' or 'names'"
        )  # docker's words
    action = _text(call, "action")
    _check_action(action)
    return Rule(
        names=(name,) if name else tuple(names),
        action=action,
        errno=_optional_int(call, "errnoRet"),
        args=tuple(_arg(_object(arg, "args")) for arg in _list(call, "args")),
        includes=_filter(call.get("includes")),
        excludes=_filter(call.get("excludes")),
    )


def _arg(arg: Mapping[str, Any]) -> Arg:
    op = _text(arg, "op")
    if op not in OPERATORS:
        raise ProfileError(f"seccomp profile: unknown operator {op!r}")
    return Arg(
        position=_optional_int(arg, "index") or 0,
        value=_optional_int(arg, "value") or 0,
        op=op,
        value_two=_optional_int(arg, "valueTwo") or 0,
    )


def _filter(value: object) -> Filter:
    if value is None:
        return Filter()
    data = _object(value, "includes/excludes")
    min_kernel = _text(data, "minKernel")
    parsed = None
    if min_kernel:
        found = re.fullmatch(r"(\d+)\.(\d+)", min_kernel)
        if found is None:
            raise ProfileError(f"invalid kernel version: {min_kernel}")
        parsed = (int(found.group(1)), int(found.group(2)))
    return Filter(tuple(_texts(data, "arches")), tuple(_texts(data, "caps")), parsed)


def _check_action(action: str) -> None:
    if action not in ACTIONS:
        raise ProfileError(f"seccomp profile: unknown action {action!r}")


def _object(value: object, key: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ProfileError(f"decoding seccomp profile failed: {key} holds {value!r}")
    return value


def _list(data: Mapping[str, Any], key: str) -> Sequence[Any]:
    value = data.get(key)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ProfileError(f"decoding seccomp profile failed: {key} is not a list")
    return value


def _texts(data: Mapping[str, Any], key: str) -> list[str]:
    values = _list(data, key)
    if not all(isinstance(v, str) for v in values):
        raise ProfileError(f"decoding seccomp profile failed: {key} is not a list of strings")
    return list(values)


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ProfileError(f"decoding seccomp profile failed: {key} is not a string")
    return value


def _optional_int(data: Mapping[str, Any], key: str) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProfileError(f"decoding seccomp profile failed: {key} is not a number")
    return value
