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

Attach (`Processes.attach(request, channels)`): the container's main process, whose output
the shim copies to its log AND to the container's FIFOs (`containerio`, made at its start).
While clients are attached, one task per FIFO (`_Hub`) reads it and hands every chunk to each
client (a client more than CLIENT_BACKLOG behind loses output; the log has it all). A
client's stdin goes into the container's stdin FIFO (dropped if the container takes no
input); its end closes the container's stdin when the container is `stdin_once`. Resizes go
to the container's terminal. The attach lasts until the container's output ends (its
process exited: every byte of it sent first), or, with no output asked for, its exit; or
until the client goes (the container goes on). The last client's leaving closes the FIFOs'
readers; nothing else is held.
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
from supervisor.cri.streaming import containerio
from supervisor.cri.streaming.containerio import STDERR, STDIN, STDOUT
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


async def _resizes(
    channel: Channel, apply: Callable[[int, int], Any], parser: ResizeParser | None = None
) -> None:
    parser = parser or ResizeParser()
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
        state: Path,
    ) -> None:
        self._namespace = namespace
        self._state = state
        self._hubs: dict[str, _Hub] = {}  # container id -> its attached clients
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
        record, task = await self.running_task(request.container_id)
        config = record.container_config()
        base = containerio.directory(self._state, record.id)
        hub = self._hubs.get(record.id)
        if hub is None or hub.ended:
            hub = self._hubs[record.id] = _Hub(base, bool(config.tty))
        want = [
            name
            for name, channel in ((STDOUT, channels.stdout), (STDERR, channels.stderr))
            if channel is not None and name in hub.names
        ]
        client = hub.subscribe(want)
        try:
            await _Attach(task, base, config, channels, client).run()
        finally:
            if hub.unsubscribe(client):
                self._hubs.pop(record.id, None)


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
        parser = ResizeParser()
        if self.tty and channels.resize is not None:
            await self._first_size(channels.resize, parser)
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
                    inputs.append(
                        group.create_task(_resizes(channels.resize, self._resize, parser))
                    )
                code = await self._start_and_wait()
                await execs.delete(self.task, self.exec_id)  # once its output has drained
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
                    await asyncio.shield(execs.abandon(self.task, self.exec_id))

    async def _first_size(self, channel: Channel, parser: ResizeParser) -> None:
        """The client's terminal size, which kubectl and crictl send as soon as the streams
        are up, waited for (at most FIRST_SIZE_WAIT) so that the process's terminal has it
        from the start (the process's `consoleSize`): a shell reading its first line at once
        would otherwise see 0x0, as the size comes while it runs."""
        try:
            async with asyncio.timeout(FIRST_SIZE_WAIT):
                while self.size is None:
                    chunk = await channel.read()
                    if not chunk:
                        return
                    for width, height in parser.feed(chunk):
                        self.size = (width, height)
        except TimeoutError:
            return
        if self.size is not None:
            width, height = self.size
            self.process = {**self.process, "consoleSize": {"height": height, "width": width}}

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
                await execs.kill(self.task, self.exec_id)
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


FIRST_SIZE_WAIT = 0.5  # seconds a terminal exec waits for the client's first size
CLIENT_BACKLOG = 4 * 1024 * 1024  # bytes an attached client may lag behind before it loses some


