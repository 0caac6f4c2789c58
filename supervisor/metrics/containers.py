"""The containers' cgroup metrics on /v1/metrics, under the names containerd 1.6 gives them.

containerd's cgroups task monitor (metrics/cgroups/v1 and v2) exports, for every task it
monitors, gauges named `container_<name>_<unit>` labelled `container_id` and `namespace`
(plus `cpu`, `op`/`device`/`major`/`minor`, `page` where a file has several entries): the v1
families on a host with v1 controllers (legacy and hybrid), the v2 families on a unified one.
This module gives the same families from the same cgroup files, read through
`supervisor.runtime.metrics` (the readers behind Tasks.Metrics), so `ctr tasks metrics` and a
scrape agree. containerd has no network family; ctrd adds cAdvisor's
`container_network_{receive,transmit}_{bytes,packets,errors,packets_dropped}_total` per
interface, read from /proc/<pid>/net/dev for containers with a network namespace of their own.

Invariants:
- A task is in the scrape from its create to its delete, as containerd monitors it, as long as
  its cgroup is there; a stopped task's cgroup (kept by runc until the delete) is read from
  where it was found while it ran.
- Where a cgroup is is found once per task (its pid's /proc/<pid>/cgroup against the cgroup
  mounts, read once per scrape and only when a new task needs it) and kept while the task lives.
- A scrape never runs on the event loop: `ContainerMetrics.render` locates the tasks on the
  caller's thread (the endpoint's own) and has the reading and formatting done by its
  renderer, the daemon's reader processes (`supervisor.metrics.reader`), each given a
  consecutive slice of the tasks in the scrape's order and answering a `Part`, which
  `assemble` joins family by family; without a renderer, or when one fails, on the caller's
  thread. Processes, not threads: the work is Python under the GIL but for the reads'
  syscalls, and a second reader thread was slower than one; in-thread it also took the GIL
  from every RPC for the whole scrape. The task list is copied from the manager's dict (a
  C-level copy under the GIL) and nothing else of the daemon is touched.
- `render` writes exactly what prometheus_client's `generate_latest` writes for `collect`'s
  families (a test compares them byte for byte), minus families without samples (as Go's
  client omits them): 1000 containers are ~60,000 samples, which generate_latest formats at
  ~7 us each (label names validated and escaped per sample); `render` escapes each
  container's labels once and formats values through the library's own `floatToGoString`,
  memoized: with 1000 containers formatting takes ~0.09 s and reading the ~28 files of each
  ~0.25 s (two thirds of it in the kernel's open/read/close) on this 2-core VM when quiet.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, NamedTuple, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from supervisor.api.io.containerd.cgroups.v1 import metrics_pb2 as v1
from supervisor.api.io.containerd.cgroups.v2 import metrics_pb2 as v2
from supervisor.runtime import metrics as cgroups

Labels = tuple[tuple[str, str], ...]  # a sample's own labels, beside container_id and namespace
Values = Callable[[Any], Iterable[tuple[Labels, float]]]


@dataclass(frozen=True)
class Family:
    """One metric family: its full name, help, type, and its samples from one reading."""

    name: str
    help: str
    values: Values
    type: str = "gauge"


# --- the families (containerd's metrics/cgroups/v1 and v2, in their order) ------------------


def _scalar(section: str, path: str) -> Values:
    """A single value at `path` of the reading, present when its `section` message is."""
    get = attrgetter(path)

    def values(reading: Any) -> Iterable[tuple[Labels, float]]:
        return (((), get(reading)),) if reading.HasField(section) else ()

    return values


def _gauges(prefix: str, section: str, rows: Sequence[tuple[str, str, str, str]]) -> list[Family]:
    return [
        Family(f"{prefix}_{name}_{unit}", text, _scalar(section, path))
        for name, text, unit, path in rows
    ]


def _per_cpu(reading: Any) -> Iterable[tuple[Labels, float]]:
    return (((("cpu", str(i)),), v) for i, v in enumerate(reading.cpu.usage.per_cpu))


def _blkio(field: str) -> Values:
    def values(reading: Any) -> Iterable[tuple[Labels, float]]:
        if not reading.HasField("blkio"):
            return ()
        return (
            (
                (
                    ("device", e.device),
                    ("major", str(e.major)),
                    ("minor", str(e.minor)),
                    ("op", e.op),
                ),
                e.value,
            )
            for e in getattr(reading.blkio, field)
        )

    return values


def _hugetlb(field: str) -> Values:
    def values(reading: Any) -> Iterable[tuple[Labels, float]]:
        return (((("page", h.pagesize),), getattr(h, field)) for h in reading.hugetlb)

    return values


def _v1_oom(reading: Any) -> Iterable[tuple[Labels, float]]:
    # containerd counts the OOM events of the memory cgroup's eventfd; the kernel counts the
    # same kills in memory.oom_control (4.13+), which survives a daemon restart.
    if not reading.HasField("memory"):
        return ()
    return (((), reading.memory_oom_control.oom_kill),)


# memory.{usage,swap,kernel,kernel_tcp} entries: containerd's name, the field, its help word.
_V1_ENTRIES = (
    ("usage", "usage", "memory"),
    ("swap", "swap", "swap"),
    ("kernel", "kernel", "kernel"),
    ("kerneltcp", "kernel_tcp", "kerneltcp"),
)
_V1_MEMORY: list[tuple[str, str, str, str]] = [
    *((k, f"The {k} amount used", "bytes", f"memory.{k}")
      for k in ("cache", "rss", "rss_huge", "mapped_file")),
    *((k, f"The {k} amount", "bytes", f"memory.{f}") for k, f in (
        ("dirty", "dirty"), ("writeback", "writeback"), ("pgpgin", "pg_pg_in"),
        ("pgpgout", "pg_pg_out"), ("pgfault", "pg_fault"), ("pgmajfault", "pg_maj_fault"),
        ("inactive_anon", "inactive_anon"), ("active_anon", "active_anon"),
        ("inactive_file", "inactive_file"), ("active_file", "active_file"),
        ("unevictable", "unevictable"),
        ("hierarchical_memory_limit", "hierarchical_memory_limit"),
        ("hierarchical_memsw_limit", "hierarchical_swap_limit"),
    )),
    *((f"total_{k}", f"The total_{k} amount used", "bytes", f"memory.total_{k}")
      for k in ("cache", "rss", "rss_huge", "mapped_file")),
    *((f"total_{k}", f"The total_{k} amount", "bytes", f"memory.total_{f}") for k, f in (
        ("dirty", "dirty"), ("writeback", "writeback"), ("pgpgin", "pg_pg_in"),
        ("pgpgout", "pg_pg_out"), ("pgfault", "pg_fault"), ("pgmajfault", "pg_maj_fault"),
        ("inactive_anon", "inactive_anon"), ("active_anon", "active_anon"),
        ("inactive_file", "inactive_file"), ("active_file", "active_file"),
        ("unevictable", "unevictable"),
    )),
    *(row for name, field, word in _V1_ENTRIES for row in (
        (f"{name}_failcnt", f"The {'usage' if name == 'usage' else word} failcnt", "total",
         f"memory.{field}.failcnt"),
        (f"{name}_limit", f"The {word} limit", "bytes", f"memory.{field}.limit"),
        (f"{name}_max", f"The {word} maximum usage", "bytes", f"memory.{field}.max"),
        (f"{name}_usage", f"The {word} usage", "bytes", f"memory.{field}.usage"),
    )),
]  # fmt: skip

_BLKIO = (
    ("io_merged_recursive", "The blkio io merged recursive", "total"),
    ("io_queued_recursive", "The blkio io queued recursive", "total"),
    ("io_service_bytes_recursive", "The blkio io service bytes recursive", "bytes"),
    ("io_service_time_recursive", "The blkio io service time recursive", "total"),
    ("io_serviced_recursive", "The blkio io serviced recursive", "total"),
    ("io_time_recursive", "The blkio io time recursive", "total"),
    ("sectors_recursive", "The blkio sectors recursive", "total"),
)

V1_FAMILIES: tuple[Family, ...] = (
    Family("container_pids_limit", "The limit to the number of pids allowed",
           _scalar("pids", "pids.limit")),
    Family("container_pids_current", "The current number of pids",
           _scalar("pids", "pids.current")),
    *_gauges("container", "cpu", [
        ("cpu_total", "The total cpu time", "nanoseconds", "cpu.usage.total"),
        ("cpu_kernel", "The total kernel cpu time", "nanoseconds", "cpu.usage.kernel"),
        ("cpu_user", "The total user cpu time", "nanoseconds", "cpu.usage.user"),
    ]),
    Family("container_per_cpu_nanoseconds", "The total cpu time per cpu", _per_cpu),
    *_gauges("container", "cpu", [
        ("cpu_throttle_periods", "The total cpu throttle periods", "total",
         "cpu.throttling.periods"),
        ("cpu_throttled_periods", "The total cpu throttled periods", "total",
         "cpu.throttling.throttled_periods"),
        ("cpu_throttled_time", "The total cpu throttled time", "nanoseconds",
         "cpu.throttling.throttled_time"),
    ]),
    *_gauges("container", "memory", [(f"memory_{n}", h, u, p) for n, h, u, p in _V1_MEMORY]),
    Family("container_hugetlb_usage_bytes", "The hugetlb usage", _hugetlb("usage")),
    Family("container_hugetlb_failcnt_total", "The hugetlb failcnt", _hugetlb("failcnt")),
    Family("container_hugetlb_max_bytes", "The hugetlb maximum usage", _hugetlb("max")),
    *(Family(f"container_blkio_{name}_{unit}", text, _blkio(name)) for name, text, unit in _BLKIO),
    Family("container_memory_oom_total",
           "The number of times a container has received an oom event", _v1_oom),
)  # fmt: skip


def _io(field: str) -> Values:
    def values(reading: Any) -> Iterable[tuple[Labels, float]]:
        return (
            ((("major", str(e.major)), ("minor", str(e.minor))), getattr(e, field))
            for e in reading.io.usage
        )

    return values


_V2_MEMORY_STAT = (
    "file_mapped", "file_dirty", "file_writeback", "pgactivate", "pgdeactivate", "pgfault",
    "pgmajfault", "pglazyfree", "pgrefill", "pglazyfreed", "pgscan", "pgsteal",
    "inactive_anon", "active_anon", "inactive_file", "active_file", "unevictable", "anon",
    "file", "kernel_stack", "slab", "sock", "shmem", "anon_thp", "slab_reclaimable",
    "slab_unreclaimable", "workingset_refault", "workingset_activate",
    "workingset_nodereclaim", "thp_fault_alloc", "thp_collapse_alloc",
)  # fmt: skip

V2_FAMILIES: tuple[Family, ...] = (
    Family("container_pids_limit", "The limit to the number of pids allowed (cgroup v2)",
           _scalar("pids", "pids.limit")),
    Family("container_pids_current", "The current number of pids (cgroup v2)",
           _scalar("pids", "pids.current")),
    *_gauges("container", "cpu", [
        ("cpu_usage_usec", "Total cpu usage (cgroup v2)", "microseconds", "cpu.usage_usec"),
        ("cpu_user_usec", "Current cpu usage in user space (cgroup v2)", "microseconds",
         "cpu.user_usec"),
        ("cpu_system_usec", "Current cpu usage in kernel space (cgroup v2)", "microseconds",
         "cpu.system_usec"),
        ("cpu_nr_periods", "Current cpu number of periods (only if controller is enabled)",
         "total", "cpu.nr_periods"),
        ("cpu_nr_throttled", "Total number of times tasks have been throttled (only if "
         "controller is enabled)", "total", "cpu.nr_throttled"),
        ("cpu_throttled_usec", "Total time duration for which tasks have been throttled. "
         "(only if controller is enabled)", "microseconds", "cpu.throttled_usec"),
    ]),
    *_gauges("container", "memory", [
        ("memory_usage", "Current memory usage (cgroup v2)", "bytes", "memory.usage"),
        ("memory_usage_limit", "Current memory usage limit (cgroup v2)", "bytes",
         "memory.usage_limit"),
        ("memory_swap_usage", "Current swap usage (cgroup v2)", "bytes", "memory.swap_usage"),
        ("memory_swap_limit", "Current swap usage limit (cgroup v2)", "bytes",
         "memory.swap_limit"),
        *((f"memory_{key}", f"The {key} amount", "bytes", f"memory.{key}")
          for key in _V2_MEMORY_STAT),
    ]),
    Family("container_memory_oom_total",
           "The number of times a container has received an oom event",
           _scalar("memory_events", "memory_events.oom")),
    Family("container_io_rbytes_bytes", "IO bytes read", _io("rbytes")),
    Family("container_io_wbytes_bytes", "IO bytes written", _io("wbytes")),
    Family("container_io_rios_total", "Number of read IOs", _io("rios")),
    Family("container_io_wios_total", "Number of write IOs", _io("wios")),
)  # fmt: skip

# /proc/<pid>/net/dev columns: 8 receive counters, then 8 transmit ones.
_NET_COLUMNS = {"bytes": 0, "packets": 1, "errors": 2, "packets_dropped": 3}


def _network(direction: str, what: str) -> Values:
    column = _NET_COLUMNS[what] + (8 if direction == "transmit" else 0)

    def values(reading: Any) -> Iterable[tuple[Labels, float]]:
        return (((("interface", name),), counters[column]) for name, counters in reading)

    return values


_NET_HELP = {
    "bytes": "bytes {done}",
    "packets": "packets {done}",
    "errors": "errors encountered while {doing}",
    "packets_dropped": "packets dropped while {doing}",
}
_NET_DIRECTIONS = {
    "receive": ("received", "receiving"),
    "transmit": ("transmitted", "transmitting"),
}

# cAdvisor's names and help texts (containerd 1.6 exports no network family).
NETWORK_FAMILIES: tuple[Family, ...] = tuple(
    Family(
        f"container_network_{direction}_{what}_total",
        "Cumulative count of " + _NET_HELP[what].format(done=done, doing=doing),
        _network(direction, what),
        type="counter",
    )
    for direction, (done, doing) in _NET_DIRECTIONS.items()
    for what in _NET_COLUMNS
)


# --- reading ----------------------------------------------------------------------------------


class TaskLike(Protocol):
    namespace: str
    id: str
    pid: int
    dead: bool
    exits: Any


@dataclass(frozen=True)
class Reading:
    """One container's numbers from one scrape."""

    namespace: str
    id: str
    cgroup: v1.Metrics | v2.Metrics
    network: tuple[tuple[str, tuple[int, ...]], ...] = ()


