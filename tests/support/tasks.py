"""Driving containers and tasks through the gRPC API, for the integration tests.

`Api` makes containers from an image (the real `ctr containers create` writes the record, the
generated OCI spec and the snapshot), edits their specs through Containers.Update, and drives
tasks with the Tasks stub in one namespace. It remembers what it made: `close()` kills and
deletes every task, then deletes the containers and their snapshots, and removes its stdio
directory; errors on the way are ignored (the daemon fixture ends leftovers by pid).

`Output` is the reading end of a stdout FIFO, drained on a thread; `Subscription` collects a
filtered event stream on a thread. Neither leaves a thread or an fd behind after `close()`.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from google.protobuf import any_pb2, field_mask_pb2

from supervisor.api.containerd.events import task_pb2 as events_pb
from supervisor.api.containerd.services.containers.v1 import containers_pb2, containers_pb2_grpc
from supervisor.api.containerd.services.events.v1 import events_pb2, events_pb2_grpc
from supervisor.api.containerd.services.snapshots.v1 import snapshots_pb2, snapshots_pb2_grpc
from supervisor.api.containerd.services.tasks.v1 import tasks_pb2 as pb
from supervisor.api.containerd.services.tasks.v1 import tasks_pb2_grpc
from supervisor.api.containerd.types import mount_pb2
from supervisor.api.containerd.types.task import task_pb2 as types_pb
from tests.conftest import Ctrd, ns_metadata, require_binary

SNAPSHOTTER = "overlayfs"
PROCESS_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"
RPC_TIMEOUT = 20.0


def code_of(call: Callable[[], Any]) -> grpc.StatusCode:
    """The status code a call fails with (AssertionError if it succeeds)."""
    try:
        call()
    except grpc.RpcError as e:
        return e.code()  # type: ignore[no-any-return]
    raise AssertionError("the call succeeded")


def wait_for(condition: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what or condition}")
        time.sleep(0.02)


def pid_gone(pid: int) -> bool:
    """No such process any more (a zombie still counts as there: nobody reaped it)."""
    return not os.path.exists(f"/proc/{pid}")


class Output:
    """The reading end of a FIFO a process writes to; drained on a thread once `start`ed.

    Opened non-blocking before the task or exec is created (so the open does not wait for a
    writer); `start()` only once the shim holds the writing end, since a FIFO without writers
    reads as end of file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        os.mkfifo(path, 0o600)
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self.uri = str(path)
        self._chunks: list[bytes] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Output:
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()
        return self

    def _drain(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if not ready:
                continue
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                continue
            if not data:
                return  # every writer closed
            self._chunks.append(data)

    def read(self, timeout: float = 10.0) -> bytes:
        """Everything written, once every writer has closed (AssertionError if not in time)."""
        assert self._thread is not None, "start() the reader first"
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"{self.path}: no end of file within {timeout}s")
        return b"".join(self._chunks)

    def text(self, timeout: float = 10.0) -> str:
        return self.read(timeout).decode(errors="replace")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        with contextlib.suppress(OSError):
            os.close(self.fd)


