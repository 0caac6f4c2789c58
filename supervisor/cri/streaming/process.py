"""Exec and attach through the shims, for the remote-command channels (`remotecommand`).

Exec (`Processes.exec(request, channels)`): the command runs as an exec of the container's task
(the container's process settings, as ExecSync's: `runtime.execs.exec_process`), with a
terminal when `tty` (TERM=xterm added, as containerd does; the resize channel's sizes applied
to it as they come, the last one again once the process has started). Its stdio are FIFOs
under the part's directory (`fifos`): stdin's fed from the stdin channel and closed at that
channel's end (the process then reads EOF), stdout's and stderr's copied to their channels.
It returns once the process has exited, the shim has drained its output and every byte of it
has been written to the channels (the status comes after, `remotecommand.serve`); a non-zero
exit raises `remotecommand.ExitCode`.

If the client goes away first (`channels.lost`), the process is killed. Whatever happens, the
exec is deleted from the shim and its FIFOs removed before `exec` returns or raises: nothing
is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from supervisor import errors
from supervisor.cri.execsync import ExecSync, _process_of
from supervisor.cri.streaming.fifos import InputFifo, OutputFifo
from supervisor.cri.streaming.remotecommand import Channel, Channels, ExitCode, ResizeParser
from supervisor.runtime import execs

if TYPE_CHECKING:
    from supervisor.cri.containers import CriContainerLookup
    from supervisor.metadata.containers import ContainerStore
    from supervisor.runtime.manager import Task, TaskManager

log = structlog.get_logger("ctrd.cri.streaming")

EXEC_PREFIX = "exec-"


async def _copy_out(source: OutputFifo, channel: Channel | None) -> None:
    """Everything `source` gives, to `channel` (read and dropped when there is none)."""
    while chunk := await source.read():
        if channel is not None:
            await channel.write(chunk)


async def _copy_in(channel: Channel, sink: InputFifo) -> None:
    """The client's input to the process; its end closes the process's stdin."""
    while chunk := await channel.read():
        await sink.write(chunk)
    sink.close()


async def _resizes(channel: Channel, apply: Callable[[int, int], Any]) -> None:
    parser = ResizeParser()
    while chunk := await channel.read():
        for width, height in parser.feed(chunk):
            await apply(width, height)


class Processes:
    def __init__(
        self,
        namespace: str,
        lookup: CriContainerLookup,
        tasks: TaskManager,
        containers: Callable[[], ContainerStore],
        fifo_dir: Path,
    ) -> None:
        self._namespace = namespace
        self._lookup = lookup
        self._tasks = tasks
        self._containers = containers
        self._fifo_dir = fifo_dir
        self._checker = ExecSync(namespace, lookup, tasks, containers, fifo_dir)

    async def running_task(self, container_id: str) -> tuple[Any, Task]:
        """(its record, its task) of a running container; NotFound, FailedPrecondition."""
        record = await self._lookup.get(container_id)
        return record, self._checker._running_task(record)

    async def exec(self, request: Any, channels: Channels) -> None:
        record, task = await self.running_task(request.container_id)
        container = await self._containers().get(record.id)
        process = execs.exec_process(_process_of(container.spec), list(request.cmd))
        if request.tty:
            process["terminal"] = True
            env = [e for e in process.get("env", []) if not e.startswith("TERM=")]
            process["env"] = [*env, "TERM=xterm"]
        exec_id = EXEC_PREFIX + os.urandom(12).hex()
        os.makedirs(self._fifo_dir, 0o700, exist_ok=True)
        run = _Exec(task, exec_id, process, self._fifo_dir, channels, bool(request.tty))
        code = await run.run()
        if code != 0:
            raise ExitCode(code, list(request.cmd))

    async def attach(self, request: Any, channels: Channels) -> None:
        raise errors.Unimplemented("attach is not served yet")


class _Exec:
    """One streaming exec, from its FIFOs' making to their removal."""

    def __init__(
        self,
        task: Task,
        exec_id: str,
        process: dict[str, Any],
        fifo_dir: Path,
        channels: Channels,
        tty: bool,
    ) -> None:
        self.task = task
        self.exec_id = exec_id
        self.process = process
        self.base = fifo_dir / exec_id
        self.channels = channels
        self.tty = tty
        self.size: tuple[int, int] | None = None
        self.started = False
        self.fifos: list[InputFifo | OutputFifo] = []

    async def run(self) -> int:
        try:
            return await self._run()
        finally:
            for fifo in self.fifos:
                fifo.close()

    async def _run(self) -> int:
        channels = self.channels
        stdin = self._fifo(InputFifo, "in") if channels.stdin else None
        stdout = self._fifo(OutputFifo, "out") if channels.stdout else None
        stderr = self._fifo(OutputFifo, "err") if channels.stderr and not self.tty else None
        await self.task.call(
            "exec",
            {
                "exec_id": self.exec_id, "spec": self.process,
                "stdin": str(stdin.path) if stdin else "",
                "stdout": str(stdout.path) if stdout else "",
                "stderr": str(stderr.path) if stderr else "",
                "terminal": self.tty,
            },
        )  # fmt: skip
        added = True
        try:
            async with asyncio.TaskGroup() as group:
                outputs = [
                    group.create_task(_copy_out(fifo, channel))
                    for fifo, channel in ((stdout, channels.stdout), (stderr, channels.stderr))
                    if fifo is not None
                ]
                inputs = []
                if stdin is not None and channels.stdin is not None:
                    inputs.append(group.create_task(_copy_in(channels.stdin, stdin)))
                if channels.resize is not None and self.tty:
                    inputs.append(group.create_task(_resizes(channels.resize, self._resize)))
                code = await self._start_and_wait()
                await execs._delete(self.task, self.exec_id)  # once its output has drained
                added = False
                for fifo in (stdout, stderr):
                    if fifo is not None:
                        fifo.release()
                await asyncio.gather(*outputs)
                for task in inputs:
                    task.cancel()
            return code
        finally:
            if added:
                with contextlib.suppress(Exception):
                    await asyncio.shield(execs._cleanup(self.task, self.exec_id))

    def _fifo(self, kind: type[InputFifo] | type[OutputFifo], suffix: str) -> Any:
        fifo = kind(Path(f"{self.base}.{suffix}"))
        self.fifos.append(fifo)
        return fifo

    async def _start_and_wait(self) -> int:
        try:
            await self.task.call("start", {"exec_id": self.exec_id})
        except errors.CtrdError:
            self.task.start_failed(self.exec_id)
            raise
        self.started = True
        if self.size is not None:
            await self._resize(*self.size)
        waiting = asyncio.ensure_future(self.task.wait(self.exec_id))
        lost = asyncio.ensure_future(self.channels.lost.wait())
        try:
            await asyncio.wait((waiting, lost), return_when=asyncio.FIRST_COMPLETED)
            if not waiting.done():
                log.info("cri_exec_client_gone", id=self.task.id, exec_id=self.exec_id)
                await execs._kill(self.task, self.exec_id)
            exit_ = await asyncio.wait_for(asyncio.shield(waiting), execs.KILL_WAIT)
        except TimeoutError:
            raise errors.Unknown(f"exec {self.exec_id} did not exit after SIGKILL") from None
        finally:
            lost.cancel()
            waiting.cancel()
        return int(exit_.status)

    async def _resize(self, width: int, height: int) -> None:
        self.size = (width, height)
        if not self.started:
            return
        params = {"exec_id": self.exec_id, "width": width, "height": height}
        with contextlib.suppress(errors.CtrdError):
            await self.task.call("resize_pty", params)