@dataclass(frozen=True)
class _Place:
    """Where a task's numbers are: its cgroup(s) and, if it has one, its own netns's pid."""

    cgroup: cgroups.CgroupV1 | cgroups.CgroupV2
    net_pid: int  # 0: the host's network (nothing of the container's own to report)


def parse_net_dev(text: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """/proc/<pid>/net/dev as (interface, 16 counters), loopback left out."""
    out = []
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        name = name.strip()
        fields = rest.split()
        if not sep or name == "lo" or len(fields) < 16:
            continue
        try:
            out.append((name, tuple(int(f) for f in fields[:16])))
        except ValueError:
            continue
    return tuple(out)


def _read_text(path: str) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks).decode()
    except OSError:
        return None
    finally:
        os.close(fd)


def _cgroup_mounts() -> str:
    """The cgroup lines of this process's mountinfo (all `locate` looks at): with a thousand
    containers mountinfo holds thousands of overlay and netns lines."""
    text = _read_text("/proc/self/mountinfo") or ""
    return "\n".join(line for line in text.splitlines() if " - cgroup" in line)


def _host_netns() -> str:
    try:
        return os.readlink("/proc/self/ns/net")
    except OSError:
        return ""


class Target(NamedTuple):
    """What a reader needs of one task: its names, whether it stopped, and where it is."""

    namespace: str
    id: str
    stopped: bool
    place: _Place


