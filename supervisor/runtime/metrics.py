"""Cgroup metrics of a live process, packed as containerd 1.6's runc shim packs them.

`collect(pid)` answers Tasks.Metrics: it finds the process's cgroup(s) from /proc/<pid>/cgroup and
the daemon's /proc/self/mountinfo, reads the files containerd/cgroups v1.0.4 reads, and returns
an `Any` that the real `ctr tasks metrics` decodes. The invariants it keeps:

- The type URL is the bare message name, `io.containerd.cgroups.v1.Metrics` or
  `io.containerd.cgroups.v2.Metrics`: containerd's typeurl looks the payload type up by exactly
  that string, so the usual `type.googleapis.com/` prefix would make ctr fail.
- v1 is used whenever the process is in a v1 controller hierarchy (legacy and hybrid hosts, as
  containerd does on both); v2 only when it is in the unified hierarchy alone.
- A missing file leaves its fields at zero (containerd's shim ignores "not exist" too): cgroups
  lack files by kernel version, controller set and root-ness, and a cgroup may go away mid-read.
- The sub-messages ctr dereferences without checking are always present: in v1 `cpu.usage` and
  `cpu.throttling` (always) and `memory.{usage,swap,kernel,kernel_tcp}` (whenever `memory` is).

Locating the cgroups (`locate`) and parsing are pure; the readers take directories, so tests
and callers can point them at any cgroup.
"""

from __future__ import annotations

import errno
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import any_pb2

from supervisor.api.io.containerd.cgroups.v1 import metrics_pb2 as v1
from supervisor.api.io.containerd.cgroups.v2 import metrics_pb2 as v2
from supervisor.errors import NotFound

V1_TYPE_URL = "io.containerd.cgroups.v1.Metrics"
V2_TYPE_URL = "io.containerd.cgroups.v2.Metrics"

# Controllers containerd's v1 Stat reads; others (devices, freezer, ...) have nothing to report.
V1_CONTROLLERS = frozenset({"blkio", "cpu", "cpuacct", "hugetlb", "memory", "pids", "rdma"})

_UINT64_MAX = 2**64 - 1
_UINT32_MAX = 2**32 - 1

# The four file families of the v1 memory controller, by MemoryStat field.
_V1_MEMORY_ENTRIES = {
    "usage": "memory",
    "swap": "memory.memsw",
    "kernel": "memory.kmem",
    "kernel_tcp": "memory.kmem.tcp",
}
# memory.stat keys that MemoryStat names differently.
_V1_MEMORY_STAT_RENAMES = {
    "pgpgin": "pg_pg_in",
    "pgpgout": "pg_pg_out",
    "pgfault": "pg_fault",
    "pgmajfault": "pg_maj_fault",
    "hierarchical_memsw_limit": "hierarchical_swap_limit",
    "total_pgpgin": "total_pg_pg_in",
    "total_pgpgout": "total_pg_pg_out",
    "total_pgfault": "total_pg_fault",
    "total_pgmajfault": "total_pg_maj_fault",
}
# MemoryStat's scalar fields, which memory.stat's keys fill (the entries have files of their own).
_V1_MEMORY_STAT_FIELDS = frozenset(v1.MemoryStat.DESCRIPTOR.fields_by_name) - set(
    _V1_MEMORY_ENTRIES
)
# blkio files by BlkIOStat field: the CFQ/BFQ-era recursive files, or the throttle fallback.
_V1_BLKIO_RECURSIVE = {
    "sectors_recursive": "blkio.sectors_recursive",
    "io_service_bytes_recursive": "blkio.io_service_bytes_recursive",
    "io_serviced_recursive": "blkio.io_serviced_recursive",
    "io_queued_recursive": "blkio.io_queued_recursive",
    "io_service_time_recursive": "blkio.io_service_time_recursive",
    "io_wait_time_recursive": "blkio.io_wait_time_recursive",
    "io_merged_recursive": "blkio.io_merged_recursive",
    "io_time_recursive": "blkio.time_recursive",
}
_V1_BLKIO_THROTTLE = {
    "io_serviced_recursive": "blkio.throttle.io_serviced",
    "io_service_bytes_recursive": "blkio.throttle.io_service_bytes",
}


