"""`ctrctl top` and `ctrctl stats`: what a container's processes are doing, as docker shows it.

`top` lists the task's processes (Tasks.ListPids: host pids, as docker's) in `ps -ef`'s
columns, read from the host's /proc (ctrd's socket is local, so its /proc is ours).

`stats` decodes Tasks.Metrics, cgroup v1 or v2, into docker's columns with docker's formulas:

- CPU % = Δ container CPU time / Δ host CPU time (/proc/stat's first seven "cpu" fields)
  * online CPUs * 100, over two samples: 0.5 s apart for the first figure (docker's daemon keeps
  the previous sample itself), then from one refresh (1 s) to the next.
- MEM USAGE is the cgroup's usage less its inactive file cache (`total_inactive_file` on v1,
  `inactive_file` on v2); LIMIT is the cgroup's limit, or the host's memory when the cgroup
  has none (or a larger one); MEM % = usage / limit.
- NET I/O sums the container's own network namespace's interfaces but `lo` (/proc/PID/net/dev);
  a container on the host's network shows 0B, as docker's. BLOCK I/O sums the cgroup's read
  and write bytes. PIDS is the cgroup's pids.current.

Streaming redraws the table every second on a terminal and prints successive tables (or JSON
lines) otherwise; Ctrl-C ends it with status 0, as docker's.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ctl.client import Client

FIRST_INTERVAL = 0.5  # seconds between the two samples of the first figure
REFRESH = 1.0  # seconds between frames when streaming
HEADER = ["CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "NET I/O", "BLOCK I/O",
          "PIDS"]  # fmt: skip
TOP_HEADER = ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]


def add_parsers(commands: Any) -> None:
    top = commands.add_parser(
        "top",
        help="show a container's processes",
        description="The running processes of a container (host pids) in ps -ef's columns:"
        " UID PID PPID C STIME TTY TIME CMD. ps options are accepted and ignored.",
    )
    top.add_argument("container", metavar="CONTAINER")
    top.add_argument("ps_options", nargs=argparse.REMAINDER, metavar="PS OPTIONS")
    top.set_defaults(handler="ctl.stats:top+client")
    stats = commands.add_parser(
        "stats",
        help="show containers' resource usage",
        description="CPU, memory, network, block I/O and pids of containers (running ones"
        " unless -a or named), refreshed every second until Ctrl-C, or once with --no-stream.",
    )
    stats.add_argument("-a", "--all", action="store_true", help="also stopped containers")
    stats.add_argument("--no-stream", action="store_true", help="one figure, then exit")
    stats.add_argument("--format", choices=["table", "json"], default="table")
    stats.add_argument("containers", nargs="*", metavar="CONTAINER")
    stats.set_defaults(handler="ctl.stats:stats+client")


# --- top ----------------------------------------------------------------------------------------


def top(client: Client, args: argparse.Namespace) -> int:
    from ctl.table import table
    from supervisor.api.containerd.services.tasks.v1 import tasks_pb2 as tpb
    from supervisor.api.containerd.types.task import task_pb2 as task_types

    cid = client.resolve(args.container)
    task = client.task(cid)
    if task is None or task.status not in (task_types.RUNNING, task_types.PAUSED):
        raise ValueError(f"container {args.container} is not running")
    listed = client.tasks.ListPids(tpb.ListPidsRequest(container_id=cid), metadata=client.md)
    now, boot, ticks = time.time(), _boot_time(), os.sysconf("SC_CLK_TCK")
    rows = [row for p in listed.processes if (row := ps_row(p.pid, now, boot, ticks))]
    rows.sort(key=lambda r: int(r[1]))
    table(TOP_HEADER, rows, shrink=(7,))
    return 0


@functools.cache
def _boot_time() -> float:
    """When the host booted (read once: `ps` asks for every container)."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime "):
                return float(line.split()[1])
    return 0.0


def process_start(pid: int) -> float | None:
    """When a host process started (seconds since the epoch), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return _boot_time() + int(stat[stat.rindex(")") + 2 :].split()[19]) / ticks


def ps_row(pid: int, now: float, boot: float, ticks: int) -> list[str] | None:
    """`ps -ef`'s columns for a host pid, or None if it is gone."""
    import pwd

    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
    except OSError:
        return None
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()  # from field 3 (state) on
    ppid, tty_nr = int(fields[1]), int(fields[4])
    cpu_seconds = (int(fields[11]) + int(fields[12])) / ticks
    started = boot + int(fields[19]) / ticks
    uid = next((int(line.split()[2]) for line in status.splitlines() if line.startswith("Uid:")), 0)
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    elapsed = max(now - started, 1e-9)
    command = cmdline.rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace") or f"[{comm}]"
    return [
        user,
        str(pid),
        str(ppid),
        str(int(cpu_seconds * 100 / elapsed)),
        _stime(started, now),
        _tty(tty_nr),
        _cputime(cpu_seconds),
        command,
    ]


