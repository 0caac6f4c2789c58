"""The CRI's ExecSync: a command run to its end in a running container, its output answered.

- The container is found by id or unique prefix among the CRI's containers
  (`containers.CriContainerLookup`): NotFound otherwise. It must be running (its record says so
  and its task's init is running or paused): FailedPrecondition `container is in
  CONTAINER_EXITED state` otherwise, containerd's words (containerd answers them as Unknown).
- The command runs as an exec of the container's task, through its shim as Tasks.Exec runs one
  (`runtime.execs`), with the container's process settings (user, environment, working
  directory, capabilities...; its seccomp filter and namespaces come with the container).
- stdout and stderr are captured, each up to OUTPUT_LIMIT (16 MiB, containerd's cap), the rest
  read and dropped. The answer holds them and the exit code: a non-zero exit is no error
  (kubelet's probes read the code). An answer must fit in one gRPC message, which kubelet and
  ctrd take up to 16 MiB: when the two streams together would not fit (MESSAGE_ROOM), they are
  cut further (`fit`: the shorter kept whole if it fits in half), where containerd's answer
  fails with RESOURCE_EXHAUSTED.
- `timeout` > 0 seconds: past it, the process is killed (SIGKILL) and waited for, and the call
  fails with DEADLINE_EXCEEDED, `failed to exec in container: timeout 1s exceeded: context
  deadline exceeded` as containerd words it (kubelet reads the code as a probe's timeout).
  `timeout` 0 waits as long as the process runs (or the caller's own deadline).

Whatever the outcome, nothing is left behind: no process, no exec in the shim, no FIFO.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import grpc

from supervisor import errors
from supervisor.api.runtime.v1 import api_pb2 as cri
from supervisor.runtime import execs

if TYPE_CHECKING:
    from supervisor.cri.containers import ContainerRecord
    from supervisor.metadata.containers import ContainerStore
    from supervisor.runtime.manager import TaskManager

Context = grpc.aio.ServicerContext[Any, Any]

OUTPUT_LIMIT = 16 * 1024 * 1024  # bytes kept of each stream, as containerd's ExecSync
EXEC_PREFIX = "execsync-"  # exec ids: `ctr tasks ps` and logs can tell them apart
MESSAGE_ROOM = 16 * 1024 * 1024 - 64 * 1024  # output an answer holds, within 16 MiB
RUNNING = 1  # runtime.v1 ContainerState


class Lookup(Protocol):
    async def get(self, key: str) -> ContainerRecord: ...


_STATE_NAMES = {0: "CONTAINER_CREATED", 1: "CONTAINER_RUNNING", 2: "CONTAINER_EXITED"}


class ExecSync:
    def __init__(
        self,
        namespace: str,
        lookup: Lookup,
        tasks: TaskManager,
        containers: Callable[[], ContainerStore],
        fifo_dir: Path,
    ) -> None:
        self._namespace = namespace
        self._lookup = lookup
        self._tasks = tasks
        self._containers = containers
        self._fifo_dir = fifo_dir

    async def ExecSync(self, request: cri.ExecSyncRequest, context: Context) -> Any:
        if not request.cmd:
            raise errors.InvalidArgument("cmd must not be empty", plain=True)
        record = await self._lookup.get(request.container_id)
        task = self._running_task(record)
        container = await self._containers().get(record.id)
        process = execs.exec_process(_process_of(container.spec), list(request.cmd))
        timeout = float(request.timeout) if request.timeout > 0 else None
        exec_id = EXEC_PREFIX + os.urandom(16).hex()
        try:
            done = await execs.run(task, exec_id, process, self._fifo_dir, timeout, OUTPUT_LIMIT)
        except execs.TimedOut:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"failed to exec in container: timeout {go_seconds(request.timeout)} exceeded: "
                "context deadline exceeded",
            )
            raise AssertionError("unreachable") from None  # abort raises
        stdout, stderr = fit(done.stdout, done.stderr, MESSAGE_ROOM)
        return cri.ExecSyncResponse(stdout=stdout, stderr=stderr, exit_code=done.exit_code)

    def _running_task(self, record: ContainerRecord) -> Any:
        """The container's task, if the container runs; FailedPrecondition otherwise."""
        state = int(record.state)
        if state == RUNNING:
            if not self._tasks.running(self._namespace, record.id):
                state = 2  # its task is gone or has exited: the record lags behind
            else:
                task = self._tasks.get(self._namespace, record.id)
                if task.status != "created":
                    return task
        name = _STATE_NAMES.get(state, "CONTAINER_UNKNOWN")
        raise errors.FailedPrecondition(f"container is in {name} state", plain=True)


def fit(stdout: bytes, stderr: bytes, room: int) -> tuple[bytes, bytes]:
    """Both streams cut to `room` bytes together: each keeps half, or the shorter all of it
    and the other the rest."""
    if len(stdout) + len(stderr) <= room:
        return stdout, stderr
    half = room // 2
    if len(stderr) <= half:
        return stdout[: room - len(stderr)], stderr
    if len(stdout) <= half:
        return stdout, stderr[: room - len(stdout)]
    return stdout[:half], stderr[: room - half]


def go_seconds(seconds: int) -> str:
    """Whole seconds as Go prints a time.Duration: `1s`, `1m30s`, `2h0m0s`."""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def _process_of(spec: tuple[str, bytes] | None) -> dict[str, Any]:
    """The `process` of a container's OCI spec (JSON); FailedPrecondition without one."""
    try:
        process = json.loads(spec[1]).get("process") if spec else None
    except (ValueError, AttributeError):
        process = None
    if not isinstance(process, dict):
        raise errors.FailedPrecondition("container has no OCI process spec to exec from")
    return process
