"""A private, real containerd on temporary directories, for tests that compare against it.

containerd runs with a generated config (its root, state and sockets under `base`, the CRI
plugin disabled, no debug socket) inside a new private mount namespace with a tmpfs on /run:
its shims put their sockets in /run/containerd/s whatever the config says, so the host's
/run/containerd is never touched. Mounts it makes live in that namespace and go with its last
process. It is stopped by pid; shims (and their containers) that name its socket are killed by
pid afterwards, found by walking /proc.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path


def config_toml(base: Path, log_level: str = "warn") -> str:
    address = base / "containerd.sock"
    return (
        f'version = 2\nroot = "{base}/root"\nstate = "{base}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\naddress = "{address}"\n[ttrpc]\naddress = "{address}.ttrpc"\n'
        f'[debug]\naddress = ""\nlevel = "{log_level}"\n'
    )


def spawn(
    base: Path, mount_ns_of: int | None = None, log_level: str = "warn"
) -> subprocess.Popen[bytes]:
    """containerd on `base`, not waited for, in a new private mount namespace with its own /run,
    or, given `mount_ns_of`, in that process's (a surviving shim's, after a restart: its socket
    is in that /run). The pid is containerd's: unshare, sh and nsenter exec it. Its log goes to
    base/containerd.log (appended to on a restart)."""
    base.mkdir(parents=True, exist_ok=True)
    config = base / "config.toml"
    if mount_ns_of is None:
        config.write_text(config_toml(base, log_level))
        private_run = 'mount -t tmpfs tmpfs /run && mkdir /run/containerd && exec "$@"'
        argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", private_run,
                "sh", "containerd", "--config", str(config)]  # fmt: skip
    else:
        argv = ["nsenter", f"--mount=/proc/{mount_ns_of}/ns/mnt", "--",
                "containerd", "--config", str(config)]  # fmt: skip
    with open(base / "containerd.log", "ab" if mount_ns_of else "wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=out, start_new_session=True)


class Containerd:
    """A containerd child process on `base` (socket `base/containerd.sock`)."""

    def __init__(self, base: Path, log_level: str = "info") -> None:
        self.base = base
        self.address = str(base / "containerd.sock")
        self.log_path = base / "containerd.log"
        self.log_level = log_level
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def installed() -> bool:
        return shutil.which("containerd") is not None

    def start(self, timeout: float = 30.0) -> None:
        self.proc = spawn(self.base, log_level=self.log_level)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"containerd exited with {self.proc.returncode}:\n{self.log()}")
            if os.path.exists(self.address) and self._answers():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"containerd did not answer within {timeout}s:\n{self.log()}")

    def _answers(self) -> bool:
        result = subprocess.run(
            ["ctr", "-a", self.address, "version"], capture_output=True, timeout=10, check=False
        )
        return result.returncode == 0

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM by pid (SIGKILL after `timeout`), then the shims left behind; exit status."""
        if self.proc is None:
            return 0
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        kill_shims_of(self.address)
        return proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def kill_shims_of(address: str) -> None:
    """SIGKILL by pid every process whose command line names `address`, with its descendants
    (containerd's shims take `-address <socket>`; the containers are their children)."""
    parents: dict[int, int] = {}
    shims: set[int] = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        pid = int(name)
        parents[pid] = int(stat.rsplit(")", 1)[1].split()[1])
        if "containerd-shim" in cmdline and address in cmdline.split("\0"):
            shims.add(pid)
    doomed = set(shims)
    grew = True
    while grew:
        children = {pid for pid, ppid in parents.items() if ppid in doomed} - doomed
        grew = bool(children)
        doomed |= children
    for pid in doomed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
