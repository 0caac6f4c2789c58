"""/v1/metrics with many containers: scrape time and the daemon's CPU while scraped each second.

For each daemon in turn (one at a time: the other is not running), each with `[metrics]
address` on a free loopback port:

1. N containers `sleep 100000` (`ctr run -d`, `--parallel` at once);
2. a first scrape (ctrd finds each container's cgroups then; containerd has them already);
3. `--period` seconds idle, then `--period` seconds with one scrape a second. Over each, the
   daemon's CPU (utime + stime of its pid, threads included, and of ctrd's metrics reader
   processes, which read and format the containers' share of a scrape) and, for containerd,
   its shims' (containerd asks every shim for its stats at each scrape; ctrd's shims are not
   involved);
   meanwhile a thread times a Version RPC every 20 ms, so what a scrape does to the RPCs shows;
4. every container is removed; at the end (or on Ctrl-C) the daemon is stopped and what it left
   killed by pid and unmounted (see common.py).

Reported per daemon: the scrape's wall time (from the request to the last byte; median, p90,
max, and the first), its size and number of samples, the daemon's CPU idle and while scraped
(% of one core, and CPU seconds per scrape over idle), the shims' for containerd, and the RPC's
latency idle and while scraped (median, p99, max).

    /opt/ctrd/bin/python bench/metrics.py [-n 1000] [--parallel 4] [--period 20]
                                          [--daemons ctrd,containerd] [--keep-logs DIR]
                                          [--ctrd-log-level warning]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import procs
from common import (
    DAEMONS,
    NAMESPACE,
    REPO,
    Daemon,
    _wait_or_kill,
    import_busybox,
    parse_daemons,
    remove_cgroups,
    scratch_dir,
    start_ctrd,
    start_sleepers,
    tear_down,
)

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import grpc
from google.protobuf import empty_pb2

from supervisor.api.containerd.services.version.v1 import version_pb2_grpc

TICK = os.sysconf("SC_CLK_TCK")
PROBE_EVERY = 0.02  # seconds between two Version RPCs of the latency probe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pids: set[int] | list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / TICK


@contextmanager
def metrics_daemon(name: str, base: Path, port: int, log_level: str) -> Iterator[Daemon]:
    base.mkdir(parents=True, exist_ok=True)
    if name == "ctrd":
        config = base / "ctrd-metrics.toml"
        config.write_text(f'[metrics]\naddress = "127.0.0.1:{port}"\n')
        daemon = start_ctrd(base, log_level, extra_args=("--config", str(config)))
    else:
        from tests.support.containerd import config_toml

        config = base / "config.toml"
        config.write_text(config_toml(base) + f'[metrics]\naddress = "127.0.0.1:{port}"\n')
        private_run = 'mount -t tmpfs tmpfs /run && mkdir /run/containerd && exec "$@"'
        with open(base / "containerd.log", "wb") as out:
            proc = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                 private_run, "sh", "containerd", "--config", str(config)],
                stdout=out, stderr=out, start_new_session=True,
            )  # fmt: skip
        address = str(base / "containerd.sock")
        _wait_or_kill(address, proc, base / "containerd.log")
        daemon = Daemon("containerd", address, proc, base)
    try:
        yield daemon
    finally:
        tear_down(daemon)
        remove_cgroups(NAMESPACE)


@dataclass
class Probe:
    """Version RPCs every PROBE_EVERY seconds on a thread, their latencies kept."""

    address: str
    latencies: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Probe:
        channel = grpc.insecure_channel(f"unix:{self.address}")
        stub = version_pb2_grpc.VersionStub(channel)
        stub.Version(empty_pb2.Empty(), timeout=10)  # connected before timing

        def loop() -> None:
            try:
                while not self._stop.wait(PROBE_EVERY):
                    begin = time.perf_counter()
                    stub.Version(empty_pb2.Empty(), timeout=30)
                    self.latencies.append(time.perf_counter() - begin)
            finally:
                channel.close()

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


@dataclass
class Period:
    cpu: float  # the daemon's CPU seconds
    shims_cpu: float
    wall: float
    rpc: list[float]
    scrapes: list[float] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    samples: list[int] = field(default_factory=list)


def readers_of(table: dict[int, procs.Proc], pid: int) -> list[int]:
    """ctrd's metrics reader processes (children of the daemon), counted as the daemon."""
    return [
        p.pid for p in table.values() if p.ppid == pid and "supervisor.metrics.reader" in p.words
    ]


def scrape(port: int) -> tuple[float, int, int]:
    begin = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/metrics", timeout=60) as answer:
        body = answer.read()
    took = time.perf_counter() - begin
    lines = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    return took, len(body), lines


