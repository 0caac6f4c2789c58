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
Wait that returns has had its `/tasks/exit` published.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from google.protobuf import message as pb_message

from shim import protocol, zygote
from snapshotter.protocol import Mount
from supervisor import errors
from supervisor.api.containerd.events import task_pb2 as events_pb
from supervisor.api.containerd.types import mount_pb2
from supervisor.events import Exchange, pack
from supervisor.runtime.bundle import Bundle
from supervisor.runtime.shimclient import ShimClient

log = structlog.get_logger("ctrd.tasks")

# Where the `shim` package is imported from: the zygote must run the daemon's copy of it.
_CODE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(zygote.__file__)))
SEEN_TIMEOUT = 10.0  # how long a call waits for its event to come through the stream
SHUTDOWN_TIMEOUT = 2.0  # how long a delete waits for the shim to exit

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
    namespace: str
    id: str
    bundle: Bundle
    client: ShimClient
    pid: int = 0
    shim_pid: int = 0
    last_seq: int = 0
    exits: dict[str, Exit] = field(default_factory=dict)
    _exit_waiters: dict[str, list[asyncio.Future[Exit]]] = field(default_factory=dict)
    _progress: asyncio.Condition = field(default_factory=asyncio.Condition)
    _consumer: asyncio.Task[None] | None = None
    gone: str | None = None  # why the shim connection ended, once it has

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return await self.client.call(method, params)

    async def call_seen(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """Call, then wait until the event the call produced has been published."""
        result = await self.call(method, params)
        if isinstance(result, dict) and result.get("seq"):
            await self.seen(int(result["seq"]))
        return result

    async def seen(self, seq: int) -> None:
        async def reached() -> None:
            async with self._progress:
                await self._progress.wait_for(lambda: self.last_seq >= seq or self.gone)

        try:
            await asyncio.wait_for(reached(), SEEN_TIMEOUT)
        except TimeoutError:
            log.warning("event_not_seen", ns=self.namespace, id=self.id, seq=seq)

    async def wait(self, exec_id: str) -> Exit:
        """The exit of a process (init: exec_id ""), once its `/tasks/exit` is published."""
        if exec_id in self.exits:
            return self.exits[exec_id]
        if self.gone is not None:
            raise errors.Unavailable(f"task {self.id}: shim {self.gone}")
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

    def _lost(self, why: str) -> None:
        self.gone = why
        for waiters in self._exit_waiters.values():
            for future in waiters:
                if not future.done():
                    future.set_exception(errors.Unavailable(f"task {self.id}: shim {why}"))
        self._exit_waiters.clear()

    def forget_exec(self, exec_id: str) -> None:
        self.exits.pop(exec_id, None)


def socket_path(state: Path, address: str, namespace: str, cid: str) -> str:
    """Where a task's shim listens: hashed, because sun_path holds 107 bytes."""
    digest = hashlib.sha256(f"{address}/{namespace}/{cid}".encode()).hexdigest()
    return str(state / "s" / digest[:32])


class TaskManager:
    def __init__(
        self, state: Path, address: str, exchange: Exchange, runtime: str = "runc"
    ) -> None:
        self.state = state
        self.address = address
        self.exchange = exchange
        self.runtime = runtime
        self._tasks: dict[tuple[str, str], Task] = {}
        self._creating: set[tuple[str, str]] = set()
        self._zygote_lock = asyncio.Lock()

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
        """Make sure a zygote running this code serves the state dir."""
        async with self._zygote_lock:
            await self._ensure_zygote()

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
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "shim", "zygote", "--state", str(self.state),
            env=env, cwd="/", stdin=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        if await proc.wait() != 0:
            raise errors.Internal(f"the shim zygote did not start (exit {proc.returncode})")

    async def stop(self) -> None:
        """Let go of every shim (they keep running) and stop the zygote."""
        for task in list(self._tasks.values()):
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
            raise errors.NotFound(f'no running task found: task "{cid}"')
        return task

    def list(self, namespace: str) -> list[Task]:
        return [t for (ns, _), t in sorted(self._tasks.items()) if ns == namespace]

    def exists(self, namespace: str, cid: str) -> bool:
        return (namespace, cid) in self._tasks or (namespace, cid) in self._creating

    async def create(
        self,
        namespace: str,
        cid: str,
        spec: bytes,
        mounts: Sequence[Mount],
        stdio: dict[str, Any],
        runtime: str = "",
    ) -> Task:
        key = (namespace, cid)
        if self.exists(namespace, cid):
            raise errors.AlreadyExists(f'task "{cid}" already exists')
        self._creating.add(key)
        try:
            return await self._create(namespace, cid, spec, mounts, stdio, runtime)
        finally:
            self._creating.discard(key)

    async def _create(
        self,
        namespace: str,
        cid: str,
        spec: bytes,
        mounts: Sequence[Mount],
        stdio: dict[str, Any],
        runtime: str,
    ) -> Task:
        bundle = Bundle.at(self.state, namespace, cid)
        await asyncio.to_thread(bundle.create, spec, mounts)
        task: Task | None = None
        try:
            runtime_root = self.state / "runc" / namespace
            runtime_root.mkdir(mode=0o711, parents=True, exist_ok=True)
            config = {
                "namespace": namespace,
                "id": cid,
                "bundle": str(bundle.path),
                "socket": socket_path(self.state, self.address, namespace, cid),
                "address": self.address,
                "runtime": runtime or self.runtime,
                "runtime_root": str(runtime_root),
            }
            shim_pid = await self._spawn(config)
            client = await ShimClient.connect(config["socket"], f"{namespace}/{cid}")
            task = Task(namespace, cid, bundle, client, shim_pid=shim_pid)
            await self._subscribe(task, after=0)
            params = dict(stdio)
            params["rootfs"] = [
                {"type": m.type, "source": m.source, "target": "", "options": list(m.options)}
                for m in mounts
            ]
            result = await task.call_seen("create", params)
            task.pid = int(result["pid"])
        except BaseException:
            if task is not None:
                await self._shutdown(task, now=True)
                await self._close(task)
            await asyncio.to_thread(bundle.delete)
            raise
        self._tasks[(namespace, cid)] = task
        return task

    async def _subscribe(self, task: Task, after: int) -> None:
        await task.call("events", {"after": after})
        task._consumer = asyncio.create_task(
            self._consume(task), name=f"shim-events {task.namespace}/{task.id}"
        )

    async def _consume(self, task: Task) -> None:
        try:
            async for event in task.client.events():
                if event.seq <= task.last_seq:
                    continue  # a replay overlapping what was already published
                if event.seq > task.last_seq + 1:
                    log.warning(
                        "shim_events_skipped", ns=task.namespace, id=task.id,
                        expected=task.last_seq + 1, got=event.seq,
                    )  # fmt: skip
                await self._apply(task, event)
                async with task._progress:
                    task.last_seq = event.seq
                    task._progress.notify_all()
        finally:
            async with task._progress:
                task._lost(task.client.closed_reason or "connection closed")
                task._progress.notify_all()

    async def _apply(self, task: Task, event: protocol.Event) -> None:
        if event.topic not in _EVENTS:
            log.warning("shim_event_unknown", ns=task.namespace, id=task.id, topic=event.topic)
            return
        msg = event_message(event.topic, event.event)
        if event.topic == "/tasks/exit":
            exec_id = str(event.event.get("exec_id") or "")
            task._exited(
                exec_id,
                Exit(
                    int(event.event.get("pid", 0)),
                    int(event.event.get("exit_status", 0)),
                    int(event.event.get("exited_at", 0)),
                ),
            )
        await self.exchange.publish_packed(
            task.namespace, event.topic, pack(msg), timestamp_ns=event.time_ns
        )

    async def delete(self, namespace: str, cid: str) -> dict[str, Any]:
        """Delete a stopped (or never started) task; its exit."""
        task = self.get(namespace, cid)
        result = await task.call_seen("delete")
        await self._shutdown(task)
        self._tasks.pop((namespace, cid), None)
        await self._close(task)
        await asyncio.to_thread(task.bundle.delete)
        return dict(result)

    async def _shutdown(self, task: Task, now: bool = False) -> None:
        """Ask the shim to exit, and give it a moment to (it removes its socket first)."""
        try:
            answer = await task.call("shutdown", {"now": now})
        except errors.CtrdError:
            return
        if answer.get("exiting"):
            try:
                async with asyncio.timeout(SHUTDOWN_TIMEOUT):
                    await task.client.ended()
            except TimeoutError:
                log.warning("shim_slow_to_exit", ns=task.namespace, id=task.id)

    async def _close(self, task: Task) -> None:
        await task.client.close()
        if task._consumer is not None:
            task._consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task._consumer


def now_ns() -> int:
    return time.time_ns()
