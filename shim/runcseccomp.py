"""The seccomp filter `runc exec` installs, rebuilt byte for byte from the container's runc
state (`config.seccomp`), for the shim's own exec (`shim.nsexec`).

runc 1.1 builds it with libseccomp and prepends a stub of its own (libcontainer's `patchbpf`)
that answers -ENOSYS for syscalls newer than any the profile names, so that programs fall
back from them as on an older kernel, where the profile's default would say EPERM. This
module makes the same calls to the same library and the same stub (runc's
libcontainer/seccomp/seccomp_linux.go InitSeccomp through libseccomp-golang, and
libcontainer/seccomp/patchbpf/enosys_linux.go generateEnosysStub); the result was compared
with what runc loaded (PTRACE_SECCOMP_GET_FILTER) for ctrd's default profile and a dozen
variants, and `tests/integration/test_nsexec.py` compares them again.

- Only for what was compared: runc 1.1.x on libseccomp 2.5.4 (the versions `runc --version`
  prints). Another version, a Notify rule or listener, an architecture runc does not map, a
  program over 4096 instructions or any libseccomp error: `Unsupported`, and the exec is
  runc's.
- runc's own order of the stub's two loops is a Go map's and varies (with two audit
  architectures, as x86_64 with x86 and x32); this builds the order runc takes most often
  (insertion order). All orders mean the same.
- runc compares `default_errno_ret` with the *action* ERRNO(ENOSYS), not with ENOSYS, so an
  ENOSYS default still gets the stub: kept, to be the same filter.
- Building docker's profile takes ~9 ms: once per container (the shim's), at its first exec.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import json
import os
import struct
import subprocess
from typing import Any

LIBSECCOMP_VERSION = "2.5.4"
RUNC_SERIES = "1.1."
MAX_INSTRUCTIONS = 4096  # BPF_MAXINSNS

# runc's Go architecture names -> libseccomp's SCMP_ARCH_* tokens (seccomp.h 2.5.4)
ARCHES = {
    "x86": 0x40000003, "amd64": 0xC000003E, "x32": 0x4000003E, "arm": 0x40000028,
    "arm64": 0xC00000B7, "mips": 0x8, "mips64": 0x80000008, "mips64n32": 0xA0000008,
    "mipsel": 0x40000008, "mipsel64": 0xC0000008, "mipsel64n32": 0xE0000008, "ppc": 0x14,
    "ppc64": 0x80000015, "ppc64le": 0xC0000015, "s390": 0x16, "s390x": 0x80000016,
}  # fmt: skip
X32 = 0x4000003E
AUDIT_ARCH_X86_64 = 0xC000003E  # x32's audit architecture
S390 = (0x16, 0x80000016)
# runc's configs.Operator -> libseccomp's scmp_compare
OPERATORS = {1: 4, 2: 1, 3: 6, 4: 5, 5: 2, 6: 3, 7: 7}
ACT_ERRNO_ENOSYS = 0x00050000 | 38
ALLOWING = (4, 5, 6)  # Allow, Trace, Log: runc adds no stub
ATTR_CTL_NNP = 3
ATTR_CTL_TSYNC = 4
EEXIST, EOPNOTSUPP = 17, 95

# classic BPF
LD_ABS, JA, JEQ, JGT, JSET, RET = 0x20, 0x05, 0x15, 0x25, 0x45, 0x06


class Unsupported(Exception):
    """A filter this module does not rebuild; the exec is left to runc."""


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint)]


@functools.cache
def _library() -> Any:
    try:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError as e:
        raise Unsupported(f"no libseccomp: {e}") from None
    lib.seccomp_version.restype = ctypes.POINTER(_Version)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_syscall_resolve_name_arch.argtypes = [ctypes.c_uint32, ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(_ArgCmp),
    ]  # fmt: skip
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    version = lib.seccomp_version().contents
    found = f"{version.major}.{version.minor}.{version.micro}"
    if found != LIBSECCOMP_VERSION:
        raise Unsupported(f"libseccomp {found}, not {LIBSECCOMP_VERSION}")
    return lib


@functools.cache
def check_runc(binary: str) -> None:
    """Unsupported unless `binary` is a runc 1.1 on libseccomp 2.5.4, as compared."""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise Unsupported(f"runc --version: {e}") from None
    lines = out.splitlines()
    version = lines[0].split()[-1] if lines else ""
    libseccomp = next((ln.split()[-1] for ln in lines if ln.startswith("libseccomp:")), "")
    if not version.startswith(RUNC_SERIES) or libseccomp != LIBSECCOMP_VERSION:
        raise Unsupported(f"runc {version} on libseccomp {libseccomp}")


def program(config: dict[str, Any]) -> bytes:
    """The filter (struct sock_filter records, host order) runc installs for `config`, runc's
    `config.seccomp`; cached by its content."""
    return _program(json.dumps(config, sort_keys=True))


@functools.cache
def _program(key: str) -> bytes:
    config = json.loads(key)
    try:
        if config.get("listener_path") or any(
            c.get("action") == 7 for c in config.get("syscalls") or []
        ):
            raise Unsupported("a seccomp notify rule")
        base = _base(config)
        if not _stubbed(config):
            whole = base
        else:
            last = _last_syscalls(config)
            whole = b"".join(struct.pack("=HBBI", *i) for i in _stub(last)) + base
    except (KeyError, TypeError, ValueError) as e:
        raise Unsupported(f"a seccomp config this does not read: {e!r}") from None
    if len(whole) // 8 > MAX_INSTRUCTIONS:
        raise Unsupported("a seccomp program over 4096 instructions")
    return whole


def _stubbed(config: dict[str, Any]) -> bool:
    """Whether runc prepends its stub: not when the default allows (Allow, Trace, Log) nor when
    `default_errno_ret` equals the action ERRNO(ENOSYS) (runc's comparison, kept)."""
    allowing = config["default_action"] in ALLOWING
    return not (allowing or config.get("default_errno_ret") == ACT_ERRNO_ENOSYS)


def _action(action: int, errno_ret: int | None) -> int:
    if action in (1, 8):  # Kill, KillThread
        return 0x00000000
    if action == 2:  # Errno: EPERM without a number
        return 0x00050000 | ((1 if errno_ret is None else errno_ret) & 0xFFFF)
    if action == 3:
        return 0x00030000
    if action == 4:
        return 0x7FFF0000
    if action == 5:  # Trace, EPERM's number without one, as runc
        return 0x7FF00000 | ((1 if errno_ret is None else errno_ret) & 0xFFFF)
    if action == 6:
        return 0x7FFC0000
    if action == 9:
        return 0x80000000
    raise Unsupported(f"seccomp action {action}")


def _arch(name: str) -> int:
    token = ARCHES.get(name.lower())
    if token is None:
        raise Unsupported(f"seccomp architecture {name}")
    return token


def _base(config: dict[str, Any]) -> bytes:
    """libseccomp's program, from the calls runc makes (InitSeccomp through
    libseccomp-golang), in its order."""
    lib = _library()
    lib.seccomp_api_get()
    default = _action(config["default_action"], config.get("default_errno_ret"))
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise Unsupported("seccomp_init failed")
    try:
        _ok(lib.seccomp_attr_set(ctx, ATTR_CTL_TSYNC, 1), EOPNOTSUPP)
        for name in config.get("architectures") or []:
            _ok(lib.seccomp_arch_add(ctx, _arch(name)), EEXIST)
        _ok(lib.seccomp_attr_set(ctx, ATTR_CTL_NNP, 0))
        for call in config.get("syscalls") or []:
            action = _action(call["action"], call.get("errnoRet"))
            if action == default:  # runc skips what the default does anyway
                continue
            number = lib.seccomp_syscall_resolve_name(call["name"].encode())
            if number == -1:  # a name this libseccomp does not know
                continue
            args = call.get("args") or []
            conditions = [
                _ArgCmp(a["index"], OPERATORS[a["op"]], a["value"], a["value_two"]) for a in args
            ]
            indexes = [a["index"] for a in args]
            split = len(set(indexes)) < len(indexes)  # an index twice: a rule per condition
            rules = [[c] for c in conditions] if split else [conditions]
            for rule in rules:
                array = (_ArgCmp * len(rule))(*rule) if rule else None
                _ok(lib.seccomp_rule_add_array(ctx, action, number, len(rule), array))
        read, write = os.pipe2(os.O_CLOEXEC)
        try:
            try:
                _ok(lib.seccomp_export_bpf(ctx, write))
            finally:
                os.close(write)
            chunks = []
            while chunk := os.read(read, 1 << 16):
                chunks.append(chunk)
        finally:
            os.close(read)
        return b"".join(chunks)
    finally:
        lib.seccomp_release(ctx)


def _ok(result: int, *ignored: int) -> None:
    if result < 0 and -result not in ignored:
        raise Unsupported(f"libseccomp: {os.strerror(-result)}")


def _last_syscalls(config: dict[str, Any]) -> dict[int, dict[int, int]]:
    """Per audit architecture (in the order first named), each architecture's highest
    syscall number among the profile's names (runc's findLastSyscalls)."""
    lib = _library()
    last: dict[int, dict[int, int]] = {}
    for name in config.get("architectures") or []:
        token = _arch(name)
        audit = AUDIT_ARCH_X86_64 if token == X32 else token
        arches = last.setdefault(audit, {})
        if token in arches:
            continue
        highest = 0
        for call in config.get("syscalls") or []:
            number = lib.seccomp_syscall_resolve_name_arch(token, call["name"].encode())
            if number != -1 and number > highest:
                highest = number
        if highest:
            arches[token] = highest
    return last


Instruction = tuple[int, int, int, int]  # code, jt, jf, k


def _stub(
    last: dict[int, dict[int, int]],
    sections: list[int] | None = None,
    jumps: list[int] | None = None,
) -> list[Instruction]:
    """runc's -ENOSYS stub (patchbpf's generateEnosysStub), built from its end; its two loops
    over the audit architectures in `sections` and `jumps` order (default: first named)."""

    def op(code: int, k: int, jt: int = 0, jf: int = 0) -> Instruction:
        return (code, jt, jf, k)

    tail = [op(JA, 1), op(RET, ACT_ERRNO_ENOSYS)]
    table: dict[int, int] = {}
    for audit in sections if sections is not None else list(last):
        arches = last[audit]
        if not arches:
            continue
        to_enosys = len(tail) - 1
        to_filter = to_enosys + 1
        section = [op(LD_ABS, 0)]
        if len(arches) == 1:
            ((token, highest),) = arches.items()
            if token in S390:
                section += [op(JEQ, 0, 0, 1), op(RET, ACT_ERRNO_ENOSYS)]
            if to_enosys + 1 <= 255:
                check = [op(JGT, highest, to_enosys + 1, 0), op(JA, to_filter)]
            else:
                check = [op(JGT, highest, 0, 1), op(JA, to_enosys + 1), op(JA, to_filter)]
            if audit == AUDIT_ARCH_X86_64:  # x32's calls carry bit 30
                if token == X32:
                    check = [op(JSET, 1 << 30, 0, len(check) - 1), *check]
                else:
                    check = [op(JSET, 1 << 30, len(check) - 1, 0), *check]
            section += check
        elif len(arches) == 2 and set(arches) == {AUDIT_ARCH_X86_64, X32}:
            native, x32 = arches[AUDIT_ARCH_X86_64], arches[X32]
            if to_enosys + 2 <= 255:
                section += [
                    op(JSET, 1 << 30, 1, 0), op(JGT, native, to_enosys + 2, 1),
                    op(JGT, x32, to_enosys + 1, 0), op(JA, to_filter),
                ]  # fmt: skip
            else:
                section += [
                    op(JSET, 1 << 30, 1, 0), op(JGT, native, 1, 2), op(JGT, x32, 0, 1),
                    op(JA, to_enosys + 1), op(JA, to_filter),
                ]  # fmt: skip
        else:
            raise Unsupported("architectures runc's stub does not combine")
        tail = section + tail
        table[audit] = len(tail)
    tail = [op(JA, len(tail)), *tail]
    for audit in jumps if jumps is not None else list(last):
        jump = len(tail) - table.get(audit, 0)
        if jump <= 255:
            tail = [op(JEQ, audit, jump, 0), *tail]
        else:
            tail = [op(JEQ, audit, 0, 1), op(JA, jump), *tail]
    return [op(LD_ABS, 4), *tail]


def variants(config: dict[str, Any]) -> list[bytes]:
    """Every program runc may install for `config` (its stub's two loops run in a Go map's
    order): for tests that compare with what runc loaded."""
    base = _base(config)
    if not _stubbed(config):
        return [base]
    last = _last_syscalls(config)
    out: list[bytes] = []
    for sections in itertools.permutations(last):
        for jumps in itertools.permutations(last):
            stub = _stub(last, list(sections), list(jumps))
            whole = b"".join(struct.pack("=HBBI", *i) for i in stub) + base
            if whole not in out:
                out.append(whole)
    return out
