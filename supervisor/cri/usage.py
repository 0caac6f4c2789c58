"""What the CRI's stats are made of: cgroup samples, CPU rates, network counters, writable
layers. The stats part (`supervisor.cri.stats`) turns them into runtime.v1 messages.

- A cgroup is read with the readers of Tasks.Metrics (`supervisor.runtime.metrics`: the
  same files and parsing, v1 and v2), only the five files a sample needs (a whole Metrics
  is ~20 reads, 0.7 ms a container), and reduced as containerd's CRI reduces a task's metrics:
  CPU = cpuacct.usage (v1) or cpu.stat usage_usec x 1000 (v2); working set = usage less
  inactive file (v1 `total_inactive_file`, v2 `inactive_file`), floor 0; available = limit
  less working set, 0 when the limit is above 2^62 (unlimited); rss = v1 `total_rss`, v2
  `anon`; page faults = v1 `total_pgfault`/`total_pgmajfault`, v2 `pgfault`/`pgmajfault`.
  v1 wherever the process is in a v1 memory or cpuacct hierarchy (this hybrid host), v2 when
  it is in the unified hierarchy alone.
- `usage_nano_cores` is the CPU time used since the previous sample of the same container
  (or pod) over the wall time between the two samples; the first sample gives 0
  (`CpuRates`, one per part, in memory).
- Network counters are read in the pod's network namespace from `/proc/thread-self/net/dev`
  on a short-lived thread that joins the namespace's pin (setns): no helper process, no `ip`.
- A writable layer's usage walks the container's upper dir, so it is cached (`LayerUsage`,
  10 s, containerd's snapshot sync period) and a walk that takes longer than a call can wait
  goes on while the call answers with the last known value. ImageFsInfo's walk of the whole
  snapshotter directory is cached the same way.

Readers of files block: callers run them on a thread (one per call, for every container).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

from supervisor.network.netns import run_in
from supervisor.runtime import metrics
from supervisor.runtime.metrics import CgroupV1, CgroupV2

Cgroup = CgroupV1 | CgroupV2

# Above this a memory limit means "none" (the kernel rounds 2^63-1 down to a page multiple).
UNLIMITED = 1 << 62
_UINT64_MAX = 2**64 - 1


@dataclass(frozen=True)
class Memory:
    usage: int
    working_set: int
    available: int
    rss: int
    page_faults: int
    major_page_faults: int


@dataclass(frozen=True)
class Sample:
    """One cgroup read at `at` (ns since the epoch)."""

    at: int
    cpu: int | None  # CPU time used, ns; None: no CPU accounting found
    memory: Memory | None
    processes: int  # pids.current; 0 when the pids controller is not there


def sample(where: Cgroup) -> Sample:
    """Read a cgroup (blocking): five files, parsed as Tasks.Metrics parses them; a missing
    file reads as zeros (a missing v1 memory.stat: no memory figures)."""
    at = time.time_ns()
    match where:
        case CgroupV1(directories):
            return _v1(directories, at)
        case CgroupV2(directory):
            return _v2(directory, at)
    raise AssertionError(where)


def _v1(directories: Mapping[str, Path], at: int) -> Sample:
    cpu = None
    if (cpuacct := directories.get("cpuacct")) is not None:
        cpu = metrics.read_uint(cpuacct / "cpuacct.usage") or 0
    memory = None
    directory = directories.get("memory")
    stat = None if directory is None else metrics.read_kv(directory / "memory.stat")
    if directory is not None and stat is not None:
        used = metrics.read_uint(directory / "memory.usage_in_bytes") or 0
        limit = metrics.read_uint(directory / "memory.limit_in_bytes") or 0
        working_set = max(used - stat.get("total_inactive_file", 0), 0)
        memory = Memory(
            usage=used,
            working_set=working_set,
            available=_available(limit, working_set),
            rss=stat.get("total_rss", 0),
            page_faults=stat.get("total_pgfault", 0),
            major_page_faults=stat.get("total_pgmajfault", 0),
        )
    pids = directories.get("pids")
    processes = 0 if pids is None else metrics.read_uint(pids / "pids.current") or 0
    return Sample(at, cpu, memory, processes)


def _v2(directory: Path, at: int) -> Sample:
    # cpu.stat has usage_usec whether or not the cpu controller is enabled
    cpu = (metrics.read_kv(directory / "cpu.stat") or {}).get("usage_usec", 0) * 1000
    stat = metrics.read_kv(directory / "memory.stat") or {}
    used = metrics.read_uint(directory / "memory.current") or 0
    limit = metrics.read_limit(directory / "memory.max", unlimited=_UINT64_MAX) or 0
    working_set = max(used - stat.get("inactive_file", 0), 0)
    memory = Memory(
        usage=used,
        working_set=working_set,
        available=_available(limit, working_set),
        rss=stat.get("anon", 0),
        page_faults=stat.get("pgfault", 0),
        major_page_faults=stat.get("pgmajfault", 0),
    )
    processes = metrics.read_uint(directory / "pids.current") or 0
    return Sample(at, cpu, memory, processes)


def _available(limit: int, working_set: int) -> int:
    return 0 if limit > UNLIMITED else max(limit - working_set, 0)


def add(samples: Iterable[Sample], at: int) -> Sample:
    """The sum of several cgroups' samples (a pod without a cgroup of its own)."""
    cpu, processes = 0, 0
    memory = [0] * 6
    for s in samples:
        cpu += s.cpu or 0
        processes += s.processes
        if s.memory is not None:
            memory = [a + b for a, b in zip(memory, astuple(s.memory), strict=True)]
    return Sample(at, cpu, Memory(*memory), processes)


