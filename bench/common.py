"""What the benchmarks share: daemons on temporary roots, timing, and reporting.

Each benchmark runs ctrd and, when installed, containerd side by side in the same run, with
their runs interleaved, and reports medians and the ctrd/containerd ratio: these machines are
shared and noisy, so only ratios measured together mean much. Daemons are stopped by pid.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Daemon:
    name: str
    address: str
    proc: subprocess.Popen[bytes]
    base: Path

    def ctr(self, *args: str, stdin: object = None, check: bool = True) -> float:
        """Run ctr against the daemon; returns the wall time in seconds."""
        start = time.perf_counter()
        subprocess.run(
            ["ctr", "-a", self.address, *args],
            stdin=stdin,  # type: ignore[arg-type]
            stdout=subprocess.DEVNULL,
            check=check,
        )
        return time.perf_counter() - start

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
            result = subprocess.run(
                ["ctr", "-a", address, "version"], capture_output=True, timeout=10
            )
            if result.returncode == 0:
                return
        time.sleep(0.05)
    sys.exit(f"daemon did not start: {log.read_text()[-2000:]}")


def start_ctrd(base: Path) -> Daemon:
    base.mkdir(parents=True, exist_ok=True)
    address = str(base / "ctrd.sock")
    log = base / "ctrd.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor", "--root", str(base / "root"),
             "--state", str(base / "state"), "--address", address, "--log-level", "warning"],
            stdout=out, stderr=out, cwd=REPO,
        )  # fmt: skip
    _wait_for_socket(address, proc, log)
    return Daemon("ctrd", address, proc, base)


def start_containerd(base: Path) -> Daemon | None:
    """A private containerd on temporary directories, or None when it is not installed."""
    if shutil.which("containerd") is None:
        return None
    base.mkdir(parents=True, exist_ok=True)
    address = str(base / "containerd.sock")
    config = base / "config.toml"
    config.write_text(
        f'version = 2\nroot = "{base}/root"\nstate = "{base}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\naddress = "{address}"\n[ttrpc]\naddress = "{address}.ttrpc"\n'
        '[debug]\naddress = ""\nlevel = "warn"\n'
    )
    log = base / "containerd.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["containerd", "--config", str(config)], stdout=out, stderr=out)
    _wait_for_socket(address, proc, log)
    return Daemon("containerd", address, proc, base)


@contextlib.contextmanager
def daemons(scratch: Path) -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    try:
        started.append(start_ctrd(scratch / "ctrd"))
        other = start_containerd(scratch / "containerd")
        if other is None:
            print("containerd is not installed: measuring ctrd alone")
        else:
            started.append(other)
        yield started
    finally:
        for daemon in started:
            daemon.stop()


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
        if "ctrd" in self.values and "containerd" in self.values:
            ratio = self.median("ctrd") / self.median("containerd")
            print(f"  ratio ctrd/containerd (medians): {ratio:.2f}")


def settle(seconds: float) -> None:
    """Let the filesystem finish freeing what was deleted (slow on this ext4) before a run."""
    subprocess.run(["sync"], check=False)
    time.sleep(seconds)
