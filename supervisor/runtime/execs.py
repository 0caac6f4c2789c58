"""A process run to its end in a running container, its output captured: what the CRI's
ExecSync (and any in-daemon caller) needs, through the path Tasks.Exec takes (the task's shim:
exec, start, wait, delete).

The process is the container's own (`exec_process`: user, groups, environment, working
directory, capabilities, rlimits, no_new_privs, AppArmor/SELinux labels of the spec's
`process`; its seccomp filter and namespaces are the container's, which the runtime applies to
every exec) running the given argv, without a terminal, as `ctr tasks exec` and ctrctl's exec
build it.

Output: stdout and stderr each go to a FIFO of their own that the daemon reads as it comes,
keeping the first `limit` bytes and discarding the rest, so a process that writes without end
neither blocks nor fills memory. The daemon also holds a write end of each FIFO, so that its
reader sees no end of file before the shim has opened it.

Unlike Tasks.Exec and Start, `run` does not wait for the exec's events to be published before
it goes on (nobody here watches them; they are published all the same, in order, and the exit
that `run` waits for comes after them).

A process still running `time_limit` seconds after its start is killed (SIGKILL) and waited for
(a bounded time), and `run` raises `TimedOut`. Whatever happens (an error, a timeout, the
caller cancelled), the process is gone, deleted from the shim (which first lets its output
drain, for a bounded time) and its FIFOs removed when `run` returns or raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from supervisor import errors
from supervisor.runtime.manager import Task

log = structlog.get_logger("ctrd.execs")

CLEANUP_TIMEOUT = 12.0  # seconds to kill, wait for and delete an exec given up (drain: 10 s)
KILL_WAIT = 5.0  # seconds to wait for a killed exec's exit


class TimedOut(Exception):
    """The process ran past its timeout: it was killed."""


@dataclass(frozen=True)
class Finished:
    exit_code: int
    stdout: bytes
    stderr: bytes


def exec_process(process: dict[str, Any], argv: list[str]) -> dict[str, Any]:
    """An exec's OCI process: the container's `process` running `argv`, no terminal."""
    spec = dict(process)
    spec["args"] = list(argv)
    spec["terminal"] = False
    spec.pop("consoleSize", None)
    return spec


class Capture:
    """A FIFO whose first `limit` bytes are kept as they arrive, the rest read and dropped."""

    def __init__(self, path: Path, limit: int) -> None:
        self.path = path
        self.limit = limit
        self.data = bytearray()
        self.dropped = 0
        os.mkfifo(path, 0o600)
        self._read = self._hold = -1
        try:
            self._read = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            self._hold = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            self.close()
            raise
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._read, self.drain)

    def drain(self) -> None:
        """Read what the FIFO holds now."""
        while self._read >= 0:
            try:
                chunk = os.read(self._read, 1 << 16)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                raise
            if not chunk:
                return
            room = max(self.limit - len(self.data), 0)
            self.data += chunk[:room]
            self.dropped += len(chunk) - min(room, len(chunk))

    def bytes(self) -> bytes:
        self.drain()
        return bytes(self.data)

    def close(self) -> None:
        if self._read >= 0:
            with contextlib.suppress(ValueError, RuntimeError):
                self._loop.remove_reader(self._read)
        for fd in (self._read, self._hold):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._read = self._hold = -1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


async def run(
    task: Task,
    exec_id: str,
    process: dict[str, Any],
    fifo_dir: Path,
    time_limit: float | None,
    limit: int,
) -> Finished:
    """Run `process` in `task`'s container to its end (see the module's doc)."""
    os.makedirs(fifo_dir, 0o700, exist_ok=True)
    out = Capture(fifo_dir / f"{exec_id}.out", limit)
    try:
        err = Capture(fifo_dir / f"{exec_id}.err", limit)
    except BaseException:
        out.close()
        raise
    added = False
    try:
        await task.call(
            "exec",
            {
                "exec_id": exec_id, "spec": process, "stdin": "",
                "stdout": str(out.path), "stderr": str(err.path), "terminal": False,
            },
        )  # fmt: skip
        added = True
        try:
            await task.call("start", {"exec_id": exec_id})
        except errors.CtrdError:
            task.start_failed(exec_id)
            raise
        try:
            exit_ = await asyncio.wait_for(task.wait(exec_id), time_limit)
        except TimeoutError:
            await kill(task, exec_id)
            raise TimedOut(time_limit) from None
        await delete(task, exec_id)  # returns once the output has drained (bounded)
        added = False
        return Finished(exit_.status, out.bytes(), err.bytes())
    finally:
        if added:
            with contextlib.suppress(Exception):
                await asyncio.shield(abandon(task, exec_id))
        out.close()
        err.close()


async def kill(task: Task, exec_id: str, wait: float = KILL_WAIT) -> None:
    """SIGKILL an exec and wait for its exit (at most `wait` seconds)."""
    with contextlib.suppress(errors.CtrdError):
        await task.call("kill", {"exec_id": exec_id, "signal": signal.SIGKILL, "all": False})
    with contextlib.suppress(errors.CtrdError, TimeoutError):
        await asyncio.wait_for(task.wait(exec_id), wait)


async def delete(task: Task, exec_id: str) -> None:
    """Delete an exec from its shim (returns once its output has drained, bounded) and forget
    it; one already gone is fine."""
    with contextlib.suppress(errors.NotFound):
        await task.call("delete", {"exec_id": exec_id})
    task.forget_exec(exec_id)


async def abandon(
    task: Task,
    exec_id: str,
    within: float = CLEANUP_TIMEOUT,
    kill_wait: float = KILL_WAIT,
    event: str = "exec_not_deleted",
) -> None:
    """An exec given up (timed out, failed, or its caller gone): killed if it may still run,
    then deleted from the shim, all within `within` seconds; a delete that fails is logged as
    `event`. ExecSync's, the streaming exec's and the health probes' way out."""
    async with asyncio.timeout(within):
        # Once the init has exited, every exec that ran has its exit (the shim announces
        # them first): only one that never started has none, and never will.
        ended = exec_id in task.exits or exec_id in task.unstarted or "" in task.exits
        if not ended and not task.deleting:
            await kill(task, exec_id, kill_wait)
        try:
            await delete(task, exec_id)
        except errors.CtrdError as e:
            log.warning(event, ns=task.namespace, id=task.id, error=str(e))
