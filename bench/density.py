"""Density: N containers that `sleep 100000`, per daemon: how fast they start, what they cost.

For each daemon in turn (the other one idle, so that the two sets of N do not share the host's
memory and CPU), after a warm-up `ctr run --rm … true` and a baseline of the daemon's memory:

- start: N times `ctr run -d IMG <id> sleep 100000`, one at a time (or `--parallel P` at once);
  the wall time for all of them and containers/s, and the median `ctr run -d`;
- memory, once the host has settled: the PSS and RSS (smaps_rollup) of the daemon's shims
  (found by walking /proc for shims naming its socket: see procs.py), of the container
  processes (the shims' descendants), and the daemon's own growth over its baseline; the total
  per container is (shim PSS + container PSS + daemon PSS growth) / N. (PSS splits a shared
  page among its users: a daemon whose shims map its own libraries, as ctrd's Python shims
  do, sees its PSS shrink, so its growth can be negative; the sum stays right.) The drop of
  the host's MemAvailable per container is shown too: it holds kernel memory (cgroups,
  namespaces, mounts) but also whatever else the host did meanwhile;
- remove: `ctr tasks rm -f` (SIGKILL, wait, delete) then `ctr containers rm`, by batches.

With the host's KSM running (/sys/kernel/mm/ksm/run, which ctrd's set-up turns on), ctrd's
shims offer the pages they copy from their zygote to it (shim/memory.py; containerd's do not).
Merging takes a few full scans of ksmd, so memory is measured once the count of merged pages
has stopped growing over two full scans (at most `--ksm-wait` seconds), for both daemons alike;
the time that took and ksmd's CPU meanwhile are shown.

Rounds (`--rounds`) alternate the daemons' order; the table shows medians over rounds.

    /opt/ctrd/bin/python bench/density.py [-n 100] [--parallel 1] [--rounds 1] [--settle 5]
                             [--ksm-wait 600] [--ksm-pages-to-scan N]
                             [--daemons ctrd,containerd]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import procs
from common import (
    DAEMONS,
    NAMESPACE,
    Daemon,
    daemons,
    import_busybox,
    parse_daemons,
    remove_containers,
    scratch_dir,
    settle,
    start_sleepers,
    wait_gone,
)

MIB = 1 << 20


@dataclass(frozen=True)
class Footprint:
    shims: procs.Memory
    containers: procs.Memory
    daemon: procs.Memory


@dataclass(frozen=True)
class Result:
    n: int
    running: int  # tasks ctr lists as RUNNING once all were started
    start_wall: float
    start_median: float
    before: Footprint
    after: Footprint
    host_drop: int  # MemAvailable before - after, bytes
    remove_wall: float
    ksm_wait: float  # seconds until KSM had merged what it would (0: KSM off)
    ksmd_cpu: float  # ksmd's CPU meanwhile, % of one core

    def rows(self) -> dict[str, float]:
        n = self.n
        growth = self.after.daemon - self.before.daemon
        total = self.after.shims.pss + self.after.containers.pss + growth.pss
        return {
            "containers running": self.running,
            "start: wall (s)": self.start_wall,
            "start: rate (containers/s)": n / self.start_wall,
            "start: median ctr run -d (ms)": self.start_median * 1000,
            "shim processes": self.after.shims.count,
            "shim PSS per container (MiB)": self.after.shims.pss / n / MIB,
            "shim RSS per container (MiB)": self.after.shims.rss / n / MIB,
            "container processes": self.after.containers.count,
            "container PSS per container (MiB)": self.after.containers.pss / n / MIB,
            "container RSS per container (MiB)": self.after.containers.rss / n / MIB,
            "daemon PSS before (MiB)": self.before.daemon.pss / MIB,
            "daemon PSS growth (MiB)": growth.pss / MIB,
            "daemon RSS growth (MiB)": growth.rss / MIB,
            "total PSS per container (MiB)": total / n / MIB,
            "host MemAvailable drop per container (MiB, noisy)": self.host_drop / n / MIB,
            "KSM: wait until merged (s)": self.ksm_wait,
            "KSM: ksmd CPU meanwhile (% of a core)": self.ksmd_cpu,
            "remove: wall (s)": self.remove_wall,
        }


def footprint(daemon: Daemon) -> Footprint:
    table = procs.table()
    shims = procs.shims_of(table, daemon.address, daemon.base)
    inside = procs.descendants(table, shims) - shims
    own = ({daemon.proc.pid} | procs.descendants(table, [daemon.proc.pid])) - shims - inside
    return Footprint(procs.memory(shims), procs.memory(inside), procs.memory(own))


KSM = Path("/sys/kernel/mm/ksm")


def _ksm(name: str) -> int:
    return int((KSM / name).read_text())


def _ksmd_seconds() -> float:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == "ksmd":
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def ksm_settle(limit: float) -> tuple[float, float]:
    """Wait until KSM merges no more pages over two full scans (at most `limit` s); the time
    waited and ksmd's CPU meanwhile (% of one core). (0, 0) when KSM is off."""
    if not (KSM / "run").exists() or (KSM / "run").read_text().strip() != "1":
        return 0.0, 0.0
    start, cpu = time.monotonic(), _ksmd_seconds()
    scans, sharing = _ksm("full_scans"), _ksm("pages_sharing")
    while time.monotonic() - start < limit:
        time.sleep(2)
        if _ksm("full_scans") >= scans + 2:
            if _ksm("pages_sharing") <= sharing:
                break
            scans, sharing = _ksm("full_scans"), _ksm("pages_sharing")
    waited = time.monotonic() - start
    return waited, 100 * (_ksmd_seconds() - cpu) / waited