class Renderer(Protocol):
    """Renders parts of a scrape elsewhere (`supervisor.metrics.reader.ReaderPool`): `submit`
    starts it, the call it returns waits for the parts (None if it failed)."""

    def submit(self, targets: list[Target]) -> Callable[[], list[Part] | None]: ...


class ContainerMetrics:
    """The containers' families of one daemon, read from its task manager at each scrape.

    With a `renderer`, a scrape is read and formatted by it (in reader processes, off the
    daemon's GIL); without one, or when it fails, on the caller's thread.
    """

    def __init__(
        self, tasks: Callable[[], Sequence[TaskLike]], renderer: Renderer | None = None
    ) -> None:
        self._tasks = tasks
        self._renderer = renderer
        self._places: dict[tuple[str, str, int], _Place] = {}
        self._lock = threading.Lock()  # one scrape at a time reads and updates _places

    # -- reading ------------------------------------------------------------------------------

    def read(self) -> list[Reading]:
        """Every monitored task's numbers now (blocking: call it off the event loop)."""
        with self._lock:
            return _read_all(self._targets())

    def _targets(self) -> list[Target]:
        """The monitored tasks, located, in the scrape's order (namespace, then id)."""
        tasks = [t for t in list(self._tasks()) if t.pid > 0 and not t.dead]
        targets = self._locate(tasks)
        targets.sort(key=lambda t: (t.namespace, t.id))
        return targets

    def _locate(self, tasks: list[TaskLike]) -> list[Target]:
        mounts: str | None = None
        host_net = ""
        live: dict[tuple[str, str, int], _Place] = {}
        out = []
        for task in tasks:
            key = (task.namespace, task.id, task.pid)
            place = self._places.get(key)
            if place is None:
                if "" in task.exits:
                    continue  # stopped before we saw it: its cgroup cannot be found by pid
                if mounts is None:
                    mounts, host_net = _cgroup_mounts(), _host_netns()
                place = _find(task.pid, mounts, host_net)
                if place is None:
                    continue
            live[key] = place
            out.append(Target(task.namespace, task.id, "" in task.exits, place))
        self._places = live  # deleted tasks are forgotten
        return out

    # -- the two outputs ----------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        """The families as prometheus_client metrics (every family, even without samples)."""
        return metrics_of(self.read())

    def render(self) -> str:
        """The families in the Prometheus text format (see the module's docstring)."""
        return self.render_later()()

    def render_later(self) -> Callable[[], str]:
        """Start a `render` (the renderer's share goes to work now); the call returned, which
        must be made, finishes it, so the caller may do other work in between."""
        with self._lock:
            targets = self._targets()
        if self._renderer is None or not targets:
            return lambda: render(_read_all(targets))
        collect = self._renderer.submit(targets)

        def finish() -> str:
            parts = collect()
            return render(_read_all(targets)) if parts is None else assemble(parts)

        return finish