class CtrEvents:
    """The real `ctr events` against a daemon, its lines collected on a thread; ready once
    the daemon has registered its subscription (its log says so)."""

    def __init__(self, ctrd: Ctrd) -> None:
        subscribed = ctrd.log().count('"events_subscribed"')
        self.lines: list[str] = []
        self._proc = subprocess.Popen(
            [require_binary("ctr"), "-a", ctrd.address, "events"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        try:
            wait_for(
                lambda: ctrd.log().count('"events_subscribed"') > subscribed,
                timeout=10, what="ctr events subscribed",
            )  # fmt: skip
        except BaseException:
            self.stop()
            raise

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self.lines.append(line)

    def topics(self, ns: str = "default") -> list[str]:
        """The topics printed so far in `ns` (a line: "<date> <time> +0000 UTC <ns> <topic>
        <event as JSON>")."""
        return [
            fields[5] for fields in (line.split() for line in self.lines) if fields[4:5] == [ns]
        ]

    def wait_for_topic(self, topic: str, timeout: float = 10) -> None:
        wait_for(lambda: topic in self.topics(), timeout=timeout, what=f"event {topic}")

    def stop(self) -> str:
        """Stop ctr; everything it printed."""
        self._proc.terminate()
        self._proc.wait(10)
        self._thread.join(10)
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        return "".join(self.lines)


class Subscription:
    """Envelopes of a filtered Subscribe stream, collected on a thread."""

    def __init__(self, ctrd: Ctrd, filters: list[str]) -> None:
        self.envelopes: list[events_pb2.Envelope] = []
        stub = ctrd.stub(events_pb2_grpc.EventsStub)
        self._call = stub.Subscribe(events_pb2.SubscribeRequest(filters=filters))
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()
        self._call.initial_metadata()  # sent once the daemon has registered the subscriber

    def _collect(self) -> None:
        with contextlib.suppress(grpc.RpcError):
            for envelope in self._call:
                self.envelopes.append(envelope)

    def wait(self, count: int, timeout: float = 5.0) -> list[events_pb2.Envelope]:
        deadline = time.monotonic() + timeout
        while len(self.envelopes) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return list(self.envelopes)

    def exits(self) -> list[events_pb.TaskExit]:
        return [
            events_pb.TaskExit.FromString(e.event.value)
            for e in self.envelopes
            if e.topic == "/tasks/exit"
        ]

    def close(self) -> None:
        self._call.cancel()
        self._thread.join(5)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def exit_filter(ns: str) -> str:
    return f"namespace=={ns},topic~=|^/tasks/exit|"


class Api:
    """Containers and tasks of one namespace, through the stubs; cleans up at `close()`."""

    def __init__(self, ctrd: Ctrd, ns: str, image_ref: str) -> None:
        self.ctrd = ctrd
        self.ns = ns
        self.image_ref = image_ref
        self.md = ns_metadata(ns)
        self.containers = ctrd.stub(containers_pb2_grpc.ContainersStub)
        self.tasks = ctrd.stub(tasks_pb2_grpc.TasksStub)
        self.snapshots = ctrd.stub(snapshots_pb2_grpc.SnapshotsStub)
        self.dir = Path(tempfile.mkdtemp(prefix="io-", dir=ctrd.base))
        self._made: list[str] = []
        self._outputs: list[Output] = []
        self._fds: list[int] = []
        ctrd.ctr("images", "pull", "--plain-http", image_ref, ns=ns)

    def __enter__(self) -> Api:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- containers -------------------------------------------------------------------------

    def container(
        self, cid: str, *args: str, tty: bool = False, edit: Callable[[Any], None] | None = None
    ) -> Any:
        """A container running `args` from the image; `edit` changes its spec in place."""
        self._made.append(cid)
        self.ctrd.ctr(
            "containers", "create", *(["--tty"] if tty else []), "--", self.image_ref, cid, *args,
            ns=self.ns,
        )  # fmt: skip
        spec = self.spec(cid)
        if edit is not None:
            edit(spec)
            self.set_spec(cid, spec)
        return spec

    def spec(self, cid: str) -> Any:
        got = self.containers.Get(
            containers_pb2.GetContainerRequest(id=cid), metadata=self.md, timeout=RPC_TIMEOUT
        )
        return json.loads(got.container.spec.value)

    def set_spec(self, cid: str, spec: Any) -> None:
        got = self.containers.Get(
            containers_pb2.GetContainerRequest(id=cid), metadata=self.md, timeout=RPC_TIMEOUT
        ).container
        got.spec.value = json.dumps(spec).encode()
        self.containers.Update(
            containers_pb2.UpdateContainerRequest(
                container=got, update_mask=field_mask_pb2.FieldMask(paths=["spec"])
            ),
            metadata=self.md,
            timeout=RPC_TIMEOUT,
        )

    def rootfs(self, cid: str) -> list[mount_pb2.Mount]:
        return list(
            self.snapshots.Mounts(
                snapshots_pb2.MountsRequest(snapshotter=SNAPSHOTTER, key=cid),
                metadata=self.md,
                timeout=RPC_TIMEOUT,
            ).mounts
        )

    # -- stdio ------------------------------------------------------------------------------

    def output(self, name: str) -> Output:
        """A stdout FIFO, opened for reading; `.start()` it once the task or exec exists."""
        out = Output(self.dir / name)
        self._outputs.append(out)
        return out

    def stdin(self, name: str) -> tuple[str, int]:
        """A stdin FIFO and our end of it (read-write, so that opening never blocks)."""
        path = self.dir / name
        os.mkfifo(path, 0o600)
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        self._fds.append(fd)
        return str(path), fd

    def close_fd(self, fd: int) -> None:
        if fd in self._fds:
            self._fds.remove(fd)
            os.close(fd)

    def log_file(self, name: str) -> tuple[str, Path]:
        path = self.dir / name
        return f"file://{path}", path

    # -- tasks ------------------------------------------------------------------------------

    def create(
        self, cid: str, stdin: str = "", stdout: str = "", stderr: str = "", terminal: bool = False
    ) -> pb.CreateTaskResponse:
        return self.tasks.Create(
            pb.CreateTaskRequest(
                container_id=cid, rootfs=self.rootfs(cid), stdin=stdin, stdout=stdout,
                stderr=stderr, terminal=terminal,
            ),
            metadata=self.md, timeout=RPC_TIMEOUT,
        )  # fmt: skip

    def start(self, cid: str, exec_id: str = "") -> int:
        return int(
            self.tasks.Start(
                pb.StartRequest(container_id=cid, exec_id=exec_id),
                metadata=self.md,
                timeout=RPC_TIMEOUT,
            ).pid
        )

    def wait(self, cid: str, exec_id: str = "", timeout: float = 10.0) -> pb.WaitResponse:
        return self.tasks.Wait(
            pb.WaitRequest(container_id=cid, exec_id=exec_id), metadata=self.md, timeout=timeout
        )

    def wait_later(self, cid: str, exec_id: str = "", timeout: float = 10.0) -> Any:
        """A Wait sent now and answered later: `.result()`."""
        return self.tasks.Wait.future(
            pb.WaitRequest(container_id=cid, exec_id=exec_id), metadata=self.md, timeout=timeout
        )

    def kill(
        self, cid: str, sig: int = signal.SIGKILL, exec_id: str = "", all: bool = False
    ) -> None:
        self.tasks.Kill(
            pb.KillRequest(container_id=cid, exec_id=exec_id, signal=sig, all=all),
            metadata=self.md,
            timeout=RPC_TIMEOUT,
        )

    def delete(self, cid: str) -> pb.DeleteResponse:
        return self.tasks.Delete(
            pb.DeleteTaskRequest(container_id=cid), metadata=self.md, timeout=RPC_TIMEOUT
        )

    def delete_process(self, cid: str, exec_id: str) -> pb.DeleteResponse:
        return self.tasks.DeleteProcess(
            pb.DeleteProcessRequest(container_id=cid, exec_id=exec_id),
            metadata=self.md,
            timeout=RPC_TIMEOUT,
        )

    def get(self, cid: str, exec_id: str = "") -> types_pb.Process:
        return self.tasks.Get(
            pb.GetRequest(container_id=cid, exec_id=exec_id), metadata=self.md, timeout=RPC_TIMEOUT
        ).process

    def pids(self, cid: str) -> list[int]:
        listed = self.tasks.ListPids(
            pb.ListPidsRequest(container_id=cid), metadata=self.md, timeout=RPC_TIMEOUT
        )
        return [p.pid for p in listed.processes]

    def exec(
        self,
        cid: str,
        exec_id: str,
        *args: str,
        stdin: str = "",
        stdout: str = "",
        stderr: str = "",
        terminal: bool = False,
    ) -> None:
        """Add an exec running `args`: the container's process spec with new args."""
        process = dict(self.spec(cid)["process"], args=list(args), terminal=terminal)
        self.tasks.Exec(
            pb.ExecProcessRequest(
                container_id=cid, exec_id=exec_id, stdin=stdin, stdout=stdout, stderr=stderr,
                terminal=terminal,
                spec=any_pb2.Any(type_url=PROCESS_URL, value=json.dumps(process).encode()),
            ),
            metadata=self.md, timeout=RPC_TIMEOUT,
        )  # fmt: skip

    def shim_pid(self, cid: str) -> int:
        return int((self.ctrd.state / "tasks" / self.ns / cid / "shim.pid").read_text())

    # -- cleanup ----------------------------------------------------------------------------

    def remove(self, cid: str) -> None:
        """Kill and delete the task (if any), then the container and its snapshot."""
        with contextlib.suppress(grpc.RpcError):
            self.kill(cid, all=True)
        with contextlib.suppress(grpc.RpcError):
            self.wait(cid, timeout=5)
        with contextlib.suppress(grpc.RpcError):
            self.delete(cid)
        with contextlib.suppress(grpc.RpcError):
            self.containers.Delete(
                containers_pb2.DeleteContainerRequest(id=cid), metadata=self.md, timeout=5
            )
        with contextlib.suppress(grpc.RpcError):
            self.snapshots.Remove(
                snapshots_pb2.RemoveSnapshotRequest(snapshotter=SNAPSHOTTER, key=cid),
                metadata=self.md,
                timeout=5,
            )
        if cid in self._made:
            self._made.remove(cid)

    def close(self) -> None:
        for cid in reversed(list(self._made)):
            self.remove(cid)
        for out in self._outputs:
            out.close()
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        shutil.rmtree(self.dir, ignore_errors=True)


def logging_runc(directory: Path) -> tuple[Path, Path]:
    """A `runc` that notes each command it is asked (`create`, `start`...) and runs the real
    one: (its path, its log)."""
    real = shutil.which("runc")
    assert real is not None
    directory.mkdir()
    log = directory / "commands"
    wrapper = directory / "runc"  # named runc: the shim does runc's file-only commands itself
    commands = " ".join(("create", "start", "delete", "kill", "state", "ps", "exec"))
    wrapper.write_text(
        "#!/bin/sh\n"
        'for arg in "$@"; do\n'
        f"  case $arg in {commands.replace(' ', '|')}) echo $arg >> {log}; break;; esac\n"
        "done\n"
        f'exec {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper, log


def cgroups_of(ns: str, cid: str) -> list[Path]:
    """The container's cgroup directories (ctr puts them at /<ns>/<id>) in every hierarchy."""
    return [p for p in Path("/sys/fs/cgroup").glob(f"*/{ns}/{cid}") if p.exists()]
