"""Tasks: the daemon's side of the shims, one per container, forked by the zygote.

`TaskManager.create` makes the bundle (spec + mounted rootfs), has the zygote fork a shim for it,
connects, subscribes to the shim's event stream and asks the shim to create the container.
Every event the shim journals arrives on that stream with its sequence number, and is
published on the exchange in order, exactly once per connection (a replay overlapping live
events is skipped by sequence number). Calls whose events must be visible before the call
returns (start, create, delete, pause...) get the sequence number of their event from the shim
and wait until the stream has delivered it, so `/tasks/start` always precedes `/tasks/exit`
and a client that saw Delete return has seen `/tasks/delete` published.

Wait is answered from the exits the stream delivered, so it may be called before Start, and a
Wait that returns has had its `/tasks/exit` published. The init process's state (created,
running, paused, stopped) is known from those events too, so listing tasks asks no shim.

At a restart each live shim's task is rebuilt from the shim's journal on disk, before the
daemon serves; the shim is attached in the background, from the journal's last record on, and
calls on the task wait for that. A shim holds an exclusive lock on its journal while it lives,
so one that died while no daemon ran is told apart at once, and its task buried before the
daemon serves.

Events recovered at a restart (what the shims journaled while no daemon ran, above all exits)
are published before the daemon serves, when nobody can be subscribed. A client that was
subscribed before the restart never asks for them again: dockerd re-subscribes and would show
a container that exited meanwhile as running forever. So they are kept, until their task is
deleted or RECOVERED_REPLAY has passed, and `recovered_events` gives them to each new
subscription (`services.events`), before its live events. Exits (and OOMs) published live
within that time after a restart are kept the same way: they could fall between the daemon
serving again and its clients subscribing again.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import sys
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from google.protobuf import message as pb_message

from shim import memory, protocol, zygote
from shim.journal import FILENAME as JOURNAL
from shim.journal import JournalError
from shim.journal import read as journal_read
from snapshotter.protocol import Mount
from supervisor import errors, tracing
from supervisor.api.containerd.events import task_pb2 as events_pb
from supervisor.api.containerd.services.events.v1 import events_pb2
from supervisor.api.containerd.types import mount_pb2
from supervisor.events import Exchange, pack
from supervisor.metrics import counts
from supervisor.runtime.bundle import Bundle
from supervisor.runtime.shimclient import ShimClient

log = structlog.get_logger("ctrd.tasks")

# Where the `shim` package is imported from: the zygote must run the daemon's copy of it.
_CODE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(zygote.__file__)))
SEEN_TIMEOUT = 10.0  # how long a call waits for its event to come through the stream
SHUTDOWN_TIMEOUT = 2.0  # how long a delete waits for the shim to exit
# How long after a restart the events it recovered are replayed to new subscribers. Clients
# that were subscribed before the restart come back within seconds (dockerd's containerd
# client retries every 3 s at most); the bound keeps a later `ctr events` from seeing them.
RECOVERED_REPLAY = 60.0

_EVENTS: dict[str, type[pb_message.Message]] = {
    "/tasks/create": events_pb.TaskCreate,
    "/tasks/start": events_pb.TaskStart,
    "/tasks/delete": events_pb.TaskDelete,
    "/tasks/exit": events_pb.TaskExit,
    "/tasks/oom": events_pb.TaskOOM,
    "/tasks/exec-added": events_pb.TaskExecAdded,
    "/tasks/exec-started": events_pb.TaskExecStarted,
    "/tasks/paused": events_pb.TaskPaused,
    "/tasks/resumed": events_pb.TaskResumed,
}


# What the init process is after each event that changes it (its exit aside).
_INIT_STATUS = {"/tasks/start": "running", "/tasks/paused": "paused", "/tasks/resumed": "running"}


def event_message(topic: str, event: dict[str, Any]) -> pb_message.Message:
    """containerd's event message for a shim event (unknown keys are ignored)."""
    cls = _EVENTS[topic]
    msg = cls()
    fields = cls.DESCRIPTOR.fields_by_name
    for key, value in event.items():
        if key not in fields:
            continue
        if key == "exited_at":
            getattr(msg, key).FromNanoseconds(int(value))
        elif key == "rootfs":
            msg.rootfs.extend(  # type: ignore[attr-defined]
                mount_pb2.Mount(
                    type=m.get("type", ""),
                    source=m.get("source", ""),
                    target=m.get("target", ""),
                    options=m.get("options", []),
                )
                for m in value
            )
        elif key == "io":
            msg.io.CopyFrom(events_pb.TaskIO(**value))  # type: ignore[attr-defined]
        else:
            setattr(msg, key, value)
    return msg


@dataclass
class Exit:
    pid: int
    status: int
    at: int  # nanoseconds since the epoch