def metrics_of(readings: list[Reading]) -> Iterator[Metric]:
    """`readings` as prometheus_client metric families (what `render` writes as text)."""
    for family, selected in _families(readings):
        metric: Metric
        if family.type == "counter":
            metric = CounterMetricFamily(family.name.removesuffix("_total"), family.help)
        else:
            metric = GaugeMetricFamily(family.name, family.help)
        for reading, source, values in selected:
            own = (("container_id", reading.id), ("namespace", reading.namespace))
            for labels, value in values(source):
                metric.add_sample(family.name, dict((*own, *labels)), value)
        yield metric


def _find(pid: int, mounts: str, host_net: str) -> _Place | None:
    membership = _read_text(f"/proc/{pid}/cgroup")
    if membership is None:
        return None
    cgroup = cgroups.locate(membership, mounts)
    if cgroup is None:
        return None
    try:
        own_net = os.readlink(f"/proc/{pid}/ns/net") != host_net
    except OSError:
        own_net = False
    return _Place(cgroup, pid if own_net else 0)


def _read_all(targets: list[Target]) -> list[Reading]:
    readings = []
    for namespace, cid, stopped, place in targets:
        cgroup = place.cgroup
        # A stopped task's cgroup goes at its delete, which may be under way: a reader finds
        # missing files as zeros, so look first (a running task's cgroup is there).
        if stopped and not _exists(cgroup):
            continue
        if isinstance(cgroup, cgroups.CgroupV1):
            numbers: v1.Metrics | v2.Metrics = cgroups.v1_metrics(cgroup.directories)
        else:
            numbers = cgroups.v2_metrics(cgroup.directory)
        network: tuple[tuple[str, tuple[int, ...]], ...] = ()
        if place.net_pid and not stopped:
            text = _read_text(f"/proc/{place.net_pid}/net/dev")
            network = parse_net_dev(text) if text else ()
        readings.append(Reading(namespace, cid, numbers, network))
    return readings