@dataclass(frozen=True)
class CgroupV1:
    """The process's directory in each mounted v1 hierarchy, by controller name."""

    directories: Mapping[str, Path]


@dataclass(frozen=True)
class CgroupV2:
    """The process's directory in the unified hierarchy."""

    directory: Path


def collect(pid: int) -> any_pb2.Any:
    """Metrics of the cgroup(s) process `pid` is in, packed as containerd packs them.

    Blocking (it reads a few dozen small files): run it on a thread.
    Raises NotFound if there is no such process, or if none of its cgroups is mounted here.
    """
    try:
        membership = Path(f"/proc/{pid}/cgroup").read_text(encoding="utf-8")
    except (FileNotFoundError, ProcessLookupError) as exc:
        raise NotFound(f"process {pid}") from exc
    mountinfo = Path("/proc/self/mountinfo").read_text(encoding="utf-8")
    match locate(membership, mountinfo):
        case CgroupV1(directories):
            return pack(v1_metrics(directories))
        case CgroupV2(directory):
            return pack(v2_metrics(directory))
        case None:
            raise NotFound(f"cgroup of process {pid}")


def collect_path(cgroups_path: str) -> any_pb2.Any:
    """Metrics of the cgroup(s) at an OCI spec's `linux.cgroupsPath` (cgroupfs form, absolute),
    for a task whose processes have exited: runc keeps its cgroups until the container is
    deleted, and containerd still answers their metrics. Blocking; NotFound if they are gone."""
    match locate_path(cgroups_path):
        case CgroupV1(directories) if any(d.is_dir() for d in directories.values()):
            return pack(v1_metrics(directories))
        case CgroupV2(directory) if directory.is_dir():
            return pack(v2_metrics(directory))
    raise NotFound(f"cgroup {cgroups_path}")


def locate_path(cgroups_path: str) -> CgroupV1 | CgroupV2 | None:
    """Where the cgroup(s) at an absolute cgroupfs path would be in each mounted hierarchy
    (they may not exist); None for a relative path or systemd's `slice:prefix:name`."""
    if not cgroups_path.startswith("/") or ":" in cgroups_path:
        return None
    own = Path("/proc/self/cgroup").read_text(encoding="utf-8")
    membership = "\n".join(
        line.rsplit(":", 1)[0] + ":" + cgroups_path for line in own.splitlines() if line
    )
    return locate(membership, Path("/proc/self/mountinfo").read_text(encoding="utf-8"))


def pack(metrics: v1.Metrics | v2.Metrics) -> any_pb2.Any:
    """An Any with containerd's bare type URL (`Any.Pack` would add a prefix ctr rejects)."""
    type_url = V1_TYPE_URL if isinstance(metrics, v1.Metrics) else V2_TYPE_URL
    return any_pb2.Any(type_url=type_url, value=metrics.SerializeToString())


# --- locating the cgroups (pure) -----------------------------------------------------------


_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class _Mount:
    root: str
    mountpoint: Path
    fstype: str
    super_options: frozenset[str]


def locate(proc_cgroup: str, mountinfo: str) -> CgroupV1 | CgroupV2 | None:
    """Where the process whose /proc/<pid>/cgroup is `proc_cgroup` has its metrics.

    `mountinfo` is the reader's /proc/self/mountinfo (paths in /proc/<pid>/cgroup are relative
    to the reader's cgroup namespace, so its mounts are the ones to join them with).
    """
    mounts = _parse_mountinfo(mountinfo)
    directories: dict[str, Path] = {}
    unified: str | None = None
    for line in proc_cgroup.splitlines():
        hierarchy, sep, rest = line.partition(":")
        controllers, sep2, path = rest.partition(":")
        if not (sep and sep2):
            continue
        if hierarchy == "0" and not controllers:
            unified = path
            continue
        for controller in controllers.split(","):
            if controller not in V1_CONTROLLERS:
                continue
            mount = next(
                (m for m in mounts if m.fstype == "cgroup" and controller in m.super_options),
                None,
            )
            if mount is not None:
                directories[controller] = _join(mount, path)
    if directories:
        return CgroupV1(directories)
    if unified is not None:
        mount = next((m for m in mounts if m.fstype == "cgroup2"), None)
        if mount is not None:
            return CgroupV2(_join(mount, unified))
    return None


