"""The daemon's health checks: one checker per running task whose container asks for checks.

The monitor follows the task events on the exchange (nothing in the task code calls it):

- `/tasks/start` of a container with a check (its `ctrd.io/healthcheck` label, `config`):
  the container is `starting` again (failures cleared, the log kept, the start time noted)
  and a checker runs its probes, one every `interval` after the previous one ended;
- `/tasks/exit` or `/tasks/delete` when the task no longer runs (an exec's exit changes
  nothing): its checker stops (a probe in flight is killed and deleted); the health stays as
  it was, for `inspect`;
- `/containers/delete`: the container's health is deleted.

A checker skips its probe while the task is paused and stops when the task no longer runs; a
result that arrives after the task stopped is dropped, as dockerd drops it. Every result is
written to the store (what `ctrd.services.health.v1` serves) before the next probe, and a
change of status is published as a `/containers/health` event (`HealthStatus`, with dockerd's
action words, `health_status: healthy`).

At start (the daemon builds the monitor just after it serves, with the events it subscribed
to before: `supervisor.health.subscribe`), checks go on for every running task whose
container asks for them, from the health the store kept; probes a previous daemon left behind
are deleted first. The monitor's work is its own asyncio tasks, cancelled and awaited by
`stop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import structlog

from supervisor import errors
from supervisor.api.ctrd.services.health.v1 import health_pb2
from supervisor.events import Exchange, unpack
from supervisor.health import config as health_config
from supervisor.health import probe, subscribe
from supervisor.health.config import HealthConfig
from supervisor.health.state import Health, Result, record, started, transition
from supervisor.health.store import HealthStore, Key
from supervisor.metadata.containers import ContainerStore
from supervisor.metadata.db import Database
from supervisor.runtime.manager import Task, TaskManager

log = structlog.get_logger("ctrd.health")

TOPIC = "/containers/health"
ACTION = "health_status"  # dockerd's event action: `health_status: healthy`


class HealthMonitor:
    def __init__(self, db: Database, exchange: Exchange, tasks: TaskManager, state: Path) -> None:
        self._db = db
        self.store = HealthStore(db)
        self._exchange = exchange
        self._tasks = tasks
        self._fifos = state / "health"
        self._checkers: dict[Key, asyncio.Task[None]] = {}
        self._runner: asyncio.Task[None] | None = None

    async def start(self, subscription: Any = None) -> None:
        """Follow the task events (from `subscription` when one was made earlier, else from
        now on), and go on with the checks of running tasks."""
        if subscription is None:
            subscription = subscribe(self._exchange)
        await asyncio.to_thread(_fresh_directory, self._fifos)
        self._runner = asyncio.create_task(self._run(subscription), name="health")

    async def stop(self) -> None:
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.wait({self._runner})
        await asyncio.gather(*(self._stop(key) for key in list(self._checkers)))

    def checking(self, namespace: str, cid: str) -> bool:
        """Whether a checker runs for the container (for tests and introspection)."""
        return (namespace, cid) in self._checkers

    async def _run(self, subscription: Any) -> None:
        try:
            try:
                await self._resume()
            except Exception:
                log.exception("health_resume_failed")
            while True:
                item = await subscription.queue.get()
                if item is None:  # dropped for being too slow: catch up from the tasks
                    self._exchange.unsubscribe(subscription)
                    subscription = self._exchange.subscription(subscription.selected)
                    await self._resume()
                    continue
                try:
                    await self._handle(item.envelope)
                except Exception:
                    log.exception("health_event_failed", topic=item.envelope.topic)
        finally:
            self._exchange.unsubscribe(subscription)

    async def _handle(self, envelope: Any) -> None:
        event = unpack(envelope.event)
        cid = getattr(event, "container_id", "") or getattr(event, "id", "")
        if event is None or not cid:
            return
        key = (envelope.namespace, str(cid))
        # Clients may publish any topic (Events.Publish): each event is checked against the
        # tasks and containers it speaks of before it is acted on.
        running = self._tasks.running(*key)
        if envelope.topic == "/tasks/start" and running:
            at = envelope.timestamp.seconds * 1_000_000_000 + envelope.timestamp.nanos
            await self._started(key, at)
        elif envelope.topic in ("/tasks/exit", "/tasks/delete") and not running:
            await self._stop(key)
        elif envelope.topic == "/containers/delete" and not await self._container_exists(key):
            await self._stop(key)
            await self.store.delete(key)

    async def _container_exists(self, key: Key) -> bool:
        try:
            await ContainerStore(self._db, key[0]).get(key[1])
        except errors.NotFound:
            return False
        return True

    async def _resume(self) -> None:
        """Checks for every running task whose container asks for them (after a restart)."""
        for key, labels in (await self.store.checked_containers()).items():
            if key in self._checkers or not self._tasks.running(*key):
                continue
            config = _config(key, labels)
            if config is None:
                continue
            if await self.store.get(key) is None:  # started before the daemon had checks
                await self.store.put(key, started(None, time.time_ns()))
            self._spawn(key, config, resumed=True)

    async def _started(self, key: Key, at: int) -> None:
        await self._stop(key)
        try:
            container = await ContainerStore(self._db, key[0]).get(key[1])
        except errors.NotFound:
            return
        config = _config(key, container.labels)
        if config is None:
            return
        await self.store.put(key, started(await self.store.get(key), at))
        self._spawn(key, config, resumed=False)

    def _spawn(self, key: Key, config: HealthConfig, resumed: bool) -> None:
        checker = asyncio.create_task(self._check(key, config, resumed), name=f"health {key}")
        self._checkers[key] = checker

        def done(finished: asyncio.Task[None]) -> None:
            if self._checkers.get(key) is finished:
                del self._checkers[key]

        checker.add_done_callback(done)

    async def _stop(self, key: Key) -> None:
        """Cancel the container's checker and wait for its end (a probe in flight deleted);
        `asyncio.wait`, not `await`: the caller's own cancellation must not be swallowed."""
        checker = self._checkers.pop(key, None)
        if checker is not None:
            checker.cancel()
            await asyncio.wait({checker})

    async def _check(self, key: Key, config: HealthConfig, resumed: bool) -> None:
        try:
            task = self._tasks.get(*key)
            process = await asyncio.to_thread(_process_of, task)
            if resumed:
                await _forget_old_probes(task)
            while True:
                await asyncio.sleep(config.interval / 1e9)
                if not self._runs(key, task):
                    return
                if task.status == "paused":
                    continue
                exec_id = probe.EXEC_PREFIX + os.urandom(8).hex()
                result = await probe.run(task, config, process, exec_id, self._fifos)
                if not self._runs(key, task):
                    return  # stopped meanwhile: dockerd drops such a result too
                await self._record(key, config, result)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("health_checker_failed", ns=key[0], id=key[1])

    def _runs(self, key: Key, task: Task) -> bool:
        try:
            return self._tasks.get(*key) is task and self._tasks.running(*key)
        except errors.NotFound:
            return False

    async def _record(self, key: Key, config: HealthConfig, result: Result) -> None:
        before = await self.store.get(key) or Health()
        after = record(before, result, config)
        await self.store.put(key, after)
        status = transition(before, after)
        if status is not None:
            log.info("health_status", ns=key[0], id=key[1], status=status)
            await self._exchange.publish(
                key[0],
                TOPIC,
                health_pb2.HealthStatus(
                    container_id=key[1], status=status, action=f"{ACTION}: {status}"
                ),
            )


def _config(key: Key, labels: dict[str, str] | Any) -> HealthConfig | None:
    try:
        return health_config.from_labels(labels)
    except health_config.BadHealthcheck as e:
        log.warning("healthcheck_ignored", ns=key[0], id=key[1], error=str(e))
        return None


def _process_of(task: Task) -> dict[str, Any]:
    """The container's process settings, from the spec its task was made with (blocking)."""
    spec = json.loads((task.bundle.path / "config.json").read_bytes())
    process = spec.get("process") if isinstance(spec, dict) else None
    if not isinstance(process, dict):
        raise errors.FailedPrecondition(f"task {task.id} has no process in its spec")
    return process


async def _forget_old_probes(task: Task) -> None:
    """Delete the probes a previous daemon started and could not delete (it was killed)."""
    for exec_id in [e for e in task.exits if e.startswith(probe.EXEC_PREFIX)]:
        with contextlib.suppress(errors.CtrdError):
            await task.call("delete", {"exec_id": exec_id})
        task.forget_exec(exec_id)


def _fresh_directory(path: Path) -> None:
    """The FIFOs' directory, emptied of what a killed daemon left."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