def _exists(cgroup: cgroups.CgroupV1 | cgroups.CgroupV2) -> bool:
    if isinstance(cgroup, cgroups.CgroupV1):
        return any(d.is_dir() for d in cgroup.directories.values())
    return cgroup.directory.is_dir()


Selected = list[tuple[Reading, Any, Values]]  # a reading, its part a family reads, and how


def _sets(has_v1: bool, has_v2: bool) -> list[tuple[tuple[Family, ...], str]]:
    """The family sets a scrape gives, in order, each with the kind of reading it reads:
    v1's when it has v1 cgroups or none of either, v2's when it has v2 ones, the network's."""
    return [
        *([(V1_FAMILIES, "v1")] if has_v1 or not has_v2 else []),
        *([(V2_FAMILIES, "v2")] if has_v2 else []),
        (NETWORK_FAMILIES, "network"),
    ]


def _families(readings: list[Reading]) -> Iterator[tuple[Family, Selected]]:
    """Each family with the readings (and the part of each) it draws its samples from."""
    v1s = [r for r in readings if isinstance(r.cgroup, v1.Metrics)]
    v2s = [r for r in readings if isinstance(r.cgroup, v2.Metrics)]
    # A host is v1 or v2 throughout (containerd picks one set for the host); should both
    # appear, a name the two sets share is given once (the first set's help), with the
    # samples of both, each read by its own set's family.
    sources: dict[str, list[tuple[Reading, Any]]] = {
        "v1": [(r, r.cgroup) for r in v1s],
        "v2": [(r, r.cgroup) for r in v2s],
        "network": [(r, r.network) for r in readings],
    }
    seen: dict[str, tuple[Family, Selected]] = {}
    for families, kind in _sets(bool(v1s), bool(v2s)):
        for family in families:
            selected = [(r, source, family.values) for r, source in sources[kind]]
            if family.name in seen:
                seen[family.name][1].extend(selected)
            else:
                seen[family.name] = (family, selected)
    yield from seen.values()