def _parse_mountinfo(text: str) -> list[_Mount]:
    mounts = []
    for line in text.splitlines():
        before, sep, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if not sep or len(fields) < 5 or len(tail) < 3:
            continue
        mounts.append(
            _Mount(
                root=_unescape(fields[3]),
                mountpoint=Path(_unescape(fields[4])),
                fstype=tail[0],
                super_options=frozenset(tail[2].split(",")),
            )
        )
    return mounts


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (\\040 ...)."""
    return _OCTAL_ESCAPE.sub(lambda match: chr(int(match[1], 8)), field)


def _join(mount: _Mount, path: str) -> Path:
    root = mount.root.rstrip("/")
    if root and (path == root or path.startswith(root + "/")):
        path = path[len(root) :]
    return mount.mountpoint / path.lstrip("/")


# --- reading files ---------------------------------------------------------------------------


def _read(path: str | Path) -> str | None:
    """The file's text, or None if it (or its cgroup) is not there.

    Plain os.open/os.read: a scrape of /v1/metrics reads ~30 of these files per container, and
    `Path.read_text` (an io.TextIOWrapper over a buffered file) costs ~37 us a file here
    against ~8.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ENODEV:  # the cgroup was removed while we read it
            return None
        raise
    try:
        data = os.read(fd, 65536)
        if len(data) == 65536:  # a large blkio file: read on to the end
            chunks = [data]
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            data = b"".join(chunks)
    except OSError as exc:
        if exc.errno == errno.ENODEV:
            return None
        raise
    finally:
        os.close(fd)
    return data.decode("utf-8")


def _parse_uint(text: str, *, maximum: int = _UINT64_MAX) -> int | None:
    """Like containerd's parseUint: negative numbers read as 0; junk and overflow as None."""
    try:
        value = int(text.strip(), 10)
    except ValueError:
        return None
    if value < 0:
        return 0
    return value if value <= maximum else None


def _read_uint(path: str | Path) -> int | None:
    text = _read(path)
    return None if text is None else _parse_uint(text)


def _read_limit(path: str | Path, *, unlimited: int) -> int | None:
    """A limit file: a number, or "max" (read as `unlimited`)."""
    text = _read(path)
    if text is None:
        return None
    return unlimited if text.strip() == "max" else _parse_uint(text)


def _parse_kv(text: str) -> dict[str, int]:
    """ "key value" lines (memory.stat, cpu.stat, ...); other lines are ignored."""
    # The usual file, every line a key and plain digits, in a few C-level calls (half the time
    # of the loop below; a scrape of /v1/metrics parses four of these per container).
    words = text.split()
    numbers = words[1::2]
    if (
        numbers
        and len(words) == 2 * len(numbers) == 2 * (text.count("\n") + (text[-1] != "\n"))
        and "".join(numbers).isdecimal()
        and max(map(len, numbers)) < 20
    ):
        return dict(zip(words[::2], map(int, numbers), strict=True))
    values: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            # Plain digits (nearly every line) skip _parse_uint's call: memory.stat alone has
            # ~36 lines, and a scrape of /v1/metrics reads one per container.
            number = parts[1]
            value = int(number) if number.isdecimal() and len(number) < 20 else _parse_uint(number)
            if value is not None:
                values[parts[0]] = value
    return values


def _read_kv(path: str | Path) -> dict[str, int] | None:
    text = _read(path)
    return None if text is None else _parse_kv(text)


# The same readers for the CRI's stats (`supervisor.cri.usage`), which read a handful of these
# files per container rather than a whole Metrics.
read_uint = _read_uint
read_limit = _read_limit
read_kv = _read_kv


# --- cgroup v1 -------------------------------------------------------------------------------