def _stime(started: float, now: float) -> str:
    """As ps: HH:MM within a day, else MonDD within the year, else the year."""
    when = time.localtime(started)
    if now - started < 24 * 3600:
        return time.strftime("%H:%M", when)
    if when.tm_year == time.localtime(now).tm_year:
        return time.strftime("%b%d", when)
    return time.strftime("%Y", when)


def _tty(tty_nr: int) -> str:
    if tty_nr == 0:
        return "?"
    major, minor = (tty_nr >> 8) & 0xFFF, (tty_nr & 0xFF) | ((tty_nr >> 12) & 0xFFF00)
    if 136 <= major <= 143:
        return f"pts/{(major - 136) * 256 + minor}"
    if major == 4:
        return f"tty{minor}"
    return f"{major}:{minor}"


def _cputime(seconds: float) -> str:
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    text = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}-{text}" if days else text


# --- stats --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One reading of a container's cgroup (and of the host's CPU time at that moment)."""

    cpu: int  # ns of CPU the container used
    system: int  # ns of CPU the host used (all CPUs)
    online_cpus: int
    memory: int  # usage less inactive file cache
    memory_limit: int
    pids: int
    block_read: int
    block_write: int
    net_rx: int
    net_tx: int


def system_cpu() -> int:
    """The host's CPU time in ns: /proc/stat's first seven "cpu" fields (as docker's daemon)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(x) for x in fields[1:8]) * 1_000_000_000 // ticks


def machine_memory() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def decode(data: Any, system: int, host_memory: int) -> Sample | None:
    """A Sample from a Metric's data (an Any of cgroups v1 or v2 Metrics); None for data of
    another type or that does not parse (that container is left out, not the command ended)."""
    from supervisor import anys
    from supervisor.api.io.containerd.cgroups.v1 import metrics_pb2 as v1
    from supervisor.api.io.containerd.cgroups.v2 import metrics_pb2 as v2

    metrics = anys.unpack(data)
    online = os.sysconf("SC_NPROCESSORS_ONLN")
    if isinstance(metrics, v2.Metrics):
        m2 = metrics
        usage = m2.memory.usage
        inactive = m2.memory.inactive_file
        return Sample(
            cpu=m2.cpu.usage_usec * 1000,
            system=system,
            online_cpus=online,
            memory=usage - inactive if inactive < usage else usage,
            memory_limit=_limit(m2.memory.usage_limit, host_memory),
            pids=m2.pids.current,
            block_read=sum(e.rbytes for e in m2.io.usage),
            block_write=sum(e.wbytes for e in m2.io.usage),
            net_rx=0,
            net_tx=0,
        )
    if not isinstance(metrics, v1.Metrics):
        return None
    m1 = metrics
    usage = m1.memory.usage.usage
    inactive = m1.memory.total_inactive_file
    entries = m1.blkio.io_service_bytes_recursive
    return Sample(
        cpu=m1.cpu.usage.total,
        system=system,
        online_cpus=online or len(m1.cpu.usage.per_cpu),
        memory=usage - inactive if inactive < usage else usage,
        memory_limit=_limit(m1.memory.usage.limit, host_memory),
        pids=m1.pids.current,
        block_read=sum(e.value for e in entries if e.op.lower() == "read"),
        block_write=sum(e.value for e in entries if e.op.lower() == "write"),
        net_rx=sum(n.rx_bytes for n in m1.network),
        net_tx=sum(n.tx_bytes for n in m1.network),
    )


def _limit(limit: int, host_memory: int) -> int:
    """No limit (or one above the machine's memory) reads as the machine's memory, as docker."""
    if host_memory and (limit == 0 or limit > host_memory):
        return host_memory
    return limit


def network(pid: int) -> tuple[int, int]:
    """(rx, tx) bytes of the interfaces in `pid`'s network namespace but lo; (0, 0) on the
    host's network or when unreadable."""
    try:
        if os.readlink(f"/proc/{pid}/ns/net") == os.readlink("/proc/self/ns/net"):
            return 0, 0
        with open(f"/proc/{pid}/net/dev") as f:
            lines = f.readlines()[2:]
    except OSError:
        return 0, 0
    rx = tx = 0
    for line in lines:
        name, _, counters = line.partition(":")
        values = counters.split()
        if name.strip() != "lo" and len(values) >= 9:
            rx += int(values[0])
            tx += int(values[8])
    return rx, tx


def cpu_percent(previous: Sample | None, current: Sample) -> float:
    """docker's calculateCPUPercentUnix."""
    if previous is None:
        return 0.0
    cpu_delta = current.cpu - previous.cpu
    system_delta = current.system - previous.system
    if system_delta > 0 and cpu_delta > 0:
        return cpu_delta / system_delta * current.online_cpus * 100.0
    return 0.0


@dataclass(frozen=True)
class Target:
    id: str
    name: str


def sample(client: Client, targets: list[Target]) -> dict[str, Sample]:
    """One reading of every target that has a live task (others are left out)."""
    from supervisor.api.containerd.services.tasks.v1 import tasks_pb2 as tpb

    wanted = {t.id for t in targets}
    system = system_cpu()
    host_memory = machine_memory()
    response = client.tasks.Metrics(tpb.MetricsRequest(), metadata=client.md)
    samples = {}
    for metric in response.metrics:
        if metric.id not in wanted:
            continue
        reading = decode(metric.data, system, host_memory)
        if reading is None:
            continue
        if not (reading.net_rx or reading.net_tx):
            task = client.task(metric.id)
            if task is not None and task.pid:
                rx, tx = network(task.pid)
                reading = dataclasses.replace(reading, net_rx=rx, net_tx=tx)
        samples[metric.id] = reading
    return samples


def _targets(client: Client, args: argparse.Namespace) -> list[Target]:
    from ctl.client import NAME_LABEL
    from supervisor.api.containerd.types.task import task_pb2 as task_types

    containers = {c.id: c for c in client.list_containers()}
    if args.containers:
        ids = list(dict.fromkeys(client.resolve(name) for name in args.containers))
    else:
        ids = []
        for cid in containers:
            task = client.task(cid)
            live = task is not None and task.status in (task_types.RUNNING, task_types.PAUSED)
            if live or args.all:
                ids.append(cid)
    return [
        Target(cid, containers[cid].labels.get(NAME_LABEL, cid) if cid in containers else cid)
        for cid in ids
    ]


def rows(
    targets: list[Target], previous: dict[str, Sample], current: dict[str, Sample]
) -> list[dict[str, Any]]:
    out = []
    for target in targets:
        now = current.get(target.id)
        row: dict[str, Any] = {"id": target.id, "name": target.name}
        if now is None:
            row.update(cpuPercent=0.0, memoryUsage=0, memoryLimit=0, memoryPercent=0.0,
                       netRx=0, netTx=0, blockRead=0, blockWrite=0, pids=0)  # fmt: skip
        else:
            row.update(
                cpuPercent=round(cpu_percent(previous.get(target.id), now), 2),
                memoryUsage=now.memory,
                memoryLimit=now.memory_limit,
                memoryPercent=round(now.memory * 100 / now.memory_limit, 2)
                if now.memory_limit
                else 0.0,
                netRx=now.net_rx,
                netTx=now.net_tx,
                blockRead=now.block_read,
                blockWrite=now.block_write,
                pids=now.pids,
            )
        out.append(row)
    return out


def cells(row: dict[str, Any]) -> list[str]:
    from ctl.client import short
    from ctl.table import bytes_size, human_size

    return [
        short(row["id"]),
        row["name"],
        f"{row['cpuPercent']:.2f}%",
        f"{bytes_size(row['memoryUsage'])} / {bytes_size(row['memoryLimit'])}",
        f"{row['memoryPercent']:.2f}%",
        f"{human_size(row['netRx'], 3)} / {human_size(row['netTx'], 3)}",
        f"{human_size(row['blockRead'], 3)} / {human_size(row['blockWrite'], 3)}",
        str(row["pids"]),
    ]


def stats(client: Client, args: argparse.Namespace) -> int:
    try:
        return _stats(client, args)
    except KeyboardInterrupt:
        return 0  # docker's stats ends with 0 when interrupted


def _stats(client: Client, args: argparse.Namespace) -> int:
    from ctl.table import render, terminal_width

    out = sys.stdout
    tty = out.isatty()
    targets = _targets(client, args)
    previous = sample(client, targets)
    time.sleep(FIRST_INTERVAL)
    while True:
        current = sample(client, targets)
        frame = rows(targets, previous, current)
        if args.format == "json":
            out.write(json.dumps(frame, indent=2 if args.no_stream else None) + "\n")
        else:
            if tty and not args.no_stream:
                out.write("\x1b[2J\x1b[H")  # clear the screen, as docker's stats does
            lines = render(HEADER, [cells(r) for r in frame], terminal_width(out), shrink=(1,))
            out.write("\n".join(lines) + "\n")
        out.flush()
        if args.no_stream:
            return 0
        time.sleep(REFRESH)
        previous = current
        if not args.containers:
            targets = _targets(client, args)  # containers come and go