def _headers(has_v1: bool, has_v2: bool) -> Iterator[tuple[str, str]]:
    """Each family's name and its HELP and TYPE lines, in `_families`' order for readings of
    those kinds."""
    seen = set()
    for families, _ in _sets(has_v1, has_v2):
        for family in families:
            if family.name not in seen:
                seen.add(family.name)
                yield (
                    family.name,
                    f"# HELP {family.name} {family.help}\n# TYPE {family.name} {family.type}\n",
                )


# --- the text format -------------------------------------------------------------------------

_go_float = functools.lru_cache(maxsize=1 << 14)(floatToGoString)


def _escape(value: str) -> str:
    """A label value as the text format quotes it (prometheus_client's ALLOWUTF8 escaping)."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class Part(NamedTuple):
    """Some containers' share of a scrape: the kinds of cgroup they had and, per family
    name, their sample lines."""

    has_v1: bool
    has_v2: bool
    lines: dict[str, str]


def render(readings: list[Reading]) -> str:
    """`readings` in the Prometheus text format; families without samples are left out."""
    return assemble([_part(readings)])


def render_part(targets: list[Target]) -> Part:
    """The share of a scrape of `targets` (a reader process's work)."""
    return _part(_read_all(targets))


def assemble(parts: Sequence[Part]) -> str:
    """The exposition of consecutive parts: each family's header, then its lines from each
    part in turn; families without samples are left out."""
    has_v1 = any(p.has_v1 for p in parts)
    has_v2 = any(p.has_v2 for p in parts)
    out: list[str] = []
    for name, header in _headers(has_v1, has_v2):
        chunks = [text for p in parts if (text := p.lines.get(name))]
        if chunks:
            out.append(header)
            out.extend(chunks)
    return "".join(out)


def _part(readings: list[Reading]) -> Part:
    plain = {
        id(r): f'container_id="{_escape(r.id)}",namespace="{_escape(r.namespace)}"'
        for r in readings
    }
    # Label sets beyond the two recur across families (a device's in the seven blkio ones, an
    # interface's in the eight network ones): each is formatted once per container.
    labelled: dict[tuple[int, Labels], str] = {}
    out: dict[str, str] = {}
    for family, selected in _families(readings):
        lines: list[str] = []
        name = family.name
        for reading, source, values in selected:
            rid = id(reading)
            for labels, value in values(source):
                if not labels:
                    text = plain[rid]
                elif (text := labelled.get((rid, labels), "")) == "":
                    own = ((k, _escape(v)) for k, v in labels)
                    pairs = (("container_id", _escape(reading.id)),
                             ("namespace", _escape(reading.namespace)), *own)  # fmt: skip
                    text = ",".join(f'{k}="{v}"' for k, v in sorted(pairs))
                    labelled[(rid, labels)] = text
                lines.append(f"{name}{{{text}}} {_go_float(value)}\n")
        if lines:
            out[name] = "".join(lines)
    return Part(
        any(isinstance(r.cgroup, v1.Metrics) for r in readings),
        any(isinstance(r.cgroup, v2.Metrics) for r in readings),
        out,
    )