def v1_metrics(directories: Mapping[str, Path]) -> v1.Metrics:
    """A v1 Metrics from the cgroup directory of each controller present in `directories`."""
    metrics = v1.Metrics()
    metrics.cpu.usage.SetInParent()
    metrics.cpu.throttling.SetInParent()
    if (directory := directories.get("hugetlb")) is not None:
        metrics.hugetlb.extend(_v1_hugetlb(directory))
    if (directory := directories.get("pids")) is not None:
        _v1_pids(directory, metrics)
    if (directory := directories.get("cpuacct")) is not None:
        _v1_cpuacct(directory, metrics.cpu.usage)
    if (directory := directories.get("cpu")) is not None:
        _v1_cpu(directory, metrics.cpu.throttling)
    if (directory := directories.get("memory")) is not None:
        _v1_memory(directory, metrics)
    if (directory := directories.get("blkio")) is not None:
        _v1_blkio(directory, metrics.blkio)
    if (directory := directories.get("rdma")) is not None:
        _v1_rdma(directory, metrics)
    return metrics


def _v1_hugetlb(directory: Path) -> list[v1.HugetlbStat]:
    # The kernel names the files by page size ("hugetlb.2MB.usage_in_bytes"), as containerd
    # names Pagesize.
    stats = []
    for usage_file in sorted(directory.glob("hugetlb.*.usage_in_bytes")):
        pagesize = usage_file.name.split(".")[1]
        stat = v1.HugetlbStat(pagesize=pagesize)
        for field, suffix in (
            ("usage", "usage_in_bytes"),
            ("max", "max_usage_in_bytes"),
            ("failcnt", "failcnt"),
        ):
            value = _read_uint(f"{directory}/hugetlb.{pagesize}.{suffix}")
            if value is not None:
                setattr(stat, field, value)
        stats.append(stat)
    return stats


def _v1_pids(directory: Path, metrics: v1.Metrics) -> None:
    current = _read_uint(f"{directory}/pids.current")
    if current is None:
        return  # the root cgroup has no pids files
    metrics.pids.current = current
    metrics.pids.limit = _read_limit(f"{directory}/pids.max", unlimited=0) or 0


def _v1_cpuacct(directory: Path, usage: v1.CPUUsage) -> None:
    if (total := _read_uint(f"{directory}/cpuacct.usage")) is not None:
        usage.total = total
    if (percpu := _read(f"{directory}/cpuacct.usage_percpu")) is not None:
        values = [_parse_uint(field) for field in percpu.split()]
        usage.per_cpu.extend(v for v in values if v is not None)
    if (stat := _read_kv(f"{directory}/cpuacct.stat")) is not None:
        # In USER_HZ ticks; containerd converts to nanoseconds.
        ticks = os.sysconf("SC_CLK_TCK")
        usage.user = stat.get("user", 0) * 1_000_000_000 // ticks
        usage.kernel = stat.get("system", 0) * 1_000_000_000 // ticks


def _v1_cpu(directory: Path, throttling: v1.Throttle) -> None:
    stat = _read_kv(f"{directory}/cpu.stat") or {}
    throttling.periods = stat.get("nr_periods", 0)
    throttling.throttled_periods = stat.get("nr_throttled", 0)
    throttling.throttled_time = stat.get("throttled_time", 0)


def _v1_memory(directory: Path, metrics: v1.Metrics) -> None:
    stat = _read_kv(f"{directory}/memory.stat")
    if stat is None:
        return
    memory = metrics.memory
    for key, value in stat.items():
        field = _V1_MEMORY_STAT_RENAMES.get(key, key)
        if field in _V1_MEMORY_STAT_FIELDS:
            setattr(memory, field, value)
    for field, prefix in _V1_MEMORY_ENTRIES.items():
        entry: v1.MemoryEntry = getattr(memory, field)
        entry.SetInParent()
        for name, suffix in (
            ("usage", "usage_in_bytes"),
            ("max", "max_usage_in_bytes"),
            ("failcnt", "failcnt"),
            ("limit", "limit_in_bytes"),
        ):
            number = _read_uint(f"{directory}/{prefix}.{suffix}")
            if number is not None:
                setattr(entry, name, number)
    if (oom := _read_kv(f"{directory}/memory.oom_control")) is not None:
        metrics.memory_oom_control.oom_kill_disable = oom.get("oom_kill_disable", 0)
        metrics.memory_oom_control.under_oom = oom.get("under_oom", 0)
        metrics.memory_oom_control.oom_kill = oom.get("oom_kill", 0)