async def _ready(fd: int, writing: bool = False) -> None:
    """Until `fd` can be read (or written) without blocking."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not future.done():
            future.set_result(None)

    if writing:
        loop.add_writer(fd, ready)
    else:
        loop.add_reader(fd, ready)
    try:
        await future
    finally:
        if writing:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


async def _all(tasks: list[asyncio.Task[None]]) -> None:
    await asyncio.gather(*tasks)


class _Client:
    """One attached client's share of a container's output: chunks per stream, b"" = end."""

    def __init__(self, names: list[str]) -> None:
        self.queues: dict[str, asyncio.Queue[bytes]] = {n: asyncio.Queue() for n in names}
        self.backlog = dict.fromkeys(names, 0)

    def put(self, name: str, data: bytes) -> None:
        queue = self.queues.get(name)
        if queue is None:
            return
        if data and self.backlog[name] > CLIENT_BACKLOG:
            return  # too slow a reader loses output, as the shim's tee does; the log has it
        self.backlog[name] += len(data)
        queue.put_nowait(data)

    async def get(self, name: str) -> bytes:
        data = await self.queues[name].get()
        self.backlog[name] -= len(data)
        return data


class _Hub:
    """A container's output FIFOs (`containerio`), each read by one task while clients are
    attached and copied to every one of them. What the FIFOs held before the first client
    came (what the shim could put there while nobody read) is dropped: attach shows output
    from the moment it is made, as containerd's does."""

    def __init__(self, base: Path, tty: bool) -> None:
        self.names = [STDOUT] if tty else [STDOUT, STDERR]
        self.names = [n for n in self.names if (base / n).exists()]
        self._base = base
        self._clients: list[_Client] = []
        self._pumps: list[asyncio.Task[None]] = []
        self.ended = False

    def subscribe(self, names: list[str]) -> _Client:
        client = _Client(names)
        self._clients.append(client)
        if not self._pumps:
            self._pumps = [asyncio.create_task(self._pump(n)) for n in self.names]
        return client

    def unsubscribe(self, client: _Client) -> bool:
        """True when it was the last client: the FIFOs are closed."""
        self._clients.remove(client)
        if self._clients:
            return False
        for pump in self._pumps:
            pump.cancel()
        self._pumps = []
        self.ended = True
        return True

    async def _pump(self, name: str) -> None:
        try:
            fd = os.open(self._base / name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            log.warning("cri_attach_fifo", path=str(self._base / name), error=str(e))
            self._send(name, b"")
            return
        try:
            with contextlib.suppress(BlockingIOError):
                while os.read(fd, 1 << 16):
                    pass  # stale: written while nobody was attached
            while True:
                try:
                    data = os.read(fd, 1 << 16)
                except BlockingIOError:
                    await _ready(fd)
                    continue
                self._send(name, data)
                if not data:
                    return  # the container's output has ended
        finally:
            os.close(fd)

    def _send(self, name: str, data: bytes) -> None:
        for client in self._clients:
            client.put(name, data)


class _Attach:
    """One client attached to a container's main process (see `Processes.attach`)."""

    def __init__(
        self, task: Task, base: Path, config: Any, channels: Channels, client: _Client
    ) -> None:
        self.task = task
        self.base = base
        self.config = config
        self.channels = channels
        self.client = client

    async def run(self) -> None:
        """Until the container's output has ended (all of it sent), or, with no output asked
        for, its exit; or until the client has gone."""
        channels = self.channels
        async with asyncio.TaskGroup() as group:
            outputs = [
                group.create_task(self._copy_out(name, channel))
                for name, channel in ((STDOUT, channels.stdout), (STDERR, channels.stderr))
                if channel is not None and name in self.client.queues
            ]
            helpers = []
            if channels.stdin is not None:
                helpers.append(group.create_task(self._copy_in(channels.stdin)))
            if channels.resize is not None and self.config.tty:
                helpers.append(group.create_task(_resizes(channels.resize, self._resize)))
            ended = _all(outputs) if outputs else self.task.wait("")
            watch = [group.create_task(channels.lost.wait()), group.create_task(ended)]
            await asyncio.wait(watch, return_when=asyncio.FIRST_COMPLETED)
            for job in (*outputs, *helpers, *watch):
                job.cancel()

    async def _copy_out(self, name: str, channel: Channel) -> None:
        while data := await self.client.get(name):
            await channel.write(data)

    async def _copy_in(self, channel: Channel) -> None:
        """The client's input to the container's stdin (when it takes input; else dropped);
        its end is the container's with `stdin_once`."""
        if not self.config.stdin:
            while await channel.read():
                pass
            return
        sink = _Writer(self.base / STDIN)
        try:
            while chunk := await channel.read():
                await sink.write(chunk)
        finally:
            sink.close()
        if self.config.stdin_once:
            with contextlib.suppress(errors.CtrdError):
                await self.task.call("close_io", {"exec_id": "", "stdin": True})

    async def _resize(self, width: int, height: int) -> None:
        with contextlib.suppress(errors.CtrdError):
            await self.task.call("resize_pty", {"exec_id": "", "width": width, "height": height})


class _Writer:
    """The write end of a container's stdin FIFO (the shim holds its read end)."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._fd, view) :]
            except BlockingIOError:
                await _ready(self._fd, writing=True)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