def running_tasks(daemon: Daemon) -> int:
    result = subprocess.run(
        ["ctr", "-a", daemon.address, "-n", NAMESPACE, "tasks", "ls"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    return sum(line.split()[2:3] == ["RUNNING"] for line in result.stdout.splitlines())


def measure(daemon: Daemon, image: str, args: argparse.Namespace) -> Result:
    daemon.ctr(
        "run", "--rm", "--fifo-dir", str(daemon.fifo_dir), image, f"warm-{daemon.name}", "true",
        ns=NAMESPACE, stdin=subprocess.DEVNULL, timeout=120,
    )  # fmt: skip
    settle(args.settle)
    before, available = footprint(daemon), procs.mem_available()
    print(f"{daemon.name}: starting {args.n} containers", flush=True)
    wall, latencies = start_sleepers(daemon, image, args.n, args.parallel)
    settle(args.settle)
    ksm_wait, ksmd_cpu = ksm_settle(args.ksm_wait)
    after, drop = footprint(daemon), available - procs.mem_available()
    running = running_tasks(daemon)
    print(f"{daemon.name}: {running} running; removing them", flush=True)
    shims = procs.shims_of(procs.table(), daemon.address, daemon.base)
    begin = time.perf_counter()
    remove_containers(daemon)
    removed = time.perf_counter() - begin
    wait_gone(shims, 30)  # untimed: shims exit (and init reaps them) after their delete
    if left := running_tasks(daemon):
        print(f"{daemon.name}: {left} tasks still running after removal")
    return Result(
        args.n, running, wall, statistics.median(latencies), before, after, drop, removed,
        ksm_wait, ksmd_cpu,
    )  # fmt: skip


def _cell(value: float, unit: bool) -> str:
    """Counts as integers, measures with two decimals up to 1000."""
    return f"{value:12.2f}" if unit and abs(value) < 1000 else f"{value:12.0f}"


def report(title: str, results: dict[str, list[Result]]) -> None:
    names = list(results)
    rows: dict[str, dict[str, float]] = {}
    for name, rounds in results.items():
        per_round = [result.rows() for result in rounds]
        for row in per_round[0]:
            rows.setdefault(row, {})[name] = statistics.median(r[row] for r in per_round)
    both = "ctrd" in results and "containerd" in results
    width = max(len(row) for row in rows)
    header = "".join(f"{name:>12}" for name in names) + (f"{'ratio':>8}" if both else "")
    print(f"\n{title}\n  {'':<{width}}{header}")
    for row, values in rows.items():
        line = "".join(_cell(values[name], "(" in row) for name in names)
        if both and values["containerd"] > 0 and values["ctrd"] >= 0:
            line += f"{values['ctrd'] / values['containerd']:8.2f}"
        elif both:
            line += f"{'-':>8}"
        print(f"  {row:<{width}}{line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100, help="containers per daemon")
    parser.add_argument("--parallel", type=int, default=1, help="ctr run -d at once")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before measuring")
    parser.add_argument("--daemons", type=parse_daemons, default=DAEMONS)
    parser.add_argument(
        "--ksm-wait", type=float, default=600, help="at most this long for KSM to merge (s)"
    )
    parser.add_argument(
        "--ksm-pages-to-scan", type=int, default=0,
        help="KSM's rate for this run (pages per 20 ms; the host's is restored after)",
    )  # fmt: skip
    args = parser.parse_args()
    with _ksm_rate(args.ksm_pages_to_scan):
        run(args)


@contextlib.contextmanager
def _ksm_rate(pages: int) -> Iterator[None]:
    if not pages:
        yield
        return
    knob = KSM / "pages_to_scan"
    old = knob.read_text()
    knob.write_text(str(pages))
    try:
        yield
    finally:
        knob.write_text(old)


def run(args: argparse.Namespace) -> None:

    results: dict[str, list[Result]] = {}
    with scratch_dir("ctrd-bench-density-") as scratch, daemons(scratch, args.daemons) as running:
        image = ""
        for daemon in running:
            image = import_busybox(daemon, scratch)
        for i in range(args.rounds):
            for daemon in running if i % 2 == 0 else running[::-1]:
                results.setdefault(daemon.name, []).append(measure(daemon, image, args))
    how = "one at a time" if args.parallel <= 1 else f"{args.parallel} at once"
    report(
        f"density: {args.n} containers per daemon (`ctr run -d … sleep 100000`, {how}), "
        f"median of {args.rounds} round(s)",
        {name: results[name] for name in DAEMONS if name in results},
    )


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted (containers, shims and daemons were cleaned up)")
