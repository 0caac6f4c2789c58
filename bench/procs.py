"""What the benchmarks read from /proc: the process tree, whose shims are whose, and memory.

A daemon's shims are found by walking /proc, not by asking the daemon: a shim is a process
whose command line says it is one (`containerd-shim-*`, a `shim …` title, or `python -m shim`)
and names that daemon, by its socket address (containerd's `-address <socket>`, ctrd's
`shim <ns> <id> <address>`) or by a path under the daemon's temporary base (ctrd's zygote is
started per state dir). So the same code counts the shims of ctrd and of containerd, and finds
what a run left behind after its daemon is gone. Memory is read from smaps_rollup (needs root
for other users' processes); a process that exits while being read is skipped.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    words: tuple[str, ...]  # argv, split on whitespace too (a retitled process has one arg)


def _read(pid: int) -> Proc | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the name may hold spaces and parens
    args = cmdline.decode(errors="replace").split("\0")
    return Proc(pid, ppid, tuple(word for arg in args for word in arg.split()))


def table() -> dict[int, Proc]:
    """Every process now, by pid."""
    procs = (_read(int(name)) for name in os.listdir("/proc") if name.isdigit())
    return {proc.pid: proc for proc in procs if proc is not None}


def descendants(procs: Mapping[int, Proc], roots: Iterable[int]) -> set[int]:
    """The children of `roots`, their children and so on (`roots` not included)."""
    children: dict[int, list[int]] = {}
    for proc in procs.values():
        children.setdefault(proc.ppid, []).append(proc.pid)
    found: set[int] = set()
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def is_shim(words: tuple[str, ...]) -> bool:
    if not words:
        return False
    if os.path.basename(words[0]).startswith("containerd-shim") or words[0] == "shim":
        return True
    pairs = itertools.pairwise(words)
    return any(a == "-m" and (b == "shim" or b.startswith("shim.")) for a, b in pairs)


def names_daemon(words: tuple[str, ...], address: str, base: Path) -> bool:
    under = f"{base}/"
    for word in words:
        value = word.split("=", 1)[-1].removeprefix("unix://")  # -address=…, unix://…
        if value == address or value.startswith(under):
            return True
    return False


def shims_of(procs: Mapping[int, Proc], address: str, base: Path) -> set[int]:
    """The pids of the shims (and shim zygotes) serving the daemon at `address`."""
    return {
        proc.pid
        for proc in procs.values()
        if is_shim(proc.words) and names_daemon(proc.words, address, base)
    }


@dataclass(frozen=True)
class Memory:
    pss: int = 0  # bytes
    rss: int = 0
    count: int = 0  # processes read

    def __add__(self, other: Memory) -> Memory:
        return Memory(self.pss + other.pss, self.rss + other.rss, self.count + other.count)

    def __sub__(self, other: Memory) -> Memory:
        return Memory(self.pss - other.pss, self.rss - other.rss, self.count - other.count)


def memory_of(pid: int) -> Memory:
    fields: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("Pss", "Rss"):
                    fields[key] = int(rest.split()[0]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return Memory()
    if "Pss" not in fields:  # a zombie, or a kernel thread: no mappings
        return Memory()
    return Memory(fields["Pss"], fields["Rss"], 1)


def memory(pids: Iterable[int]) -> Memory:
    total = Memory()
    for pid in pids:
        total += memory_of(pid)
    return total


def mem_available() -> int:
    """The host's MemAvailable, in bytes."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")