def period(daemon: Daemon, port: int, seconds: float, scraping: bool) -> Period:
    table = procs.table()
    shims = procs.shims_of(table, daemon.address, daemon.base)
    own = [daemon.proc.pid, *readers_of(table, daemon.proc.pid)]
    cpu0, shims0, wall0 = cpu_seconds(own), cpu_seconds(shims), time.monotonic()
    scrapes, sizes, counts = [], [], []
    with Probe(daemon.address) as probe:
        tick = time.monotonic()
        while time.monotonic() - wall0 < seconds:
            if scraping:
                took, size, count = scrape(port)
                scrapes.append(took)
                sizes.append(size)
                counts.append(count)
            tick += 1.0
            time.sleep(max(0.0, tick - time.monotonic()))
    return Period(
        cpu_seconds(own) - cpu0,
        cpu_seconds(shims) - shims0,
        time.monotonic() - wall0,
        probe.latencies,
        scrapes,
        sizes,
        counts,
    )


@dataclass
class Result:
    first: float
    idle: Period
    scraped: Period


def measure(name: str, scratch: Path, args: argparse.Namespace) -> Result:
    port = free_port()
    with metrics_daemon(name, scratch / name, port, args.ctrd_log_level) as daemon:
        image = import_busybox(daemon, scratch)
        took, _ = start_sleepers(daemon, image, args.n, args.parallel)
        print(f"{name}: {args.n} containers started in {took:.1f} s", flush=True)
        time.sleep(2)  # the starts' aftermath (shims settling) out of the idle figure
        first = scrape(port)[0]
        idle = period(daemon, port, args.period, scraping=False)
        scraped = period(daemon, port, args.period, scraping=True)
        if args.keep_logs:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for log in daemon.base.glob("*.log"):
                shutil.copy(log, args.keep_logs / log.name)
        return Result(first, idle, scraped)


def _ms(values: list[float], q: float) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000:.1f}"


def _cells(r: Result) -> list[str]:
    idle, scraped = r.idle, r.scraped
    over_idle = scraped.cpu - idle.cpu * scraped.wall / idle.wall
    return [
        f"{r.first * 1000:.0f}",
        " / ".join(_ms(scraped.scrapes, q) for q in (0.5, 0.9, 1.0)),
        str(len(scraped.scrapes)),
        f"{statistics.median(scraped.sizes) / 1e6:.2f} / {statistics.median(scraped.samples):.0f}",
        f"{100 * idle.cpu / idle.wall:.1f}",
        f"{100 * scraped.cpu / scraped.wall:.1f}",
        f"{1000 * over_idle / max(1, len(scraped.scrapes)):.0f}",
        f"{100 * idle.shims_cpu / idle.wall:.1f} / {100 * scraped.shims_cpu / scraped.wall:.1f}",
        " / ".join(_ms(idle.rpc, q) for q in (0.5, 0.99, 1.0)),
        " / ".join(_ms(scraped.rpc, q) for q in (0.5, 0.99, 1.0)),
    ]


LABELS = (
    "first scrape, ms",
    "scrape, ms: median / p90 / max",
    "scrapes",
    "size, MB / samples",
    "daemon CPU idle, % of a core",
    "daemon CPU scraped, % of a core",
    "daemon CPU per scrape over idle, ms",
    "shims' CPU idle / scraped, % of a core",
    "Version RPC idle, ms: median / p99 / max",
    "Version RPC scraped, ms: median / p99 / max",
)


def report(n: int, results: dict[str, Result]) -> None:
    print(f"\n/v1/metrics with {n} containers (`sleep 100000`), one scrape a second")
    print("| | " + " | ".join(results) + " |")
    print("| --- |" + " --- |" * len(results))
    columns = [_cells(r) for r in results.values()]
    for i, label in enumerate(LABELS):
        print(f"| {label} | " + " | ".join(column[i] for column in columns) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1000, help="containers per daemon")
    parser.add_argument("--parallel", type=int, default=4, help="ctr run -d at once")
    parser.add_argument("--period", type=float, default=20.0, help="seconds idle, then scraped")
    parser.add_argument("--daemons", type=parse_daemons, default=DAEMONS)
    parser.add_argument("--keep-logs", type=Path, help="copy the daemons' logs here")
    parser.add_argument(
        "--ctrd-log-level", default="warning", help="debug logs each scrape's time in the daemon"
    )
    args = parser.parse_args()
    if "containerd" in args.daemons and shutil.which("containerd") is None:
        print("containerd is not installed: measuring without it")
        args.daemons = tuple(d for d in args.daemons if d != "containerd")
    results: dict[str, Result] = {}
    with scratch_dir("ctrd-bench-metrics-") as scratch:
        for name in args.daemons:
            results[name] = measure(name, scratch, args)
    report(args.n, results)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted (containers, shims and daemons were cleaned up)")
