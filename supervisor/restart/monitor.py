"""The restart monitor: acts on containers' task exits by their restart policies (the rules
are the package's doc; the decisions `policy`'s; the table `store`'s).

It follows `/tasks/start`, `/tasks/exit`, `/containers/update` and `/containers/delete` on the
exchange, one event after the other:
- a start it did not cause is a user's: the count goes back to 0;
- an init's exit, when the task agrees that its init exited (an exit a client publishes
  restarts nothing), is decided at once; a restart runs as a task of its own: the old task
  deleted, the new one created, the back-off waited out, the start;
- an update that stops the container (the manually-stopped label) or sets its policy to `no`
  calls a pending restart off at once, and the task made for it is deleted unless it was
  started; the labels are read again before the start too (an update's event may lag);
- a deleted container's row goes.
`restarting` (what `Restarts/List` says) covers an exit being decided as well as a pending
restart: `ctrctl rm -f` waits until it is false, so it never meets a task made under it.
`boot` is what the daemon's start does for the containers whose task is stopped or gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable, Mapping
from dataclasses import replace

import structlog
from google.protobuf.message import DecodeError

from supervisor import errors, filters
from supervisor.api.containerd.events import container_pb2 as container_events
from supervisor.api.containerd.events import task_pb2 as events_pb
from supervisor.events import Exchange
from supervisor.metadata.containers import Container, ContainerStore
from supervisor.restart import policy
from supervisor.restart.launch import Launcher
from supervisor.restart.store import Record, RestartStore
from supervisor.runtime.manager import Task, TaskManager

log = structlog.get_logger("ctrd.restart")

Key = tuple[str, str]  # namespace, container id


class _Pending:
    """A restart under way, and how it is called off: `leave` the task it made (someone
    killed it, or started it), or `delete` it (the user stopped the container, or its policy
    is `no` now) if it did not start it yet."""

    def __init__(self) -> None:
        self.job: asyncio.Task[None] | None = None
        self.called_off = asyncio.Event()
        self.then = ""  # "leave" or "delete"

    def call_off(self, then: str) -> None:
        if not self.then:
            self.then = then
        self.called_off.set()


UNKNOWN_EXIT = 255  # docker's exit code for a container found dead with no exit known
TOPICS = (
    'topic=="/tasks/exit"',
    'topic=="/tasks/start"',
    'topic=="/containers/update"',
    'topic=="/containers/delete"',
)


def _stopped(task: Task) -> bool:
    return "" in task.exits or task.dead


class RestartMonitor:
    def __init__(
        self,
        exchange: Exchange,
        tasks: TaskManager,
        containers: Callable[[str], ContainerStore],
        store: RestartStore,
        launcher: Launcher,
    ) -> None:
        self._exchange = exchange
        self._tasks = tasks
        self._containers = containers
        self._store = store
        self._launcher = launcher
        self._delays: dict[Key, float] = {}  # the last back-off per container (moby's timeout)
        self._pending: dict[Key, _Pending] = {}  # restarts under way
        self._own_starts: set[Key] = set()  # starts this monitor makes: not a user's
        self._deciding: set[Key] = set()  # exits being decided: a restart may follow
        self._follower: asyncio.Task[None] | None = None
        self._booting: asyncio.Task[None] | None = None
        self._stopping = False

    # -- life -------------------------------------------------------------------------------

    def follow(self) -> None:
        """Follow task events from now on (after the tasks were loaded: what the load
        recovered is `boot`'s)."""
        subscription = self._exchange.subscription(filters.parse_all(TOPICS))

        async def run() -> None:
            try:
                while True:
                    item = await subscription.queue.get()
                    if item is None:  # dropped for being too slow: follow again
                        log.warning("restart_events_dropped")
                        self._exchange.unsubscribe(subscription)
                        self.follow()
                        return
                    await self._event(item.envelope.namespace, item.envelope.topic,
                                      item.envelope.event.value)  # fmt: skip
            finally:
                self._exchange.unsubscribe(subscription)

        self._follower = asyncio.create_task(run(), name="restart-monitor")

    def boot(self) -> None:
        """In the background: what a daemon's start does (see the package's doc)."""
        self._booting = asyncio.create_task(self._boot(), name="restart-boot")

    async def stop(self) -> None:
        """Stop following and call off the restarts under way (the daemon stops: docker does
        not restart what exits while it shuts down; a task made and not started yet is
        started again at the next start, by `boot`)."""
        self._stopping = True
        jobs = [self._follower, self._booting, *(p.job for p in self._pending.values())]
        for job in jobs:
            if job is not None:
                job.cancel()
        for job in jobs:
            if job is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await job

    # -- events -----------------------------------------------------------------------------

    async def _event(self, ns: str, topic: str, payload: bytes) -> None:
        try:
            if topic == "/tasks/start":
                start = events_pb.TaskStart.FromString(payload)
                await self._started(ns, start.container_id)
            elif topic == "/containers/update":
                updated = container_events.ContainerUpdate.FromString(payload)
                self._relabelled(ns, updated.id, updated.labels)
            elif topic == "/containers/delete":
                deleted = container_events.ContainerDelete.FromString(payload)
                self._delays.pop((ns, deleted.id), None)
                await self._store.delete(ns, deleted.id)
            else:
                exit_ = events_pb.TaskExit.FromString(payload)
                if exit_.id == exit_.container_id and self._init_exited(ns, exit_.container_id):
                    key = (ns, exit_.container_id)
                    self._deciding.add(key)
                    try:
                        await self._exited(
                            ns,
                            exit_.container_id,
                            exit_.exit_status,
                            exit_.exited_at.ToNanoseconds(),
                        )
                    finally:
                        self._deciding.discard(key)
        except DecodeError as e:
            # a client may publish anything under these topics (Events.Publish): not ours
            log.warning("restart_event_undecodable", ns=ns, topic=topic, error=str(e))
        except Exception:
            log.exception("restart_event_failed", ns=ns, topic=topic)

    def _init_exited(self, ns: str, cid: str) -> bool:
        """Whether the container's task says its init exited: an exit event a client
        published (Events.Publish) restarts nothing. The task applies its shim's exit before
        this monitor sees the event."""
        try:
            task = self._tasks.get(ns, cid)
        except errors.NotFound:
            return False  # deleted meanwhile: whoever deleted it had the last word
        return _stopped(task)

    async def _container(self, ns: str, cid: str) -> Container | None:
        try:
            return await self._containers(ns).get(cid)
        except errors.NotFound:
            return None

    def _stdio(self, ns: str, cid: str, record: Record) -> Record:
        """The record with the stdio the container's task has now (if it has one)."""
        try:
            io = self._tasks.get(ns, cid).io
        except errors.NotFound:
            return record
        return replace(
            record,
            log=bool(io.get("stdout") or io.get("stderr")),
            terminal=bool(io.get("terminal")),
        )

    async def _started(self, ns: str, cid: str) -> None:
        key = (ns, cid)
        if key in self._own_starts:
            self._own_starts.discard(key)
            return
        container = await self._container(ns, cid)
        if container is None or policy.of(container.labels).none:
            return
        # A user's start: docker's containerStart(reset=true) makes a new restart manager.
        self._delays.pop(key, None)
        if (pending := self._pending.get(key)) is not None:
            pending.call_off("leave")  # the task it made is the user's now
        record = await self._store.get(ns, cid) or Record()
        record = replace(record, count=0, started_at=time.time_ns(), restart_at=0)
        await self._store.put(ns, cid, self._stdio(ns, cid, record))

    async def _exited(self, ns: str, cid: str, status: int, at: int) -> None:
        key = (ns, cid)
        if (pending := self._pending.get(key)) is not None:
            pending.call_off("leave")  # the task made for it was killed before it started
        container, record = await asyncio.gather(self._container(ns, cid), self._store.get(ns, cid))
        if container is None:
            return
        chosen = policy.of(container.labels)
        if chosen.none and record is None:
            return
        record = record or Record()
        stopped_by_user = policy.manually_stopped(container.labels)
        ran_for = (at - record.started_at) / 1e9 if record.started_at else policy.GOOD_RUN
        delay = policy.next_delay(self._delays.get(key, 0.0), ran_for)
        self._delays[key] = delay
        restart = (
            not self._stopping
            and not stopped_by_user
            and policy.should_restart(chosen, status, stopped_by_user, record.count)
        )
        record = replace(record, exit_status=status, exited_at=at, restart_at=0)
        if not restart:
            await self._store.put(ns, cid, record)
            return
        restart_at = at + int(delay * 1e9)
        record = replace(record, count=record.count + 1, restart_at=restart_at)
        log.info(
            "restart_scheduled", ns=ns, id=cid, count=record.count, exit_status=status,
            exited_at=at, ms=round(delay * 1000),
        )  # fmt: skip
        self._schedule(ns, container, record)

    def _relabelled(self, ns: str, cid: str, labels: Mapping[str, str]) -> None:
        """A pending restart is called off at once when the user stops the container (a
        client waits for that: `restarting` turns false) or its policy becomes `no`."""
        pending = self._pending.get((ns, cid))
        if pending is not None and (policy.manually_stopped(labels) or policy.of(labels).none):
            pending.call_off("delete")

    def _schedule(self, ns: str, container: Container, record: Record) -> None:
        key = (ns, container.id)
        pending = _Pending()
        pending.job = asyncio.create_task(
            self._restart(ns, container, record, pending), name=f"restart {key}"
        )
        self._pending[key] = pending

        def done(_: asyncio.Task[None]) -> None:
            if self._pending.get(key) is pending:
                del self._pending[key]

        pending.job.add_done_callback(done)

    # -- restarting -------------------------------------------------------------------------

    async def _restart(
        self, ns: str, container: Container, record: Record, pending: _Pending
    ) -> None:
        """Delete the old task, make the new one, wait until `record.restart_at`, start it,
        unless the restart is called off meanwhile (then the task made is deleted, or left)."""
        cid = container.id
        record = self._stdio(ns, cid, record)
        task: Task | None = None
        steps = [time.time_ns()]  # begun, old task deleted, new one made, waited, started
        try:
            await asyncio.gather(self._store.put(ns, cid, record), self._delete(ns, cid))
            steps.append(time.time_ns())
            if not pending.called_off.is_set():
                task = await self._launcher.create(ns, container, record.log, record.terminal)
            steps.append(time.time_ns())
            wait = (record.restart_at - time.time_ns()) / 1e9
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(pending.called_off.wait(), max(wait, 0))
            steps.append(time.time_ns())
            if not pending.called_off.is_set():
                current = await self._container(ns, cid)  # an update's event may lag behind
                labels = current.labels if current is not None else {policy.STOPPED_LABEL: "x"}
                self._relabelled(ns, cid, labels)
            if pending.called_off.is_set():
                log.info("restart_called_off", ns=ns, id=cid)
                if pending.then == "delete" and task is not None and task.status == "created":
                    await self._delete(ns, cid)
                await self._not_pending(ns, cid, record)
                return
            assert task is not None
            self._own_starts.add((ns, cid))
            try:
                await task.call_seen("start", {"exec_id": ""})
            except BaseException:
                self._own_starts.discard((ns, cid))
                raise
            started = time.time_ns()
            steps.append(started)
            log.debug(
                "restart_steps", ns=ns, id=cid,
                ms=[round((b - a) / 1e6, 1) for a, b in itertools.pairwise(steps)],
            )  # fmt: skip
            await self._store.put(ns, cid, replace(record, started_at=started, restart_at=0))
            log.info(
                "container_restarted", ns=ns, id=cid, count=record.count, pid=task.pid,
                started_at=started,
            )  # fmt: skip
            await self._stop_if_asked(ns, task)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.warning("restart_failed", ns=ns, id=cid, error=str(e))
            with contextlib.suppress(Exception):
                await self._not_pending(ns, cid, record)

    async def _not_pending(self, ns: str, cid: str, record: Record) -> None:
        """No restart pending any more; the rest of the row as others may have written it
        meanwhile (a user's start, the exit of the task this restart made)."""
        current = await self._store.get(ns, cid) or record
        await self._store.put(ns, cid, replace(current, restart_at=0))

    async def _stop_if_asked(self, ns: str, task: Task) -> None:
        """A user's stop that came while the task was being started found no running task
        to signal (ctrctl reads the task's state after it writes the label): it is done."""
        current = await self._container(ns, task.id)
        if current is not None and policy.manually_stopped(current.labels):
            with contextlib.suppress(errors.CtrdError):
                await task.call("kill", {"exec_id": "", "signal": 9, "all": False})

    async def _delete(self, ns: str, cid: str) -> None:
        """The container's task, if it has one (deleted by someone else: fine)."""
        if self._tasks.exists(ns, cid):
            with contextlib.suppress(errors.NotFound):
                await self._launcher.delete(ns, cid)

    # -- the daemon's start -----------------------------------------------------------------

    async def _boot(self) -> None:
        try:
            if not await self._store.namespaces():
                return  # no container was ever started with a policy: no write at each start
            await self._store.keep_only()
            for ns in await self._store.namespaces():
                containers = await self._containers(ns).list()
                records = await self._store.list(ns)
                for container in containers:
                    record = records.get(container.id)
                    if record is not None and record.started_at:  # docker: started before
                        await self._boot_one(ns, container, record)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("restart_boot_failed")

    async def _boot_one(self, ns: str, container: Container, record: Record) -> None:
        chosen = policy.of(container.labels)
        if chosen.none:
            return
        cid = container.id
        status = record.exit_status if record.exited_at else UNKNOWN_EXIT
        exited_at = record.exited_at
        if self._tasks.exists(ns, cid):
            task = self._tasks.get(ns, cid)
            ours = task.status == "created" and record.restart_at  # a restart cut short
            if not _stopped(task) and not ours:
                return  # alive: its exit is acted on when it comes
            exit_ = task.exits.get("")
            if exit_ is not None:
                status, exited_at = exit_.status, exit_.at
        stopped_by_user = policy.manually_stopped(container.labels)
        if not policy.should_restart(chosen, status, stopped_by_user, record.count):
            await self._store.put(
                ns, cid, replace(record, exit_status=status, exited_at=exited_at, restart_at=0)
            )
            return
        if stopped_by_user:  # docker's start at boot: no longer stopped by the user
            await self._containers(ns).update(
                replace(container, labels={policy.STOPPED_LABEL: ""}),
                [f"labels.{policy.STOPPED_LABEL}"],
            )
            container = await self._containers(ns).get(cid)
        log.info("restart_at_boot", ns=ns, id=cid, policy=str(chosen), exit_status=status)
        record = replace(
            record, count=0, exit_status=status, exited_at=exited_at, restart_at=time.time_ns()
        )
        self._schedule(ns, container, record)

    # -- what the service shows -------------------------------------------------------------

    def restarting(self, ns: str, cid: str) -> bool:
        """Whether a restart is pending, or may be (an exit being decided): a client that
        stopped the container waits for that to end (`ctrctl rm -f`)."""
        return (ns, cid) in self._pending or (ns, cid) in self._deciding
