"""What the benchmarks share: daemons on temporary roots, timing, and reporting.

Each benchmark runs ctrd and, when installed, containerd side by side in the same run, with
their runs interleaved, and reports medians and the ctrd/containerd ratio: these machines are
shared and noisy, so only ratios measured together mean much. Daemons are stopped by pid.

Nothing outlives a run, even one interrupted with Ctrl-C: daemons get their own session (the
terminal's SIGINT reaches only the benchmark, which then cleans up through them); on the way
out every container of `NAMESPACE` is killed and deleted, the daemon stopped, whatever shim or
container process still names its socket killed by pid, its mounts unmounted and the cgroups
ctr made under `/NAMESPACE` removed. The private containerd runs in its own mount namespace
with a tmpfs on /run, because its shims put their sockets in /run/containerd/s whatever the
config says; containers' mounts then live in that namespace and go with its last process.
A containerd restarted after a crash enters that namespace through one of its surviving shims.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import procs

REPO = Path(__file__).resolve().parent.parent
DAEMONS = ("ctrd", "containerd")
NAMESPACE = "ctrd-bench"  # the benchmarks' containers; ctr puts their cgroups at /NAMESPACE/<id>
IMAGE = "docker.io/library/busybox:bench"


def run(
    argv: Sequence[str],
    *,
    timeout: float | None = None,
    check: bool = False,
    input: bytes | str | None = None,
    capture_output: bool = False,
    **popen: Any,
) -> subprocess.CompletedProcess[Any]:
    """`subprocess.run`, but it returns as soon as the command ends, timeout or not.

    `subprocess.run(..., timeout=T)` waits by polling, with sleeps that double from 1 ms up to
    50 ms: a command is seen to end only at 1, 3, 7, 15, 31, 63, 113, 163... ms, so every
    duration measured around it is rounded up to the next of those (a 70 ms command took
    "114 ms"). Here the wait blocks in waitpid and a timer kills the command at the timeout.
    """
    if capture_output:
        popen["stdout"] = popen["stderr"] = subprocess.PIPE
    if input is not None:
        popen["stdin"] = subprocess.PIPE
    expired = threading.Event()
    with subprocess.Popen(argv, **popen) as proc:

        def kill() -> None:
            expired.set()
            proc.kill()

        timer = threading.Timer(timeout, kill) if timeout is not None else None
        if timer is not None:
            timer.start()
        try:
            out, err = proc.communicate(input)  # no timeout: ends in a blocking waitpid
        finally:
            if timer is not None:
                timer.cancel()
    if expired.is_set():
        raise subprocess.TimeoutExpired(list(argv), timeout or 0, out, err)
    result = subprocess.CompletedProcess(list(argv), proc.returncode, out, err)
    if check:
        result.check_returncode()
    return result


@dataclass
class Daemon:
    name: str
    address: str
    proc: subprocess.Popen[bytes]
    base: Path

    def ctr(
        self,
        *args: str,
        stdin: int | IO[bytes] | None = None,
        check: bool = True,
        ns: str | None = None,
        timeout: float | None = None,
        quiet: bool = False,
    ) -> float:
        """Run ctr against the daemon; returns the wall time in seconds."""
        start = time.perf_counter()
        run(
            ["ctr", "-a", self.address, *(["-n", ns] if ns else []), *args],
            stdin=stdin,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL if quiet else None,
            check=check,
            timeout=timeout,
        )
        return time.perf_counter() - start

    def ctr_lines(self, *args: str, ns: str | None = None, timeout: float = 60) -> list[str]:
        """ctr's output lines, or none when it fails (a daemon without that service)."""
        result = run(
            ["ctr", "-a", self.address, *(["-n", ns] if ns else []), *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return result.stdout.split() if result.returncode == 0 else []

    @property
    def fifo_dir(self) -> Path:
        """For `ctr run --fifo-dir`: ctr's default is /run/containerd/fifo."""
        return self.base / "fifo"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _wait_for_socket(address: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"daemon exited: {log.read_text()[-2000:]}")
        if os.path.exists(address):
            result = run(["ctr", "-a", address, "version"], capture_output=True, timeout=10)
            if result.returncode == 0:
                return
        time.sleep(0.05)
    sys.exit(f"daemon did not start: {log.read_text()[-2000:]}")


def spawn_ctrd(
    base: Path,
    log_level: str = "warning",
    append: bool = False,
    extra_args: Sequence[str] = (),
    wrapper: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """ctrd on `base`, not waited for; its log goes to base/ctrd.log (appended to on a restart).

    `extra_args` go after ctrd's own (`--config FILE`); `wrapper` comes before the command and
    must exec it, so that the pid stays ctrd's (`nsenter --net=/proc/PID/ns/net --`)."""
    compile_sources()
    base.mkdir(parents=True, exist_ok=True)
    with open(base / "ctrd.log", "ab" if append else "wb") as out:
        return subprocess.Popen(
            [*wrapper, sys.executable, "-m", "supervisor", "--root", str(base / "root"),
             "--state", str(base / "state"), "--address", str(base / "ctrd.sock"),
             "--log-level", log_level, *extra_args],
            stdout=out, stderr=out, cwd=REPO, start_new_session=True,
        )  # fmt: skip


def start_ctrd(
    base: Path,
    log_level: str = "warning",
    extra_args: Sequence[str] = (),
    wrapper: Sequence[str] = (),
) -> Daemon:
    address = str(base / "ctrd.sock")
    proc = spawn_ctrd(base, log_level, extra_args=extra_args, wrapper=wrapper)
    _wait_or_kill(address, proc, base / "ctrd.log")
    return Daemon("ctrd", address, proc, base)


def spawn_containerd(base: Path, mount_ns_of: int | None = None) -> subprocess.Popen[bytes]:
    """containerd on `base`, not waited for, in a new private mount namespace with its own /run,
    or, given `mount_ns_of`, in that process's (a surviving shim's, after a restart: its socket
    is in that /run). The pid is containerd's. The tests start theirs the same way."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tests.support import containerd

    return containerd.spawn(base, mount_ns_of)


def start_containerd(base: Path) -> Daemon | None:
    """A private containerd on temporary directories, or None when it is not installed."""
    if shutil.which("containerd") is None:
        return None
    address = str(base / "containerd.sock")
    proc = spawn_containerd(base)
    _wait_or_kill(address, proc, base / "containerd.log")
    return Daemon("containerd", address, proc, base)


def _wait_or_kill(address: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    try:
        _wait_for_socket(address, proc, log)
    except BaseException:
        proc.kill()
        proc.wait()
        raise


def parse_daemons(value: str) -> tuple[str, ...]:
    """`--daemons ctrd,containerd` → ("ctrd", "containerd"); argparse's `type`."""
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    unknown = set(names) - set(DAEMONS)
    if unknown or not names:
        raise ValueError(f"daemons are among {', '.join(DAEMONS)}, got {value!r}")
    return names


@contextlib.contextmanager
def daemons(
    scratch: Path, names: Sequence[str] = DAEMONS, ctrd_log_level: str = "warning"
) -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    try:
        if "ctrd" in names:
            started.append(start_ctrd(scratch / "ctrd", ctrd_log_level))
        if "containerd" in names:
            other = start_containerd(scratch / "containerd")
            if other is None:
                print("containerd is not installed: measuring without it")
            else:
                started.append(other)
        if not started:
            sys.exit("no daemon to measure")
        yield started
    finally:
        with _interrupts_ignored():
            for daemon in started:
                tear_down(daemon)
            remove_cgroups(NAMESPACE)


@contextlib.contextmanager
def _interrupts_ignored() -> Iterator[None]:
    """A second Ctrl-C must not stop the cleanup half way: every step of it has a timeout."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# --- containers and what they leave ----------------------------------------------------------


@functools.cache
def _busybox_archive(directory: Path) -> Path:
    sys.path.insert(0, str(REPO))
    from tests.support import images

    return Path(images.oci_archive(images.busybox_image(), directory / "busybox.tar", IMAGE))


def import_busybox(daemon: Daemon, scratch: Path) -> str:
    """The tests' busybox image (from Debian's busybox-static), unpacked in `NAMESPACE`."""
    daemon.ctr("images", "import", str(_busybox_archive(scratch)), ns=NAMESPACE)
    return IMAGE


def start_sleepers(daemon: Daemon, image: str, n: int, parallel: int) -> tuple[float, list[float]]:
    """`ctr run -d IMG <name>-NNNN sleep 100000` n times, one at a time or `parallel` at once.

    Returns the wall time for all of them and each `ctr run -d`'s.
    """

    def start(cid: str) -> float:
        return daemon.ctr(
            "run", "-d", "--fifo-dir", str(daemon.fifo_dir), image, cid, "sleep", "100000",
            ns=NAMESPACE, stdin=subprocess.DEVNULL, timeout=120,
        )  # fmt: skip

    ids = sleeper_ids(daemon, n)
    begin = time.perf_counter()
    if parallel <= 1:
        latencies = [start(cid) for cid in ids]
    else:
        pool = ThreadPoolExecutor(parallel)
        try:
            latencies = list(pool.map(start, ids))
        finally:
            pool.shutdown(cancel_futures=True)
    return time.perf_counter() - begin, latencies


def sleeper_ids(daemon: Daemon, n: int) -> list[str]:
    return [f"{daemon.name}-{i:04d}" for i in range(n)]


def chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def remove_containers(daemon: Daemon) -> int:
    """Kill and delete every task and container of `NAMESPACE` (ctr takes many ids at once).

    Returns how many containers are left (ctr's warnings about exit codes 137 are dropped).
    """
    for batch in chunks(daemon.ctr_lines("tasks", "ls", "-q", ns=NAMESPACE), 50):
        daemon.ctr("tasks", "rm", "-f", *batch, ns=NAMESPACE, check=False, timeout=300, quiet=True)
    for batch in chunks(daemon.ctr_lines("containers", "ls", "-q", ns=NAMESPACE), 50):
        daemon.ctr("containers", "rm", *batch, ns=NAMESPACE, check=False, timeout=300)
    return len(daemon.ctr_lines("containers", "ls", "-q", ns=NAMESPACE))


def tear_down(daemon: Daemon) -> None:
    """Containers, daemon, then by pid whatever still names it, then its mounts."""
    seen = procs.shims_of(procs.table(), daemon.address, daemon.base)
    if daemon.proc.poll() is None:
        try:
            if left := remove_containers(daemon):
                print(f"{daemon.name}: {left} containers could not be removed", file=sys.stderr)
        except subprocess.TimeoutExpired:
            print(f"{daemon.name}: removing containers timed out", file=sys.stderr)
    daemon.stop()
    killed = reap(daemon, seen)
    if killed:
        print(f"{daemon.name}: killed {killed} leftover shim/container processes", file=sys.stderr)
    unmount_under(daemon.base)


def reap(daemon: Daemon, seen: Iterable[int] = (), grace: float = 5.0) -> int:
    """SIGKILL by pid the container processes, then the shims, still serving `daemon`.

    A shim exits by itself a moment after its task is deleted, and stays a zombie until init
    reaps it: the shims `seen` earlier and those still running get `grace` seconds to go.
    """
    deadline = time.monotonic() + grace
    while True:
        table = procs.table()
        shims = procs.shims_of(table, daemon.address, daemon.base)
        if not (shims or table.keys() & set(seen)) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    inside = procs.descendants(table, shims) - shims
    for pid in [*inside, *shims]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_gone(shims, 10)
    return len(inside) + len(shims)


def wait_gone(pids: Iterable[int], timeout: float) -> bool:
    """Wait until `pids` are gone from /proc: shims are not our children, init reaps them."""
    deadline = time.monotonic() + timeout
    left = set(pids)
    while left := {pid for pid in left if os.path.exists(f"/proc/{pid}")}:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _mounts() -> list[tuple[str, str]]:
    """(mount point, filesystem type) of this mount namespace, in mount order."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        fstype = fields[fields.index("-") + 1]
        found.append((fields[4].replace("\\040", " "), fstype))
    return found


def mounts_under(path: Path) -> list[str]:
    return [point for point, _ in _mounts() if point.startswith(f"{path}/")]


def unmount_under(path: Path) -> None:
    for point in reversed(mounts_under(path)):
        if subprocess.run(["umount", point], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def remove_cgroups(name: str) -> None:
    """rmdir /sys/fs/cgroup/*/name and what is under it, deepest first (only empty ones go)."""
    for point, fstype in _mounts():
        top = Path(point) / name
        if fstype not in ("cgroup", "cgroup2") or not top.is_dir():
            continue
        for directory, _, _ in os.walk(top, topdown=False):
            with contextlib.suppress(OSError):
                os.rmdir(directory)


_compiled = False


def compile_sources() -> None:
    """Byte-compile ctrd's packages in this checkout, as deploy/setup.sh does, once per
    benchmark: with PYTHONDONTWRITEBYTECODE set (this machine's environment), a module added
    since the set-up would otherwise be compiled from source by every ctrctl and daemon
    started (~10 ms each for a ctrctl run)."""
    global _compiled
    if _compiled:
        return
    _compiled = True
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "supervisor", "shim", "snapshotter", "ctl"],
        cwd=REPO, check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("BENCH_DIR", "/var/tmp")))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class Samples:
    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        self.values.setdefault(name, []).append(value)

    def median(self, name: str) -> float:
        return statistics.median(self.values[name])

    def report(self, title: str, unit: Callable[[float], str]) -> None:
        print(f"\n{title}")
        for name, vals in self.values.items():
            shown = ", ".join(unit(v) for v in vals)
            print(f"  {name:<12} median {unit(statistics.median(vals)):>10}   runs: {shown}")
        if "containerd" in self.values:
            for name in self.values:
                if name != "containerd":
                    ratio = self.median(name) / self.median("containerd")
                    print(f"  ratio {name}/containerd (medians): {ratio:.2f}")

    def report_spread(self, title: str, unit: Callable[[float], str]) -> None:
        """Median, p90 and min of each series, and the ratio of the medians."""
        print(f"\n{title}")
        print(f"  {'':<12} {'runs':>5} {'median':>10} {'p90':>10} {'min':>10}")
        for name, vals in self.values.items():
            shown = (unit(v) for v in (statistics.median(vals), p90(vals), min(vals)))
            print(f"  {name:<12} {len(vals):>5} " + " ".join(f"{v:>10}" for v in shown))
        if "ctrd" in self.values and "containerd" in self.values:
            ratio = self.median("ctrd") / self.median("containerd")
            print(f"  ratio ctrd/containerd (medians): {ratio:.2f}")


def p90(values: Iterable[float]) -> float:
    ordered = sorted(values)
    if len(ordered) < 2:
        return ordered[0]
    return statistics.quantiles(ordered, n=10, method="inclusive")[-1]


def settle(seconds: float) -> None:
    """Let the filesystem finish freeing what was deleted (slow on this ext4) before a run."""
    subprocess.run(["sync"], check=False)
    time.sleep(seconds)