def _v1_blkio(directory: Path, blkio: v1.BlkIOStat) -> None:
    blkio.SetInParent()
    devices = _devices()
    # As containerd: the recursive files where the kernel has them (CFQ), and the throttle
    # files when those hold nothing (no CFQ device in this cgroup, or no CFQ at all).
    if os.path.exists(f"{directory}/blkio.io_serviced_recursive"):
        for field, name in _V1_BLKIO_RECURSIVE.items():
            getattr(blkio, field).extend(_v1_blkio_entries(f"{directory}/{name}", devices))
    if blkio.ByteSize() == 0:
        for field, name in _V1_BLKIO_THROTTLE.items():
            getattr(blkio, field).extend(_v1_blkio_entries(f"{directory}/{name}", devices))


def _v1_blkio_entries(
    path: str | Path, devices: Mapping[tuple[int, int], str]
) -> list[v1.BlkIOEntry]:
    text = _read(path)
    return [] if text is None else parse_blkio(text, devices)


def parse_blkio(text: str, devices: Mapping[tuple[int, int], str]) -> list[v1.BlkIOEntry]:
    """Lines "major:minor [op] value"; the "Total n" line and malformed lines are skipped."""
    entries = []
    for line in text.splitlines():
        fields = line.replace(":", " ").split()
        if len(fields) not in (3, 4):
            continue
        numbers = [_parse_uint(f) for f in (fields[0], fields[1], fields[-1])]
        major, minor, value = numbers
        if major is None or minor is None or value is None:
            continue
        entries.append(
            v1.BlkIOEntry(
                op=fields[2] if len(fields) == 4 else "",
                device=devices.get((major, minor), ""),
                major=major,
                minor=minor,
                value=value,
            )
        )
    return entries


_partitions: tuple[float, Mapping[tuple[int, int], str]] = (float("-inf"), {})


def _devices() -> Mapping[tuple[int, int], str]:
    """/proc/partitions' names, read at most once a second: a scrape of /v1/metrics asks once
    per container, and a disk appearing is named a second late at worst."""
    global _partitions
    read_at, devices = _partitions
    now = time.monotonic()
    if now - read_at >= 1.0:
        devices = parse_partitions(_read("/proc/partitions") or "")
        _partitions = (now, devices)
    return devices


def parse_partitions(text: str) -> dict[tuple[int, int], str]:
    """/proc/partitions as {(major, minor): "/dev/<name>"} (the first name of a device wins)."""
    devices: dict[tuple[int, int], str] = {}
    for line in text.splitlines()[2:]:
        fields = line.split()
        if len(fields) < 4 or not (fields[0].isdigit() and fields[1].isdigit()):
            continue
        devices.setdefault((int(fields[0]), int(fields[1])), f"/dev/{fields[3]}")
    return devices


def _v1_rdma(directory: Path, metrics: v1.Metrics) -> None:
    current, limit = _read(f"{directory}/rdma.current"), _read(f"{directory}/rdma.max")
    if current is None or limit is None:
        return
    current_lines, limit_lines = current.split("\n"), limit.split("\n")
    if len(current_lines) != len(limit_lines):
        return  # a device came or went between the two reads
    metrics.rdma.current.extend(v1.RdmaEntry(**e) for e in parse_rdma(current_lines))
    metrics.rdma.limit.extend(v1.RdmaEntry(**e) for e in parse_rdma(limit_lines))


