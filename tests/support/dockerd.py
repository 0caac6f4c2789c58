"""Debian's Docker Engine (dockerd 20.10 and its `docker` CLI) run on a ctrd, for the tests.

`Dockerd` owns one dockerd child process started on temporary directories under `base`
(data root, exec root, pid file, API socket, an empty daemon.json) with `--containerd` naming
the ctrd socket, so it never starts a containerd of its own (`start` checks), and with no
networking that touches the host: no bridge, no iptables, no masquerading; containers run with
`--network none`. It is stopped by pid; `cleanup` then removes, by pid and by path, what it may
have left: containers still running in its runc root (live-restore), and every mount under
`base` (the overlay rootfs of running containers, network namespaces, the data root's own bind
mount after a SIGKILL).

`docker(...)` runs the package's CLI, `/usr/bin/docker` (not an other docker first in PATH),
with its own config directory. `busybox_archive` writes a `docker save` archive of the test
busybox image (tests.support.images) for `docker load`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.support import images

DOCKERD = "/usr/sbin/dockerd"
DOCKER = "/usr/bin/docker"  # Debian's CLI, 20.10; another one may come first in PATH
IMAGE = "busybox:latest"


class DockerdError(AssertionError):
    pass


def busybox_archive(path: Path) -> Path:
    """A `docker save` archive of the test busybox image, tagged `busybox:latest`."""
    return images.docker_archive(images.busybox_image(schema="docker"), path, IMAGE)


class Dockerd:
    def __init__(self, base: Path, containerd: str, live_restore: bool = False) -> None:
        self.base = base
        self.containerd = containerd
        self.live_restore = live_restore
        self.data_root = base / "droot"
        self.exec_root = base / "dexec"
        self.socket = base / "docker.sock"
        self.pid_file = base / "docker.pid"
        self.config_dir = base / "docker-config"  # the CLI's
        self.log_path = base / "dockerd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def runc_root(self) -> Path:
        """Where runc keeps dockerd's containers: the root dockerd names in the runc options,
        with the namespace below it (as containerd's runc shim does)."""
        return self.exec_root / "runtime-runc" / "moby"

    def command(self) -> list[str]:
        daemon_json = self.base / "daemon.json"
        if not daemon_json.exists():
            daemon_json.write_text("{}\n")
        return [
            DOCKERD, "--containerd", self.containerd,
            "--data-root", str(self.data_root), "--exec-root", str(self.exec_root),
            "--pidfile", str(self.pid_file), "-H", f"unix://{self.socket}",
            "--config-file", str(daemon_json), "--storage-driver", "overlay2",
            "--bridge=none", "--iptables=false", "--ip-masq=false", "--ip6tables=false",
            *(["--live-restore"] if self.live_restore else []),
        ]  # fmt: skip

    def start(self, timeout: float = 30.0) -> None:
        if not os.access(DOCKERD, os.X_OK) or not os.access(DOCKER, os.X_OK):
            raise DockerdError("docker.io is not installed: run deploy/setup.sh first")
        self.config_dir.mkdir(exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.proc.poll() is not None:
                raise DockerdError(f"dockerd exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise DockerdError(f"dockerd did not answer within {timeout}s:\n{self.log()}")
            time.sleep(0.05)
        own = [pid for pid in _children(self.proc.pid) if _comm(pid) == "containerd"]
        if own:
            raise DockerdError(f"dockerd started a containerd of its own: pid {own}")

    def _answers(self) -> bool:
        """Whether the API socket answers `GET /_ping` with OK."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            try:
                sock.connect(str(self.socket))
                sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                return sock.recv(64).startswith(b"HTTP/1.0 200")
            except OSError:
                return False

    def docker(
        self,
        *args: str,
        check: bool = True,
        timeout: float = 60,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run the docker CLI against this dockerd; a failure fails the test unless unchecked."""
        result = subprocess.run(
            [DOCKER, *args], env=self.cli_env(), capture_output=True, text=True,
            input=input, timeout=timeout, stdin=None if input is not None else subprocess.DEVNULL,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise DockerdError(
                f"docker {' '.join(args)} exited {result.returncode}\nstdout: {result.stdout}\n"
                f"stderr: {result.stderr}\n--- dockerd log (tail) ---\n{self.log()[-4000:]}"
            )
        return result

    def cli_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env["DOCKER_HOST"] = f"unix://{self.socket}"
        env["DOCKER_CONFIG"] = str(self.config_dir)
        return env

    def load_busybox(self) -> None:
        archive = busybox_archive(self.base / "busybox.tar")
        self.docker("load", "-i", str(archive))
        archive.unlink()

    def inspect(self, name: str) -> dict[str, object]:
        value = json.loads(self.docker("inspect", name).stdout)[0]
        assert isinstance(value, dict)
        return value

    def remove_all(self) -> None:
        """Remove every container, fast (dockerd's own shutdown would give each 10 s)."""
        if self.proc is None:
            return
        left = self.docker("ps", "-aq", check=False).stdout.split()
        if left:
            self.docker("rm", "-f", *left, check=False)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> int:
        """Stop dockerd by pid (without live-restore it first stops its containers)."""
        if self.proc is None:
            return 0
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                return proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise DockerdError(f"dockerd ignored signal {sig} for {timeout}s") from None
        return proc.returncode

    def cleanup(self) -> None:
        """After `stop`: end containers left running (by their runc root) and unmount every
        mount under `base`, deepest first."""
        if self.runc_root.is_dir():
            listed = subprocess.run(
                ["runc", "--root", str(self.runc_root), "list", "-q"],
                capture_output=True, text=True,
            )  # fmt: skip
            for cid in listed.stdout.split():
                subprocess.run(
                    ["runc", "--root", str(self.runc_root), "delete", "--force", cid],
                    capture_output=True,
                )
        for target in reversed(self.mounts()):
            subprocess.run(["umount", "-l", target], capture_output=True)

    def mounts(self) -> list[str]:
        """Mount points under `base`, in mount order."""
        with open("/proc/self/mounts") as f:
            targets = [line.split()[1] for line in f]
        return [t for t in targets if t == str(self.base) or t.startswith(f"{self.base}/")]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _children(pid: int) -> list[int]:
    """Every descendant of `pid`."""
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            with contextlib.suppress(OSError, ValueError):
                kids = [int(k) for k in (task / "children").read_text().split()]
                found += kids
                pending += kids
    return found


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


@contextlib.contextmanager
def running(
    base: Path, containerd: str, *, live_restore: bool = False, busybox: bool = True
) -> Iterator[Dockerd]:
    """A dockerd started on `base` (the busybox image loaded unless told not to); afterwards
    its containers removed, dockerd stopped by pid (it must exit 0) and its leftovers cleaned."""
    base.mkdir(exist_ok=True)
    engine = Dockerd(base, containerd, live_restore=live_restore)
    try:
        engine.start()
        if busybox:
            engine.load_busybox()
        yield engine
    finally:
        engine.remove_all()
        status = engine.stop()
        engine.cleanup()
    assert status == 0, engine.log()[-4000:]
