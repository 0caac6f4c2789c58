"""How the daemon makes a container's task itself: as Tasks.Create and Delete do
(`TasksService.create_task`, `delete_task`: networks and logs alike), the rootfs from the
container's snapshot (what a client would ask Snapshots.Mounts for)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from snapshotter.protocol import Mount
from supervisor.metadata.containers import Container
from supervisor.runtime.manager import Task

if TYPE_CHECKING:
    from supervisor.services.tasks import TasksService

LOG_URI = "ctrd-log://"  # the container's log under the root (`services.logs`)
DEFAULT_SNAPSHOTTER = "overlayfs"

# (namespace, snapshotter, key) -> the snapshot's mounts
Mounts = Callable[[str, str, str], Awaitable[list[Mount]]]


class Launcher(Protocol):
    async def create(self, ns: str, container: Container, log: bool, terminal: bool) -> Task: ...

    async def delete(self, ns: str, cid: str) -> None: ...


def stdio(log: bool, terminal: bool) -> dict[str, Any]:
    """A restarted task's stdio: its log (no stdin: nobody is attached), or none at all."""
    out = LOG_URI if log else ""
    return {"stdin": "", "stdout": out, "stderr": out, "terminal": terminal}


class TaskLauncher:
    def __init__(self, tasks: TasksService, mounts: Mounts) -> None:
        self._tasks = tasks
        self._mounts = mounts

    async def create(self, ns: str, container: Container, log: bool, terminal: bool) -> Task:
        mounts: list[Mount] = []
        if container.snapshot_key:
            snapshotter = container.snapshotter or DEFAULT_SNAPSHOTTER
            mounts = await self._mounts(ns, snapshotter, container.snapshot_key)
        return await self._tasks.create_task(ns, container, mounts, stdio(log, terminal))

    async def delete(self, ns: str, cid: str) -> None:
        await self._tasks.delete_task(ns, cid)