@dataclass(eq=False)
class Task:
    """A task the daemon knows: its shim connection, or, once its shim is gone, its record."""

    namespace: str
    id: str
    bundle: Bundle
    client: ShimClient | None
    source: str  # this task's shim, as the event log names it
    pid: int = 0
    shim_pid: int = 0
    last_seq: int = 0  # the last shim event applied
    published: int = 0  # the last shim event published (by this daemon or a previous one)
    exits: dict[str, Exit] = field(default_factory=dict)
    # Execs whose start failed: they never ran, and waiting on them returns at once with a
    # zero status and time, as containerd's shim answers (no `/tasks/exit` is published).
    unstarted: dict[str, Exit] = field(default_factory=dict)
    _exit_waiters: dict[str, list[asyncio.Future[Exit]]] = field(default_factory=dict)
    _progress: asyncio.Condition = field(default_factory=asyncio.Condition)
    _consumer: asyncio.Task[None] | None = None
    gone: str | None = None  # why the daemon let go of the task's shim
    dead: bool = False  # the shim died: the task is stopped and its record is all that is left
    deleting: bool = False
    io: dict[str, Any] = field(default_factory=dict)
    _deletion: asyncio.Future[dict[str, Any]] | None = None
    deleted_in_journal: bool = False
    runtime: Runtime | None = None  # None: the daemon's default, under its state dir
    status: str = ""  # the init process's, as its events tell: created, running, paused...
    # After a restart the task is known from its journal at once and its shim is attached
    # behind it: calls wait for that.
    attaching: asyncio.Future[None] | None = None
    # Work the init's process relies on that goes on after the create (its network's links,
    # made while the runtime created the container): the init's start waits for it, and
    # fails with it.
    ready_to_start: asyncio.Future[Any] | None = None

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        if self.attaching is not None and not self.attaching.done():
            await asyncio.shield(self.attaching)
        if self.dead or self.client is None:
            return self._dead_call(method, params or {})
        if method == "state" and self.client.closed_reason is not None:
            return self._dead_call(method, params or {})  # the shim just died: what is known
        return await self.client.call(method, params)

    def _dead_call(self, method: str, params: dict[str, Any]) -> Any:
        """Answer from what the daemon knows, the shim being gone (or going)."""
        exec_id = params.get("exec_id") or ""
        exit_ = self.exits.get(exec_id)
        if method == "state" and exit_ is None and not exec_id:
            # The shim died a moment ago and is being buried: the init still counts as running.
            return self._state(exec_id, Exit(self.pid, 0, 0), "running")
        if exit_ is None:
            raise errors.NotFound(f'process "{exec_id or self.id}" not found')
        if method == "state":
            return self._state(exec_id, exit_, "stopped")
        if method in ("kill", "wait"):
            raise errors.NotFound("process already finished")
        if method == "delete":
            return {"pid": exit_.pid, "exit_status": exit_.status, "exited_at": exit_.at}
        raise errors.FailedPrecondition(f'task "{self.id}" is stopped: its shim is gone')

    def init_state(self) -> dict[str, Any]:
        """The init process's state as the events published tell it, without asking the shim:
        every change of it (create, start, pause, resume, exit) is an event of its own."""
        exit_ = self.exits.get("")
        if exit_ is not None:
            return self._state("", exit_, "stopped")
        # A shim that died a moment ago is being buried: the init still counts as running.
        status = "running" if self.dead else self.status or "unknown"
        return self._state("", Exit(self.pid, 0, 0), status)

    def _state(self, exec_id: str, exit_: Exit, status: str) -> dict[str, Any]:
        return {
            "exec_id": exec_id, "pid": exit_.pid, "status": status,
            "stdin": self.io.get("stdin", ""), "stdout": self.io.get("stdout", ""),
            "stderr": self.io.get("stderr", ""), "terminal": bool(self.io.get("terminal")),
            "exit_status": exit_.status, "exited_at": exit_.at,
        }  # fmt: skip

    async def call_seen(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """Call, then wait until the event the call produced has been published."""
        if method == "start" and not (params or {}).get("exec_id"):
            return await self._start(params or {})
        result = await self.call(method, params)
        if isinstance(result, dict) and result.get("seq"):
            await self.seen(int(result["seq"]))
        return result

    async def _start(self, params: dict[str, Any]) -> Any:
        """The init's start, whoever asks (Tasks.Start, the CRI, restarts), timed and counted."""
        started = time.monotonic()
        try:
            with tracing.span("task.start"):
                if self.ready_to_start is not None:
                    await asyncio.shield(self.ready_to_start)
                    self.ready_to_start = None  # made: nothing more to wait for
                result = await self.call("start", params)
                if isinstance(result, dict) and result.get("seq"):
                    await self.seen(int(result["seq"]))
        except BaseException:
            counts.TASK_STARTS.inc("error")
            raise
        counts.TASK_STARTS.inc("ok")
        counts.TASK_STEP_SECONDS.observe(time.monotonic() - started, "start")
        return result

    async def seen(self, seq: int) -> None:
        async def reached() -> None:
            async with self._progress:
                await self._progress.wait_for(
                    lambda: self.last_seq >= seq or self.gone is not None or self.dead
                )

        try:
            await asyncio.wait_for(reached(), SEEN_TIMEOUT)
        except TimeoutError:
            log.warning("event_not_seen", ns=self.namespace, id=self.id, seq=seq)

    async def wait(self, exec_id: str) -> Exit:
        """The exit of a process (init: exec_id ""), once its `/tasks/exit` is published."""
        if exec_id in self.exits:
            return self.exits[exec_id]
        if exec_id in self.unstarted:
            return self.unstarted[exec_id]
        if self.gone is not None:
            raise errors.Unavailable(f"task {self.id}: {self.gone}")
        future: asyncio.Future[Exit] = asyncio.get_running_loop().create_future()
        self._exit_waiters.setdefault(exec_id, []).append(future)
        try:
            return await future
        finally:
            waiters = self._exit_waiters.get(exec_id, [])
            if future in waiters:
                waiters.remove(future)

    def _exited(self, exec_id: str, exit_: Exit) -> None:
        self.exits[exec_id] = exit_
        for future in self._exit_waiters.pop(exec_id, []):
            if not future.done():
                future.set_result(exit_)

    def start_failed(self, exec_id: str) -> None:
        """An exec's start failed: whoever waits for it, or will, gets a zero exit."""
        self.unstarted[exec_id] = Exit(0, 0, 0)
        for future in self._exit_waiters.pop(exec_id, []):
            if not future.done():
                future.set_result(self.unstarted[exec_id])

    def _let_go(self, why: str) -> None:
        """The daemon stops watching this task: whoever waits gets Unavailable."""
        self.gone = why
        for waiters in self._exit_waiters.values():
            for future in waiters:
                if not future.done():
                    future.set_exception(errors.Unavailable(f"task {self.id}: {why}"))
        self._exit_waiters.clear()

    def forget_exec(self, exec_id: str) -> None:
        self.exits.pop(exec_id, None)
        self.unstarted.pop(exec_id, None)


class _Steps:
    """The time of each step of a creation, as a lap timer (`counts.STEPS`)."""

    def __init__(self) -> None:
        self._last = time.monotonic()
        self.took: dict[str, float] = {}

    def lap(self, step: str) -> None:
        now = time.monotonic()
        self.took[step] = now - self._last
        self._last = now


def socket_path(state: Path, address: str, namespace: str, cid: str) -> str:
    """Where a task's shim listens: hashed, because sun_path holds 107 bytes."""
    digest = hashlib.sha256(f"{address}/{namespace}/{cid}".encode()).hexdigest()
    return str(state / "s" / digest[:32])


INSTANCE = "instance"  # a bundle's file naming its shim for the event log
DEAD = "dead.json"  # a bundle whose shim died: its task's last state
RUNTIME = "runtime.json"  # a bundle's runtime: binary and state root, for burying its task
ATTACH_AT_ONCE = 8  # shims attached at once after a restart


@dataclass(frozen=True)
class Runtime:
    """The OCI runtime a task runs on: its binary and its state root (`--root`)."""

    binary: str
    root: str

    def to_json(self) -> str:
        return json.dumps({"binary": self.binary, "root": self.root})

    @classmethod
    def from_json(cls, text: str) -> Runtime | None:
        try:
            record = json.loads(text)
            return cls(str(record["binary"]), str(record["root"]))
        except (ValueError, TypeError, KeyError):
            return None


_Records = list[protocol.Event] | None


def _journal(path: Path) -> list[protocol.Event]:
    """What a dead shim journaled (nothing if it never wrote its journal)."""
    try:
        return journal_read(path)
    except (OSError, JournalError) as e:
        log.warning("journal_unreadable", path=str(path), error=str(e))
        return []


def _live_journal(path: Path) -> list[protocol.Event] | None:
    """The journal of a shim that is alive, or None: its shim is gone, or it cannot be read.

    A shim holds an exclusive flock on its journal for as long as it lives (the kernel drops
    it when the shim dies, however it dies), so a lock that can be taken means a dead shim.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                return journal_read(path)
            except (OSError, JournalError):
                return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read(path: str | Path) -> str:
    """A small file's text, stripped; "" if it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    except OSError:
        return ""
    finally:
        os.close(fd)
    return b"".join(chunks).decode(errors="replace").strip()


def _subdirectories(path: str) -> list[str]:
    """The directories in `path`, sorted by name (none if it is not there)."""
    try:
        with os.scandir(path) as entries:
            return sorted(e.path for e in entries if e.is_dir(follow_symlinks=False))
    except OSError:
        return []


def _sealed_copy(path: str) -> int:
    """A memfd holding the file at `path`, sealed: nothing can write, grow or shrink it."""
    fd = os.memfd_create("ctrd-shim-python", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        with open(os.path.realpath(path), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            done = 0
            while done < size:
                sent = os.sendfile(fd, f.fileno(), done, size - done)
                if not sent:
                    raise OSError(errno.EIO, f"{path} shrank while being copied")
                done += sent
        seals = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    except BaseException:
        os.close(fd)
        raise
    return fd


class TaskManager:
    def __init__(
        self,
        state: Path,
        address: str,
        exchange: Exchange,
        runtime: str = "runc",
        recovered_replay: float = RECOVERED_REPLAY,
        native_exec: bool = True,
    ) -> None:
        self.state = state
        self.address = address
        self.exchange = exchange
        self.runtime = runtime
        self.native_exec = native_exec
        self._tasks: dict[tuple[str, str], Task] = {}
        self._creating: set[tuple[str, str]] = set()
        self._zygote_lock = asyncio.Lock()
        self._stopping = False
        self._background: set[asyncio.Task[None]] = set()
        self._attaching: set[asyncio.Task[None]] = set()  # shims of loaded tasks, being attached
        # Loaded tasks' shims are attached once the daemon serves, a few at a time: their
        # events can wait a moment (the shims journal them), the first calls should not.
        self._serving = asyncio.Event()
        self._attach_slots = asyncio.Semaphore(ATTACH_AT_ONCE)
        self._warming: asyncio.Task[None] | None = None
        self._recovering = False  # load() is publishing what happened while no daemon ran
        self._recovered: builtins.list[tuple[str, str, events_pb2.Envelope]] = []
        self._recovered_until = 0.0
        self._restarted = False  # load() found tasks: their clients may still be re-subscribing
        self._recovered_replay = recovered_replay

    # -- the zygote -------------------------------------------------------------------------

    async def _zygote(self, method: str, params: dict[str, Any] | None = None) -> Any:
        path = str(self.state / zygote.SOCKET)
        reader, writer = await asyncio.open_unix_connection(path)
        try:
            writer.write(protocol.encode(protocol.Request(1, method, params or {}).to_wire()))
            await writer.drain()
            decoder = protocol.Decoder()
            while True:
                data = await reader.read(1 << 16)
                if not data:
                    raise ConnectionError("the zygote closed the connection")
                frames = decoder.feed(data)
                if frames:
                    reply = protocol.parse(frames[0])
                    if isinstance(reply, protocol.ErrorResponse):
                        raise errors.Internal(f"zygote: {reply.message}")
                    if isinstance(reply, protocol.Response):
                        return reply.result
                    raise ConnectionError("the zygote sent something other than a response")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def start(self) -> None:
        """Make sure, in the background, that a zygote running this code serves the state
        dir: the daemon need not wait for it to answer (the first spawn waits for it)."""
        self._warming = asyncio.create_task(self._warm(), name="zygote")
        if memory.ksm_running() is False:
            log.info("ksm_off", hint="echo 1 > /sys/kernel/mm/ksm/run merges the shims' pages")

    async def _warm(self) -> None:
        async with self._zygote_lock:
            try:
                await self._ensure_zygote()
            except (OSError, ConnectionError, errors.CtrdError, protocol.ProtocolError) as e:
                log.warning("zygote_not_started", error=str(e))  # the first spawn retries

    async def _ensure_zygote(self) -> None:
        version = zygote.code_version()
        try:
            answer = await self._zygote("ping")
            if answer.get("version") == version:
                return
            log.info("zygote_replaced", pid=answer.get("pid"))
            with contextlib.suppress(OSError, errors.CtrdError):
                await self._zygote("exit")
        except (OSError, ConnectionError, protocol.ProtocolError):
            pass
        os.makedirs(self.state, exist_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_CODE_ROOT, env.get("PYTHONPATH")]))
        # The zygote (and so every shim) runs from a sealed memfd copy of the interpreter, as
        # runc runs from one of itself: a shim's exec into a container (shim.nsexec) must not
        # let the container reach a host binary through /proc/PID/exe (CVE-2019-5736).
        sealed = await asyncio.to_thread(_sealed_copy, sys.executable)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "shim", "zygote", "--state", str(self.state),
                executable=f"/proc/{os.getpid()}/fd/{sealed}",
                env=env, cwd="/", stdin=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
        finally:
            os.close(sealed)
        if await proc.wait() != 0:
            raise errors.Internal(f"the shim zygote did not start (exit {proc.returncode})")

    async def stop(self) -> None:
        """Let go of every shim (they keep running) and stop the zygote."""
        self._stopping = True
        if self._warming is not None:
            await self._warming
        for attach in list(self._attaching):
            attach.cancel()
        await asyncio.gather(*self._attaching, return_exceptions=True)
        for task in list(self._tasks.values()):
            task._let_go("the daemon is stopping")
            await self._close(task)
        self._tasks.clear()
        with contextlib.suppress(
            OSError, ConnectionError, errors.CtrdError, protocol.ProtocolError
        ):
            await self._zygote("exit")

    async def _spawn(self, params: dict[str, Any]) -> int:
        async with self._zygote_lock:
            try:
                return int((await self._zygote("spawn", params))["pid"])
            except (OSError, ConnectionError, protocol.ProtocolError):
                await self._ensure_zygote()  # it died: start another and try once more
                return int((await self._zygote("spawn", params))["pid"])

    # -- tasks ------------------------------------------------------------------------------

    def get(self, namespace: str, cid: str) -> Task:
        task = self._tasks.get((namespace, cid))
        if task is None:
            # containerd's words, without its suffix; ctr adds "no running task found: ".
            raise errors.NotFound(f"task {cid} not found", plain=True)
        return task

    def list(self, namespace: str) -> list[Task]:
        return [t for (ns, _), t in sorted(self._tasks.items()) if ns == namespace]

    def exists(self, namespace: str, cid: str) -> bool:
        return (namespace, cid) in self._tasks or (namespace, cid) in self._creating

    def running(self, namespace: str, cid: str) -> bool:
        """Whether the container has a task whose init has not exited."""
        task = self._tasks.get((namespace, cid))
        return task is not None and "" not in task.exits and not task.dead

    def all(self) -> builtins.list[Task]:
        return list(self._tasks.values())

    async def reopen_log(self, namespace: str, cid: str) -> None:
        """Have the task's shim open its container's log again by its path, creating it
        (kubelet renamed the file to rotate it: the CRI's ReopenContainerLog). Only while the
        init runs; else FailedPrecondition "container is not running", and no file is made.
        A task loaded at a restart is asked once its shim is attached again."""
        task = self._tasks.get((namespace, cid))
        if task is None or not self.running(namespace, cid) or task.status == "created":
            raise errors.FailedPrecondition("container is not running", plain=True)
        try:
            await task.call("reopen_log")
        except errors.FailedPrecondition as e:  # it exited meanwhile: the shim said so
            raise errors.FailedPrecondition(e.detail, plain=True) from None

    async def create(
        self,
        namespace: str,
        cid: str,
        spec: bytes,
        mounts: Sequence[Mount],
        stdio: dict[str, Any],
        runtime: str = "",
        runtime_root: str = "",
        before: Awaitable[object] | None = None,
    ) -> Task:
        """Create a task; `runtime` names the runtime binary (default: the daemon's) and
        `runtime_root` its state root, under which each namespace has its own directory (as
        containerd's runc shim does with `containerd.runc.v1.Options.root`). `before` is work
        the spec relies on (a network namespace and files it names) running meanwhile: the
        bundle is written and the shim started alongside it, and the runtime creates the
        container only once it is done; its failure fails the create, leaving nothing."""
        key = (namespace, cid)
        if runtime_root and not os.path.isabs(runtime_root):
            raise errors.InvalidArgument(f'runtime root "{runtime_root}" is not an absolute path')
        if self.exists(namespace, cid):
            raise errors.AlreadyExists(f"task {cid}")  # containerd: "task c1: already exists"
        self._creating.add(key)
        chosen = Runtime(
            runtime or self.runtime,
            os.path.join(runtime_root, namespace)
            if runtime_root
            else str(self.state / "runc" / namespace),
        )
        creation = asyncio.ensure_future(
            self._create(namespace, cid, spec, mounts, stdio, chosen, before)
        )

        def done(future: asyncio.Future[Task]) -> None:
            self._creating.discard(key)
            if not future.cancelled():
                future.exception()  # retrieved: a caller that gave up cannot

        creation.add_done_callback(done)
        # Shielded: a caller that gives up leaves a created task (as with containerd), never
        # a shim or a mount without one.
        return await asyncio.shield(creation)

    async def _create(
        self,
        namespace: str,
        cid: str,
        spec: bytes,
        mounts: Sequence[Mount],
        stdio: dict[str, Any],
        runtime: Runtime,
        before: Awaitable[object] | None = None,
    ) -> Task:
        bundle = Bundle.at(self.state, namespace, cid)
        source = f"shim:{os.urandom(16).hex()}"

        def prepare() -> float:  # one trip to a thread
            os.makedirs(runtime.root, 0o711, exist_ok=True)
            return bundle.create(spec, mounts, {RUNTIME: runtime.to_json(), INSTANCE: source})

        steps = _Steps()
        try:
            with tracing.span("task.bundle"):  # the mount, its last part, is `task.snapshot`
                mounting = await asyncio.to_thread(prepare)
                tracing.record_last("task.snapshot", mounting)
        except BaseException:
            counts.TASK_CREATES.inc("error")
            raise
        steps.lap("bundle")
        steps.took["bundle"] -= mounting
        steps.took["snapshot"] = mounting
        task: Task | None = None
        try:
            config: dict[str, Any] = {
                "namespace": namespace,
                "id": cid,
                "bundle": str(bundle.path),
                "socket": socket_path(self.state, self.address, namespace, cid),
                "address": self.address,
                "runtime": runtime.binary,
                "runtime_root": runtime.root,
                "native_exec": self.native_exec,
            }
            with tracing.span("task.shim"):
                shim_pid = await self._spawn(config)
                client = await ShimClient.connect(str(config["socket"]), f"{namespace}/{cid}")
                task = Task(
                    namespace, cid, bundle, client, source,
                    shim_pid=shim_pid, io=dict(stdio), runtime=runtime,
                )  # fmt: skip
                await self._subscribe(task, after=0)
            steps.lap("shim")
            params = dict(stdio)
            params["rootfs"] = [
                {"type": m.type, "source": m.source, "target": "", "options": list(m.options)}
                for m in mounts
            ]
            if before is not None:
                with tracing.span("task.network"):
                    await before
                steps.lap("network")
            try:
                with tracing.span("task.create"):
                    result = await task.call_seen("create", params)
            except errors.CtrdError as e:  # containerd's runtime manager words it so
                raise type(e)(f"failed to create shim task: {e.detail}") from None
            task.pid = int(result["pid"])
            steps.lap("create")
        except BaseException:
            counts.TASK_CREATES.inc("error")
            if task is not None:
                task.deleting = True
                await self._shutdown(task, now=True)
                await self._close(task)
            await asyncio.to_thread(bundle.delete)
            raise
        self._tasks[(namespace, cid)] = task
        counts.TASK_CREATES.inc("ok")
        for step, seconds in steps.took.items():
            counts.TASK_STEP_SECONDS.observe(seconds, step)
        return task

    async def _subscribe(self, task: Task, after: int) -> int:
        """Follow the shim's events past `after`; the last sequence number it has journaled."""
        assert task.client is not None
        answer = await task.client.call("events", {"after": after})
        task._consumer = asyncio.create_task(
            self._consume(task), name=f"shim-events {task.namespace}/{task.id}"
        )
        return int(answer.get("last_seq", 0)) if isinstance(answer, dict) else 0

    async def _consume(self, task: Task) -> None:
        assert task.client is not None
        async for event in task.client.events():
            await self._take(task, event)
        # The connection ended. Unless the daemon let go or the task was deleted, the shim
        # may have died: find out, and finish what it cannot.
        known = self._tasks.get((task.namespace, task.id)) is task
        if known and task.gone is None and not task.deleting and not self._stopping:
            recovery = asyncio.create_task(
                self._recover(task), name=f"recover {task.namespace}/{task.id}"
            )
            self._background.add(recovery)
            recovery.add_done_callback(self._background.discard)

    async def _take(self, task: Task, event: protocol.Event) -> None:
        """Apply and publish one shim event, once: a replay may repeat events."""
        if event.seq <= task.last_seq:
            return
        if event.seq > task.last_seq + 1:
            log.warning(
                "shim_events_skipped", ns=task.namespace, id=task.id,
                expected=task.last_seq + 1, got=event.seq,
            )  # fmt: skip
        await self._apply(task, event)
        async with task._progress:
            task.last_seq = event.seq
            task._progress.notify_all()

    async def _apply(self, task: Task, event: protocol.Event) -> None:
        if event.topic not in _EVENTS:
            log.warning("shim_event_unknown", ns=task.namespace, id=task.id, topic=event.topic)
            return
        if event.seq > task.published:  # else a previous daemon published it: state only
            packed = pack(event_message(event.topic, event.event))
            # Journal and publish first: Wait answers only what was published.
            published = await self.exchange.publish_packed(
                task.namespace, event.topic, packed, event.time_ns, task.source, event.seq
            )
            task.published = event.seq
            if published and self._recovering and event.topic == "/tasks/exit":
                counts.EXITS_RECOVERED.inc()
            if published and (self._recovering or self._keep_live(event.topic)):
                envelope = events_pb2.Envelope(
                    namespace=task.namespace, topic=event.topic, event=packed
                )
                envelope.timestamp.FromNanoseconds(event.time_ns)
                self._recovered.append((task.namespace, task.id, envelope))
        self._apply_state(task, event)

    def _apply_state(self, task: Task, event: protocol.Event) -> None:
        """What one shim event changes of the task's state."""
        if event.topic == "/tasks/exit":
            task._exited(
                str(event.event.get("exec_id") or ""),
                Exit(
                    int(event.event.get("pid", 0)),
                    int(event.event.get("exit_status", 0)),
                    int(event.event.get("exited_at", 0)),
                ),
            )
        elif event.topic == "/tasks/delete":
            task.deleted_in_journal = True
        elif event.topic == "/tasks/create":
            task.pid = int(event.event.get("pid", 0))
            task.io = dict(event.event.get("io") or {})
            task.status = "created"
        elif event.topic in _INIT_STATUS:
            task.status = _INIT_STATUS[event.topic]

    # -- restarts and dead shims ------------------------------------------------------------

    async def load(self) -> None:
        """Take back every task a previous daemon left: live shims, and dead ones' records."""
        started = time.monotonic()
        found = await asyncio.to_thread(self._scan_bundles)
        published = await self.exchange.log.sources() if self.exchange.log is not None else {}
        self._recovering = True
        try:
            await asyncio.gather(*(self._load(*entry, published) for entry in found))
        finally:
            self._recovering = False
            self._recovered_until = time.monotonic() + self._recovered_replay
            self._restarted = bool(found)
        if self._recovered:
            log.info("events_recovered", count=len(self._recovered))
        if found:
            ms = round((time.monotonic() - started) * 1000, 1)
            log.info("tasks_loaded", count=len(self._tasks), ms=ms)

    def _scan_bundles(self) -> builtins.list[tuple[Path, str, str, str, str, _Records]]:
        """Every bundle with its instance, dead record, address, runtime and, for a live
        shim's, its journal (None when unreadable) (one pass, on a thread)."""
        # Plain os calls: with hundreds of bundles, pathlib and the exceptions of files that
        # are not there were half the daemon's time to its first answer after a restart.
        root = os.path.join(self.state, "tasks")

        def entry(directory: str) -> tuple[Path, str, str, str, str, _Records]:
            present = set(os.listdir(directory))
            instance, dead, address, runtime = (
                _read(os.path.join(directory, name)) if name in present else ""
                for name in (INSTANCE, DEAD, "address", RUNTIME)
            )
            records = None
            if instance and not dead and JOURNAL in present:
                records = _live_journal(Path(directory, JOURNAL))
            return Path(directory), instance, dead, address, runtime, records

        found = []
        for namespace in _subdirectories(root):
            found += [entry(bundle) for bundle in _subdirectories(namespace)]
        return found

    async def _load(
        self,
        path: Path,
        source: str,
        dead: str,
        address: str,
        runtime: str,
        records: _Records,
        published: dict[str, int],
    ) -> None:
        namespace, cid = path.parent.name, path.name
        try:
            bundle = Bundle.at(self.state, namespace, cid)
        except errors.InvalidArgument:
            return
        if not source:  # a bundle whose creation never finished
            log.info("bundle_removed", ns=namespace, id=cid, why="incomplete")
            await asyncio.to_thread(bundle.delete)
            return
        task = Task(namespace, cid, bundle, None, source, runtime=Runtime.from_json(runtime))
        # The shim's journal is replayed whole, to rebuild the task's state; what the event
        # log says was published already is not published again.
        task.published = published.get(source, 0)
        if dead:
            self._restore_dead(task, dead)
            task.last_seq = task.published
            self._tasks[(namespace, cid)] = task
            return
        if records is not None:
            # What the shim journaled is on disk: the task is known from it at once, and its
            # shim attached behind it (from the last of these records on).
            for record in records:
                if record.seq == task.last_seq + 1 and record.seq <= task.published:
                    # Published by a previous daemon: only the state, and nobody waits yet.
                    if record.topic in _EVENTS:
                        self._apply_state(task, record)
                    task.last_seq = record.seq
                else:
                    await self._take(task, record)
            if task.pid and not task.deleted_in_journal:
                self._tasks[(namespace, cid)] = task
                task.attaching = asyncio.get_running_loop().create_future()
                attach = asyncio.create_task(
                    self._attach(task, address), name=f"attach {namespace}/{cid}"
                )
                self._attaching.add(attach)
                attach.add_done_callback(self._attaching.discard)
                return
            # Never created, or deleted already: asked below (the replay skips what was taken).
        try:
            task.client = await ShimClient.connect(
                address.removeprefix("unix://"), f"{namespace}/{cid}"
            )
            # The journal's replay rebuilds pid, stdio, exits: no other question is needed.
            last = await self._subscribe(task, after=0)
            await task.seen(last)
            if not task.pid or task.deleted_in_journal:  # never created, or deleted already
                raise errors.NotFound("the shim has no task")
        except errors.CtrdError as e:
            if isinstance(e, errors.NotFound):  # the shim lives but has no task (deleted)
                with contextlib.suppress(errors.CtrdError):
                    await task.client.call("shutdown", {"now": True})  # type: ignore[union-attr]
            log.info("shim_gone", ns=namespace, id=cid, error=str(e))
            self._tasks[(namespace, cid)] = task
            await self._bury(task)
            return
        self._tasks[(namespace, cid)] = task

    async def _attach(self, task: Task, address: str) -> None:
        """Connect to the shim of a task loaded from its journal and follow its events past
        what the journal held; a shim that is gone is buried (its task stopped)."""
        assert task.attaching is not None
        try:
            await self._serving.wait()
            async with self._attach_slots:
                try:
                    task.client = await ShimClient.connect(
                        address.removeprefix("unix://"), f"{task.namespace}/{task.id}"
                    )
                    await self._subscribe(task, after=task.last_seq)
                except errors.CtrdError as e:
                    log.info("shim_gone", ns=task.namespace, id=task.id, error=str(e))
                    if not self._stopping:
                        await self._bury(task)
        except Exception:
            log.exception("attach_failed", ns=task.namespace, id=task.id)
        finally:
            task.attaching.set_result(None)

    def serving(self) -> None:
        """The daemon serves: attach the shims of the tasks `load` found."""
        self._serving.set()

    def _keep_live(self, topic: str) -> bool:
        """Whether a live exit (or OOM) joins the recovered events: shortly after a restart
        that found tasks, when their clients may not have subscribed again yet (dockerd takes
        1-3 s), so that an exit in that gap is not lost either."""
        return (
            self._restarted
            and topic in ("/tasks/exit", "/tasks/oom")
            and time.monotonic() < self._recovered_until
        )

    def recovered_events(self) -> builtins.list[events_pb2.Envelope]:
        """The events the last load recovered, for a new subscriber (none once too old)."""
        if self._recovered and time.monotonic() > self._recovered_until:
            self._recovered.clear()
        return [envelope for _, _, envelope in self._recovered]

    def _restore_dead(self, task: Task, text: str) -> None:
        record = json.loads(text)
        task.dead = True
        task.pid = int(record.get("pid", 0))
        task.io = dict(record.get("io") or {})
        for exec_id, (pid, status, at) in record.get("exits", {}).items():
            task.exits[exec_id] = Exit(pid, status, at)

    async def _recover(self, task: Task) -> None:
        """The shim connection broke: reconnect if the shim lives, else bury the task."""
        try:
            await self._reconnect_or_bury(task)
        except Exception:
            log.exception("recovery_failed", ns=task.namespace, id=task.id)

    async def _reconnect_or_bury(self, task: Task) -> None:
        address = await asyncio.to_thread(_read, task.bundle.path / "address")
        for _ in range(3):
            try:
                client = await ShimClient.connect(address.removeprefix("unix://"), task.id)
                task.client = client
                await self._subscribe(task, after=task.last_seq)
                log.info("shim_reconnected", ns=task.namespace, id=task.id)
                return
            except errors.CtrdError:
                await asyncio.sleep(0.05)
        await self._bury(task)

    async def _bury(self, task: Task) -> None:
        """The shim is dead: publish what its journal holds that was not published, stop
        whatever of the container still runs (its exit is then 137), release the rootfs and
        the runtime's state, and keep the task's last state until it is deleted."""
        if task.client is not None:
            await task.client.close()
            task.client = None
        records = await asyncio.to_thread(_journal, task.bundle.path / JOURNAL)
        if not task.pid and not any(r.topic == "/tasks/create" for r in records):
            # The task was never created (the daemon died during Tasks.Create): nothing ran,
            # nothing exited; no task, and no event, remains.
            await self._remove_bundle(task, "never created")
            return
        for record in records:
            await self._take(task, record)
        if task.deleted_in_journal:
            # Deleted already (the daemon died before it removed the bundle): finish that.
            await self._remove_bundle(task, "deleted")
            return
        if "" not in task.exits and task.pid:
            await self._runc(task, "kill", "--all", task.id, "9")
        now = time.time_ns()
        for exec_id in [e for e in self._known_execs(records) if e not in task.exits]:
            await self._synthesize_exit(task, exec_id, 0, now)
        if "" not in task.exits:
            await self._synthesize_exit(task, "", task.pid, now)
        await self._runc(task, "delete", "--force", task.id)
        task.dead = True
        await asyncio.to_thread(self._write_dead, task)
        await asyncio.to_thread(task.bundle.release)
        await self._remove_socket(task)
        log.info("shim_buried", ns=task.namespace, id=task.id, status=task.exits[""].status)

    async def _remove_bundle(self, task: Task, why: str) -> None:
        """A task that is no task (never created, or deleted): runtime state, socket,
        bundle and event-log source go, and the daemon forgets it."""
        await self._runc(task, "delete", "--force", task.id)
        if self._tasks.get((task.namespace, task.id)) is task:
            del self._tasks[(task.namespace, task.id)]
        await self._remove_socket(task)
        await asyncio.to_thread(task.bundle.delete)
        if self.exchange.log is not None:
            await self.exchange.log.forget(task.source)
        log.info("bundle_removed", ns=task.namespace, id=task.id, why=why)

    async def _remove_socket(self, task: Task) -> None:
        """A shim killed outright could not remove its socket."""
        address = await asyncio.to_thread(_read, task.bundle.path / "address")
        if address:
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(os.unlink, address.removeprefix("unix://"))

    @staticmethod
    def _known_execs(records: builtins.list[protocol.Event]) -> builtins.list[str]:
        return [
            str(r.event.get("exec_id"))
            for r in records
            if r.topic == "/tasks/exec-started" and r.event.get("exec_id")
        ]

    async def _synthesize_exit(self, task: Task, exec_id: str, pid: int, at: int) -> None:
        """An exit the shim could not journal: its process was killed because the shim died.

        Numbered past the last event published too: after a machine crash the journal can
        end before events the event log has (its unsynced tail, `shim.journal`), and an exit
        under a number already published would not be published."""
        event = {
            "container_id": task.id, "id": exec_id or task.id, "exec_id": exec_id,
            "pid": pid, "exit_status": 137, "exited_at": at,
        }  # fmt: skip
        seq = max(task.last_seq, task.published) + 1
        await self._take(task, protocol.Event(seq, "/tasks/exit", event, at))

    def _write_dead(self, task: Task) -> None:
        record = {
            "pid": task.pid,
            "io": task.io,
            "exits": {k: [e.pid, e.status, e.at] for k, e in task.exits.items()},
        }
        tmp = task.bundle.path / (DEAD + ".tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, task.bundle.path / DEAD)

    async def _runc(self, task: Task, *args: str) -> None:
        """Run the task's runtime on its state root (the daemon's default for old bundles)."""
        runtime = task.runtime or Runtime(self.runtime, str(self.state / "runc" / task.namespace))
        try:
            proc = await asyncio.create_subprocess_exec(
                runtime.binary, "--root", runtime.root, *args,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            await proc.wait()
        except OSError as e:
            log.warning("runtime_failed", args=args, error=str(e))

    # -- deleting ---------------------------------------------------------------------------

    async def delete(self, namespace: str, cid: str) -> dict[str, Any]:
        """Delete a stopped (or never started) task; its exit.

        A deletion runs to its end even when its caller gives up (shielded), so a client that
        times out leaves no half-deleted task; concurrent deletes share one deletion.
        """
        task = self.get(namespace, cid)
        if task._deletion is None:
            deletion = asyncio.ensure_future(self._delete(task))
            task._deletion = deletion

            def failed(done: asyncio.Future[dict[str, Any]]) -> None:
                if done.cancelled() or done.exception() is not None:
                    task._deletion = None  # it may be tried again

            deletion.add_done_callback(failed)
        return await asyncio.shield(task._deletion)

    async def _delete(self, task: Task) -> dict[str, Any]:
        namespace, cid = task.namespace, task.id
        if task.dead:
            result = task._dead_call("delete", {})
            await self._take(
                task,
                protocol.Event(
                    task.last_seq + 1, "/tasks/delete",
                    {"container_id": cid, **result}, time.time_ns(),
                ),
            )  # fmt: skip
        else:
            task.deleting = True  # the shim exits after this: that is no death to recover
            try:
                result = await task.call_seen("delete")
            except BaseException:
                task.deleting = False
                raise
            await self._shutdown(task)
            await self._close(task)
        self._tasks.pop((namespace, cid), None)
        self._recovered = [r for r in self._recovered if r[:2] != (namespace, cid)]
        await asyncio.to_thread(task.bundle.delete)
        if self.exchange.log is not None:
            await self.exchange.log.forget(task.source)
        return dict(result)

    async def _shutdown(self, task: Task, now: bool = False) -> None:
        """Ask the shim to exit, and give it a moment to (it removes its socket first)."""
        if task.client is None:
            return
        try:
            answer = await task.client.call("shutdown", {"now": now})
        except errors.CtrdError:
            return
        if answer.get("exiting"):
            try:
                async with asyncio.timeout(SHUTDOWN_TIMEOUT):
                    await task.client.ended()
            except TimeoutError:
                log.warning("shim_slow_to_exit", ns=task.namespace, id=task.id)

    async def _close(self, task: Task) -> None:
        if task.client is not None:
            await task.client.close()
        if task._consumer is not None:
            task._consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task._consumer