def parse_rdma(lines: Iterable[str]) -> list[dict[str, Any]]:
    """Lines "<device> hca_handle=<n|max> hca_object=<n|max>" as RdmaEntry fields."""
    entries = []
    for line in lines:
        parts = line.split()
        if len(parts) != 3:
            continue
        entry: dict[str, Any] = {"device": parts[0]}
        for pair in parts[1:]:
            key, _, text = pair.partition("=")
            value = _UINT32_MAX if text == "max" else _parse_uint(text, maximum=_UINT32_MAX)
            field = {"hca_handle": "hca_handles", "hca_object": "hca_objects"}.get(key)
            if field is not None and value is not None:
                entry[field] = value
        entries.append(entry)
    return entries


# --- cgroup v2 -------------------------------------------------------------------------------


def v2_metrics(directory: Path) -> v2.Metrics:
    """A v2 Metrics from one unified-hierarchy cgroup directory.

    cpu.stat is read whether or not the cpu controller is enabled: without it the kernel still
    keeps usage_usec, user_usec and system_usec there.
    """
    metrics = v2.Metrics()
    pids = metrics.pids
    pids.SetInParent()
    pids.current = _read_uint(f"{directory}/pids.current") or 0
    pids.limit = _read_limit(f"{directory}/pids.max", unlimited=_UINT64_MAX) or 0

    cpu = _read_kv(f"{directory}/cpu.stat") or {}
    metrics.cpu.SetInParent()
    for field in v2.CPUStat.DESCRIPTOR.fields_by_name:
        setattr(metrics.cpu, field, cpu.get(field, 0))

    memory = metrics.memory
    memory.SetInParent()
    stat = _read_kv(f"{directory}/memory.stat") or {}
    for field in v2.MemoryStat.DESCRIPTOR.fields_by_name:
        if field in stat:
            setattr(memory, field, stat[field])
    for field, name in (
        ("usage", "memory.current"),
        ("usage_limit", "memory.max"),
        ("swap_usage", "memory.swap.current"),
        ("swap_limit", "memory.swap.max"),
    ):
        setattr(memory, field, _read_limit(f"{directory}/{name}", unlimited=_UINT64_MAX) or 0)

    if events := _read_kv(f"{directory}/memory.events"):
        for field in v2.MemoryEvents.DESCRIPTOR.fields_by_name:
            setattr(metrics.memory_events, field, events.get(field, 0))

    metrics.io.SetInParent()
    metrics.io.usage.extend(parse_io_stat(_read(f"{directory}/io.stat") or ""))

    metrics.rdma.SetInParent()
    for field, name in (("current", "rdma.current"), ("limit", "rdma.max")):
        lines = (_read(f"{directory}/{name}") or "").split("\n")
        getattr(metrics.rdma, field).extend(v2.RdmaEntry(**e) for e in parse_rdma(lines))

    metrics.hugetlb.extend(_v2_hugetlb(directory))
    return metrics


def parse_io_stat(text: str) -> list[v2.IOEntry]:
    """io.stat lines "major:minor rbytes=n wbytes=n rios=n wios=n dbytes=n dios=n"."""
    entries = []
    for line in text.splitlines():
        device, *pairs = line.split() or [""]
        major_text, sep, minor_text = device.partition(":")
        major, minor = _parse_uint(major_text), _parse_uint(minor_text)
        if not sep or major is None or minor is None:
            continue
        entry = v2.IOEntry(major=major, minor=minor)
        for pair in pairs:
            key, _, text = pair.partition("=")
            value = _parse_uint(text)
            if key in ("rbytes", "wbytes", "rios", "wios") and value is not None:
                setattr(entry, key, value)
        entries.append(entry)
    return entries


def _v2_hugetlb(directory: Path) -> list[v2.HugeTlbStat]:
    stats = []
    for current_file in sorted(directory.glob("hugetlb.*.current")):
        pagesize = current_file.name.split(".")[1]
        stat = v2.HugeTlbStat(pagesize=pagesize)
        stat.current = _read_uint(current_file) or 0
        stat.max = _read_limit(f"{directory}/hugetlb.{pagesize}.max", unlimited=_UINT64_MAX) or 0
        stats.append(stat)
    return stats