# --- where a cgroup is ---------------------------------------------------------------------


def of_process(pid: int, mountinfo: str) -> Cgroup | None:
    """The cgroup(s) of a live process (None if it is gone or its cgroups are not mounted).
    `mountinfo` is /proc/self/mountinfo, read once by the caller for many processes."""
    try:
        membership = Path(f"/proc/{pid}/cgroup").read_text(encoding="utf-8")
    except (FileNotFoundError, ProcessLookupError):
        return None
    return metrics.locate(membership, mountinfo)


def of_parent(cgroup_parent: str) -> Cgroup | None:
    """A pod's cgroup from its sandbox's `cgroup_parent`: a cgroupfs path (kubelet's cgroupfs
    driver, `/kubepods/burstable/pod<uid>`) or a systemd slice name (`kubepods-pod<uid>.slice`,
    which lives at /kubepods.slice/kubepods-pod<uid>.slice); None when it is not mounted."""
    path = systemd_slice_path(cgroup_parent) if cgroup_parent.endswith(".slice") else cgroup_parent
    return metrics.locate_path(path)


def systemd_slice_path(name: str) -> str:
    """systemd's nesting of a slice: `a-b-c.slice` is /a.slice/a-b.slice/a-b-c.slice."""
    stem = name.removesuffix(".slice")
    parts = stem.split("-")
    return "/" + "/".join("-".join(parts[: i + 1]) + ".slice" for i in range(len(parts)))


def exists(where: Cgroup) -> bool:
    match where:
        case CgroupV1(directories):
            return any(d.is_dir() for d in directories.values())
        case CgroupV2(directory):
            return directory.is_dir()
    raise AssertionError(where)


# --- CPU rates -------------------------------------------------------------------------------


class CpuRates:
    """usage_nano_cores per container or pod: the CPU used since its previous sample over the
    time between the two (ns per s), 0 for the first sample or a counter that went back."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[int, int]] = {}  # key -> (at, cpu)

    def rate(self, key: str, at: int, cpu: int) -> int:
        previous = self._last.get(key)
        self._last[key] = (at, cpu)
        if previous is None or at <= previous[0] or cpu < previous[1]:
            return 0
        return int((cpu - previous[1]) / (at - previous[0]) * 1_000_000_000)

    def keep(self, keys: Iterable[str]) -> None:
        """Forget the keys not in `keys` (containers and pods that are gone)."""
        wanted = set(keys)
        for key in [k for k in self._last if k not in wanted]:
            del self._last[key]


# --- network ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interface:
    name: str
    rx_bytes: int
    rx_errors: int
    tx_bytes: int
    tx_errors: int


def parse_net_dev(text: str) -> list[Interface]:
    """/proc/net/dev: `name: rx_bytes packets errs drop fifo frame compressed multicast
    tx_bytes packets errs ...` per line after two header lines; loopback left out."""
    found = []
    for line in text.splitlines()[2:]:
        name, colon, rest = line.partition(":")
        fields = rest.split()
        if not colon or len(fields) < 11 or not all(f.isdigit() for f in fields):
            continue
        name = name.strip()
        if name == "lo":
            continue
        numbers = [int(f) for f in fields]
        found.append(Interface(name, numbers[0], numbers[2], numbers[8], numbers[10]))
    return found


def net_dev(pin: str) -> list[Interface]:
    """The interfaces of the network namespace pinned at `pin` (blocking: a thread joins the
    namespace, reads its /proc/thread-self/net/dev and ends there). [] if the pin is gone."""
    try:
        text = run_in(pin, _read_net_dev, name="netns-stats")
    except FileNotFoundError:
        return []
    return parse_net_dev(text)


def _read_net_dev() -> str:
    return Path("/proc/thread-self/net/dev").read_text(encoding="ascii")


# --- writable layers -------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerSize:
    at: int  # when it was measured (ns); 0: not yet
    used_bytes: int
    inodes_used: int


Measure = Callable[[], Coroutine[Any, Any, tuple[int, int]]]


class LayerUsage:
    """Writable layers' usage by container, each measured at most every `ttl` seconds.

    A measure (a walk of the upper dir) that does not finish within `wait` seconds goes on
    while the caller gets the last value (zeros with at=0 the first time); the next call
    after it has finished takes its result. A failed measure is retried at the next call.
    """

    def __init__(self, ttl: float = 10.0, wait: float = 0.05) -> None:
        self._ttl_ns = int(ttl * 1e9)
        self._wait = wait
        self._known: dict[str, LayerSize] = {}
        self._running: dict[str, asyncio.Task[tuple[int, int]]] = {}

    async def get(self, key: str, measure: Measure, patient: bool = False) -> LayerSize:
        """`patient`: with nothing known yet, wait for the first measure whole."""
        known = self._known.get(key, LayerSize(0, 0, 0))
        if known.at and time.time_ns() - known.at < self._ttl_ns:
            return known
        task = self._running.get(key)
        if task is None:
            task = self._running[key] = asyncio.create_task(measure())
        await asyncio.wait([task], timeout=None if patient and not known.at else self._wait)
        if not task.done():
            return known
        del self._running[key]
        if task.exception() is not None:
            return known
        used, inodes = task.result()
        self._known[key] = LayerSize(time.time_ns(), used, inodes)
        return self._known[key]

    def keep(self, keys: Iterable[str]) -> None:
        """Forget the containers not in `keys`; their measures still running are cancelled."""
        wanted = set(keys)
        for key in [k for k in self._known if k not in wanted]:
            del self._known[key]
        for key in [k for k in self._running if k not in wanted]:
            self._running.pop(key).cancel()
