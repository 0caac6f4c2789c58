"""Fixtures shared by every test: a real ctrd on temporary directories, and the real ctr.

The daemon runs as a child process (`python -m supervisor`) with its own root, state dir and
socket under a short temporary directory (unix socket paths are limited to 107 bytes). It is
stopped by pid at the end of the test, and a test fails if the daemon did not exit cleanly.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

REPO = Path(__file__).resolve().parent.parent

# The CRI node fixtures (critest_images, make_cri_node, cri_node): tests/support/cri.py
pytest_plugins = ("tests.support.cri",)


def require_binary(name: str) -> str:
    """A test dependency that is missing is a failure, never a silent skip."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run .ci/run or the README's setup first")
    return path


class Ctrd:
    """A ctrd child process and the ways tests talk to it."""

    _tables = itertools.count()

    def __init__(self, base: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.base = base
        self.root = base / "root"
        self.state = base / "state"
        self.address = str(base / "ctrd.sock")
        self.log_path = base / "ctrd.log"
        self.nft_table = ""
        if "--config" not in extra_args:
            # ctrctl's containers join the `bridge` network: each daemon writes an nftables
            # table of its own, never the host's `inet ctrd` (removed again by cleanup)
            self.nft_table = f"ctrdt{os.getpid()}_{next(self._tables)}"
            base.mkdir(parents=True, exist_ok=True)
            config = base / "ctrd-test.toml"
            config.write_text(f'[network]\nnft_table = "{self.nft_table}"\n')
            extra_args = ("--config", str(config), *extra_args)
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None
        self._channel: grpc.Channel | None = None

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "supervisor",
            "--root", str(self.root), "--state", str(self.state),
            "--address", self.address, "--log-level", "debug", *self.extra_args,
        ]  # fmt: skip

    def start(self, timeout: float = 20.0) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            self.command(), stdout=log, stderr=log, cwd=REPO, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"ctrd exited with {self.proc.returncode}:\n{self.log()}")
            if os.path.exists(self.address) and self._answers():
                return
            time.sleep(0.05)
        pytest.fail(f"ctrd did not answer within {timeout}s:\n{self.log()}")

    def _answers(self) -> bool:
        from google.protobuf import empty_pb2

        from supervisor.api.containerd.services.version.v1 import version_pb2_grpc

        with grpc.insecure_channel(f"unix:{self.address}") as channel:
            try:
                version_pb2_grpc.VersionStub(channel).Version(empty_pb2.Empty(), timeout=2)
            except grpc.RpcError:
                return False
        return True

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Stop the daemon by pid; returns its exit status."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None
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
                pytest.fail(f"ctrd ignored signal {sig} for {timeout}s:\n{self.log()}")
        return proc.returncode

    def cleanup(self) -> None:
        """After the daemon stopped: end what it left running, by pid, and unmount.

        Containers (through runc, on this daemon's runc roots), shims (`shim.pid` in their
        bundles) and the zygote (`zygote.pid`); then every mount under the state dir.
        """
        runc_roots = self.state / "runc"
        if runc_roots.is_dir():
            for root in runc_roots.iterdir():
                listed = subprocess.run(
                    ["runc", "--root", str(root), "list", "-q"], capture_output=True, text=True
                )
                for cid in listed.stdout.split():
                    subprocess.run(
                        ["runc", "--root", str(root), "delete", "--force", cid],
                        capture_output=True,
                    )
        pid_files = [*self.state.glob("tasks/*/*/shim.pid"), self.state / "zygote.pid"]
        for pid_file in pid_files:
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
        with open("/proc/self/mounts") as f:
            mounted = [line.split()[1] for line in f]
        for target in reversed(mounted):
            if target.startswith(str(self.state) + "/"):
                subprocess.run(["umount", "-l", target], capture_output=True)
        self.remove_networks()

    def remove_networks(self) -> None:
        """The bridges of the networks this daemon's database holds, and its nftables table
        (veths went with their namespaces' pins, unmounted above)."""
        from supervisor.network import netlink, nft
        from supervisor.network.manager import bridge_name

        db = self.root / "meta.db"
        if db.exists():
            with contextlib.closing(sqlite3.connect(db)) as conn:
                try:
                    ids = [str(i) for (i,) in conn.execute("SELECT id FROM networks")]
                except sqlite3.Error:
                    ids = []
            for network_id in ids:
                netlink.remove_bridge(bridge_name(network_id))
        if self.nft_table:
            nft.delete(self.nft_table)

    def fifo_dir(self) -> str:
        """Where ctr makes its stdio FIFOs: ours, never /run/containerd."""
        path = self.base / "fifo"
        path.mkdir(exist_ok=True)
        return str(path)

    def restart(self) -> None:
        assert self.stop() == 0, self.log()
        self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def channel(self) -> grpc.Channel:
        if self._channel is None:
            self._channel = grpc.insecure_channel(f"unix:{self.address}")
        return self._channel

    def stub(self, cls: Any) -> Any:
        return cls(self.channel)

    def ctr(
        self,
        *args: str,
        ns: str = "default",
        check: bool = True,
        input: str | bytes | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run the real ctr client against this daemon.

        Output is decoded as latin-1, so binary output (`content get`) round-trips through
        `.stdout.encode("latin-1")`; bytes input is passed as is.
        """
        raw = subprocess.run(
            [require_binary("ctr"), "-a", self.address, "-n", ns, *args],
            capture_output=True, input=input.encode() if isinstance(input, str) else input,
            timeout=timeout,
        )  # fmt: skip
        result = subprocess.CompletedProcess(
            raw.args, raw.returncode, raw.stdout.decode("latin-1"), raw.stderr.decode("latin-1")
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"ctr {' '.join(args)} exited {result.returncode}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}\n--- ctrd log ---\n{self.log()}"
            )
        return result


def ns_metadata(ns: str = "default") -> tuple[tuple[str, str], ...]:
    return (("containerd-namespace", ns),)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary directory with a short path, for unix sockets."""
    path = Path(tempfile.mkdtemp(prefix="ctrd-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def ctrd(short_tmp: Path) -> Iterator[Ctrd]:
    daemon = Ctrd(short_tmp)
    daemon.start()
    try:
        yield daemon
    finally:
        status = daemon.stop()
        daemon.cleanup()
    assert status == 0, f"ctrd exited with {status}:\n{daemon.log()}"
    # Whatever went wrong inside was handled and logged as such, never a stray traceback.
    for sign in ("Traceback", "exception was never retrieved"):
        assert sign not in daemon.log(), daemon.log()[-5000:]


@pytest.fixture
def md() -> Any:
    """Metadata for a namespaced call: `md("ns")`."""
    return ns_metadata


@pytest.fixture
def make_ctrd(short_tmp: Path) -> Iterator[Any]:
    """Make unstarted daemons (`make_ctrd()` or `make_ctrd(base_dir)`); all stopped at the end."""
    made: list[Ctrd] = []

    def make(base: Path | None = None) -> Ctrd:
        daemon = Ctrd(base or short_tmp)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.stop()
        daemon.cleanup()


# --- a real registry on loopback, with test images pushed to it (see tests/support) ---

from tests.support import images  # noqa: E402
from tests.support.registry import PushedImage, Registry  # noqa: E402


@pytest.fixture(scope="session")
def registry() -> Iterator[Registry]:
    """One docker-registry on 127.0.0.1 for the whole run, stopped by pid at the end."""
    with Registry(binary=require_binary("docker-registry")) as running:
        yield running


@pytest.fixture(scope="session")
def busybox_image(registry: Registry) -> PushedImage:
    """busybox (one layer) pushed as `<host>/library/busybox:latest`; `.ref` names it."""
    return registry.push("library/busybox", "latest", images.busybox_image())


@pytest.fixture(scope="session")
def busybox2_image(registry: Registry) -> PushedImage:
    """busybox plus a layer adding /etc/extra and whiting out /etc/motd: `library/busybox2`."""
    return registry.push("library/busybox2", "latest", images.busybox2_image())


_TEST_TABLE = re.compile(r"^ctrdt(\d+)(_\d+)?$")  # Ctrd's and the network tests' tables


_HOST_FILES = ("/etc/resolv.conf", "/etc/hosts")  # the host's own: no test may change them
_host_files: dict[str, bytes] = {}


def _read_host_files() -> dict[str, bytes]:
    found = {}
    for path in _HOST_FILES:
        with contextlib.suppress(OSError):
            found[path] = Path(path).read_bytes()
    return found


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The host's resolv.conf and hosts as they were before the session: a test that wrote
    them (once, a container's resolv.conf ended up there and broke the host's DNS) fails the
    run, and the files are put back."""
    for path, before in _host_files.items():
        after = _read_host_files().get(path)
        if after != before:
            Path(path).write_bytes(before)
            print(f"\n{path} was changed during the tests (now put back): {after!r}")
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_sessionstart(session: pytest.Session) -> None:
    """Remove the nftables tables of test processes that died before their cleanup (a run
    killed by a timeout): named `ctrdt<pid>...` by these tests, so whose they were is known;
    a table of a live process is left to it. Remember the host's resolv.conf and hosts.

    A run started in the background by a shell without job control (`cmd &` in a script)
    inherits SIGINT ignored, and so would every ctrctl the tests start: those that stop a
    streaming ctrctl with Ctrl-C (stats, events) would wait forever. SIGINT is given back its
    default here."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    _host_files.update(_read_host_files())
    from supervisor.network import nft

    nft.prepare()
    for family, name in nft.list_tables():
        found = _TEST_TABLE.match(name)
        if family == nft.FAMILY and found and not Path(f"/proc/{found.group(1)}").exists():
            nft.delete(name)
