"""The pause task of a pod that shares one PID namespace (`namespace_options.pid == POD`).

Only such a pod has a process of its own: PID 1 of its PID namespace, which reaps the
zombies of its containers (a pinned file cannot hold a PID namespace with processes in it).
Its task has the sandbox's id, its container record is the sandbox's own (spec, snapshot and
image filled in), its image is `[cri] sandbox_image` (pulled through the CRI's ImageService
when missing), and it joins the pod's pinned network, IPC and UTS namespaces.

Its spec is containerd's sandbox spec cut to what a pause process needs: the image's
entrypoint and command, read-only root, no capabilities, no new privileges, CPU shares 2,
`oom_score_adj` -998 raised to the daemon's own with `[cri] restrict_oom_score_adj`
(containerd's; on by default: root here cannot lower it and runc fails outright), the pod's
/dev/shm.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from supervisor.cri import model
from supervisor.errors import CtrdError, NotFound

if TYPE_CHECKING:
    from supervisor.metadata.containers import Container
    from supervisor.metadata.snapshots import SnapshotStore
    from supervisor.runtime.manager import TaskManager
    from supervisor.services.tasks import TasksService

SNAPSHOTTER = "overlayfs"
PAUSE_OOM_SCORE_ADJ = -998
STOP_TIMEOUT = 10.0
_MASKED = (
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
    "/proc/scsi",
)  # fmt: skip
_DEVPTS = ("nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5")
_DEVPTS = ("nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5")
_READONLY = (
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
)  # fmt: skip


@dataclass(frozen=True)
class PauseImage:
    id: str  # sha256:<config digest>
    chain_id: str  # the snapshot its root is prepared on
    args: tuple[str, ...]
    env: tuple[str, ...]


async def ensure_image(image_service: Any, ref: str) -> PauseImage:
    """The sandbox image, pulled through the CRI's ImageService when it is not there, and
    pinned (kubelet's image garbage collection leaves it)."""
    from supervisor.api.runtime.v1 import api_pb2 as cri

    spec = cri.ImageSpec(image=ref)
    status = await image_service.ImageStatus(cri.ImageStatusRequest(image=spec, verbose=True), None)
    if not status.HasField("image"):
        await image_service.PullImage(cri.PullImageRequest(image=spec), None)
        status = await image_service.ImageStatus(
            cri.ImageStatusRequest(image=spec, verbose=True), None
        )
        if not status.HasField("image"):
            raise NotFound(f'sandbox image "{ref}" is not there after its pull')
    if not status.image.pinned:
        await image_service.pin(ref)
    info = json.loads(status.info.get("info", "{}"))
    config = (info.get("imageSpec") or {}).get("config") or {}
    args = tuple(config.get("Entrypoint") or ()) + tuple(config.get("Cmd") or ())
    if not args:
        raise NotFound(f'sandbox image "{ref}" has no entrypoint or command')
    env = tuple(config.get("Env") or ())
    return PauseImage(status.image.id, info.get("chainID", ""), args, env)


def own_oom_score_adj(path: str = "/proc/self/oom_score_adj") -> int:
    try:
        return int(Path(path).read_text())
    except (OSError, ValueError):
        return 0


def cgroups_path(parent: str, sandbox_id: str, namespace: str) -> str:
    return posixpath.join(parent or f"/{namespace}", sandbox_id)


def spec(
    record: model.SandboxRecord,
    image: PauseImage,
    config: Any,
    namespace: str,
    oom_score_adj: int,
) -> dict[str, Any]:
    """The pause process's OCI spec (`config`: the PodSandboxConfig)."""
    ns = record.namespaces
    namespaces: list[dict[str, str]] = [{"type": "pid"}, {"type": "mount"}]
    for kind, path in (("network", ns.network), ("ipc", ns.ipc), ("uts", ns.uts)):
        if path:
            namespaces.append({"type": kind, "path": path})
    mounts: list[dict[str, Any]] = [
        _mount("/proc", "proc", "proc", "nosuid", "noexec", "nodev"),
        _mount("/dev", "tmpfs", "tmpfs", "nosuid", "strictatime", "mode=755", "size=65536k"),
        _mount("/dev/pts", "devpts", "devpts", *_DEVPTS),
        _mount("/dev/mqueue", "mqueue", "mqueue", "nosuid", "noexec", "nodev"),
        _mount("/sys", "sysfs", "sysfs", "nosuid", "noexec", "nodev", "ro"),
    ]
    if record.shm:
        mounts.append(_mount("/dev/shm", "bind", record.shm, "rbind", "ro"))
    metadata = config.metadata
    value: dict[str, Any] = {
        "ociVersion": "1.0.2-dev",
        "process": {
            "user": {"uid": 0, "gid": 0},
            "args": list(image.args),
            "env": list(image.env)
            or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "capabilities": {"bounding": [], "effective": [], "permitted": []},
            "noNewPrivileges": True,
            "oomScoreAdj": max(PAUSE_OOM_SCORE_ADJ, oom_score_adj),
        },
        "root": {"path": "rootfs", "readonly": True},
        "mounts": mounts,
        "linux": {
            "namespaces": namespaces,
            "cgroupsPath": cgroups_path(record.cgroup_parent, record.id, namespace),
            "resources": {
                "devices": [{"allow": False, "access": "rwm"}],
                "cpu": {"shares": 2},
            },
            "maskedPaths": list(_MASKED),
            "readonlyPaths": list(_READONLY),
        },
        "annotations": {
            model.ANNOTATION_CONTAINER_TYPE: model.KIND_SANDBOX,
            model.ANNOTATION_SANDBOX_ID: record.id,
            model.ANNOTATION_SANDBOX_NAME: metadata.name,
            model.ANNOTATION_SANDBOX_NAMESPACE: metadata.namespace,
            model.ANNOTATION_SANDBOX_UID: metadata.uid,
            model.ANNOTATION_SANDBOX_LOG_DIR: config.log_directory,
        },
    }
    if ns.uts:
        value["hostname"] = record.hostname
    return value


def record_spec(record: model.SandboxRecord, config: Any, namespace: str) -> dict[str, Any]:
    """The spec a sandbox without a pause task keeps in its record (a container record must
    have one): no process, its namespaces, hostname, cgroup path and annotations."""
    full = spec(record, PauseImage("", "", (), ()), config, namespace, 0)
    return {
        key: full[key] for key in ("ociVersion", "linux", "annotations", "hostname") if key in full
    }


def _mount(destination: str, type_: str, source: str, *options: str) -> dict[str, Any]:
    return {"destination": destination, "type": type_, "source": source, "options": list(options)}


class PauseTasks:
    """Start and stop a pod's pause task in the CRI's namespace."""

    def __init__(
        self,
        namespace: str,
        tasks_service: TasksService,
        manager: TaskManager,
        snapshots: Callable[[], SnapshotStore],
    ) -> None:
        self._ns = namespace
        self._tasks = tasks_service
        self._manager = manager
        self._snapshots = snapshots

    async def start(self, container: Container, image: PauseImage) -> int:
        """Prepare its root on the image, create and start the task; the pid."""
        mounts = await self._snapshots().prepare(container.snapshot_key, image.chain_id)
        stdio = {"stdin": "", "stdout": "", "stderr": "", "terminal": False}
        task = await self._tasks.create_task(self._ns, container, mounts, stdio)
        await task.call_seen("start", {"exec_id": ""})
        return task.pid

    def alive(self, sandbox_id: str) -> bool:
        return self._manager.running(self._ns, sandbox_id)

    def pid(self, sandbox_id: str) -> int:
        return self._manager.get(self._ns, sandbox_id).pid if self.alive(sandbox_id) else 0

    async def stop(self, sandbox_id: str) -> None:
        """Kill the pause process and delete its task (nothing to do when there is none)."""
        if not self._manager.exists(self._ns, sandbox_id):
            return
        task = self._manager.get(self._ns, sandbox_id)
        if self._manager.running(self._ns, sandbox_id):
            with contextlib.suppress(CtrdError):
                await task.call("kill", {"exec_id": "", "signal": 9, "all": True})
            with contextlib.suppress(CtrdError, TimeoutError):
                await asyncio.wait_for(task.wait(""), STOP_TIMEOUT)
        with contextlib.suppress(NotFound):
            await self._tasks.delete_task(self._ns, sandbox_id)

    async def remove_snapshot(self, key: str) -> None:
        with contextlib.suppress(NotFound):
            await self._snapshots().remove(key)
