"""containerd.services.tasks.v1.Tasks: run containers through their shims (`runtime.manager`).

The service translates messages; the manager owns tasks, shims and their events. States are
the shim's; an exit the daemon has published is authoritative for STOPPED and the status.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import any_pb2, empty_pb2, timestamp_pb2

from snapshotter.protocol import Mount
from supervisor import errors, filters
from supervisor.api.containerd.runc.options import oci_pb2
from supervisor.api.containerd.services.tasks.v1 import tasks_pb2 as pb
from supervisor.api.containerd.services.tasks.v1 import tasks_pb2_grpc as pb_grpc
from supervisor.api.containerd.types import metrics_pb2
from supervisor.api.containerd.types.task import task_pb2 as types_pb
from supervisor.events import pack
from supervisor.metadata.containers import Container, ContainerStore
from supervisor.network.labels import wants_network
from supervisor.runtime import shimnames
from supervisor.runtime.manager import Exit, Task, TaskManager
from supervisor.services import rpc
from supervisor.services.logs import Logs
from supervisor.volumes.labels import wants_volumes

if TYPE_CHECKING:
    from supervisor.network.manager import NetworkManager
    from supervisor.volumes.manager import VolumeManager

Context = grpc.aio.ServicerContext[Any, Any]

RUNC_OPTIONS = "containerd.runc.v1.Options"
_STATUS = {
    "created": types_pb.CREATED,
    "running": types_pb.RUNNING,
    "paused": types_pb.PAUSED,
    "stopped": types_pb.STOPPED,
}


def _timestamp(ns: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(ns)
    return ts


def _runc_options(*options: any_pb2.Any | None) -> tuple[str, str]:
    """The runtime binary and state root runc options name, or "" for each (the defaults).

    The first options that name one win: the task's, then the container's. ctr sends
    `binary_name` for `--runc-binary`; dockerd sends both, `root` being `<exec-root>/runtime-runc`.
    """
    binary = root = ""
    for packed in options:
        if packed is not None and packed.type_url.endswith(RUNC_OPTIONS) and packed.value:
            parsed = oci_pb2.Options()
            parsed.ParseFromString(packed.value)
            binary = binary or parsed.binary_name
            root = root or parsed.root
    return binary, root


def _json_any(packed: any_pb2.Any, what: str) -> Any:
    try:
        return json.loads(packed.value or b"{}")
    except ValueError as e:
        raise errors.InvalidArgument(f"{what} is not JSON: {e}") from None


class TasksService(pb_grpc.TasksServicer):
    def __init__(
        self,
        manager: TaskManager,
        containers: Any,
        logs: Logs | None = None,
        networks: Callable[[], NetworkManager] | None = None,
        volumes: Callable[[], VolumeManager] | None = None,
    ) -> None:
        self._manager = manager
        # Joins containers labelled ctrd.io/networks to their network; built at first need
        # (netlink's import costs a restart ~0.15 s).
        self._network_factory = networks
        self._networks: NetworkManager | None = None
        # Mounts the volumes of containers labelled ctrd.io/volumes (`supervisor.volumes`).
        self._volume_factory = volumes
        self._logs = logs
        self._containers: Any = containers  # Callable[[str], ContainerStore]
        self._criu: str | None = None  # why CRIU cannot checkpoint here ("" if it can)

    async def _task(self, context: Context, cid: str) -> Task:
        ns = rpc.namespace(context)
        try:
            return self._manager.get(ns, cid)
        except errors.NotFound:
            await self._no_container(ns, cid)
            raise

    async def _no_container(self, ns: str, cid: str) -> None:
        """containerd looks a task's container up first: without one, its words are the
        container store's (NotFound), not "task x not found"."""
        store: ContainerStore = self._containers(ns)
        await store.get(cid)

    async def _process(self, task: Task, exec_id: str) -> types_pb.Process:
        # The init's state is known from its events (listing 1000 tasks asks no shim); an
        # exec's is the shim's.
        state = task.init_state() if not exec_id else await task.call("state", {"exec_id": exec_id})
        status = _STATUS.get(state["status"], types_pb.UNKNOWN)
        exit_ = task.exits.get(exec_id)
        if exit_ is None and status == types_pb.STOPPED:
            status = types_pb.RUNNING  # stopped, but its exit is not published yet
        process = types_pb.Process(
            container_id=task.id,
            id=exec_id or task.id,
            pid=state["pid"],
            status=status,
            stdin=state["stdin"],
            stdout=state["stdout"],
            stderr=state["stderr"],
            terminal=state["terminal"],
        )
        if exit_ is not None:
            process.status = types_pb.STOPPED
            process.exit_status = exit_.status
            process.exited_at.CopyFrom(_timestamp(exit_.at))
        return process

    async def Create(self, request: pb.CreateTaskRequest, context: Context) -> Any:
        ns = rpc.namespace(context)
        store: ContainerStore = self._containers(ns)
        container = await store.get(request.container_id)
        if request.checkpoint.digest:
            raise errors.Unimplemented("checkpoint restore needs CRIU, which is not installed")
        mounts = [Mount(m.type, m.source, tuple(m.options)) for m in request.rootfs]
        stdio = {
            "stdin": request.stdin,
            "stdout": request.stdout,
            "stderr": request.stderr,
            "terminal": request.terminal,
        }
        options = request.options if request.HasField("options") else None
        task = await self.create_task(ns, container, mounts, stdio, options, request.runtime_path)
        return pb.CreateTaskResponse(container_id=task.id, pid=task.pid)

    async def create_task(
        self,
        ns: str,
        container: Container,
        mounts: list[Mount],
        stdio: dict[str, Any],
        options: any_pb2.Any | None = None,
        runtime_path: str = "",
    ) -> Task:
        """What Create does once it has the container: also the restart policies' way to
        start a container again (`supervisor.restart`), networks and logs alike."""
        if container.spec is None:
            raise errors.InvalidArgument(f'container "{container.id}" has no spec')
        if why := shimnames.problem(container.runtime_name):
            raise errors.Unknown(why)
        binary, runtime_root = _runc_options(
            options,
            any_pb2.Any(type_url=container.runtime_options[0], value=container.runtime_options[1])
            if container.runtime_options
            else None,
        )
        spec = container.spec[1]
        # A task that exists already keeps its network: the create below refuses in
        # containerd's words. Only what this call plugged in is released when it fails.
        networks = None
        volumes = None
        if not self._manager.exists(ns, container.id):
            networks = self._networks_for(container.labels)
            volumes = self._volumes_for(container.labels)
        plumbing: asyncio.Future[bytes] | None = None
        before: Awaitable[object] | None = None
        links: asyncio.Future[bytes] | None = None  # what the start waits for
        try:
            if volumes is not None:  # apart from the networks': either, both or neither apply
                spec = await volumes.prepare_task(ns, container.id, container.labels, spec, mounts)
            if networks is not None:
                # Hooks the runtime runs at its create may look at the network: then all of
                # it is made first.
                ready = None if _has_hooks(spec) else asyncio.get_running_loop().create_future()
                plumbing = asyncio.ensure_future(
                    networks.prepare_task(
                        ns, container.id, container.labels, spec, self._netns_of(ns), ready
                    )
                )
                plumbing.add_done_callback(_retrieved)
                # The spec's paths are known before the plumbing is done: the bundle and the
                # shim are made meanwhile, and runc waits for what its create needs
                # (`TaskManager.create`); the links are made during runc's create, and the
                # start waits for them.
                planned = networks.plan_task(ns, container.id, container.labels, spec)
                if planned is None:
                    spec = await plumbing
                else:
                    spec = planned
                    before = plumbing if ready is None else _until_ready(ready, plumbing)
                    links = plumbing
            task = await self._create(
                ns, container.id, spec, mounts, stdio, runtime_path or binary, runtime_root,
                before=before,
            )  # fmt: skip
            task.ready_to_start = links
        except BaseException:
            if networks is not None and plumbing is not None:
                if not plumbing.done():  # the create failed first: let it finish, then undo
                    await asyncio.wait({plumbing})
                if not plumbing.cancelled() and plumbing.exception() is None:
                    await networks.release(ns, container.id)  # (a failed one released itself)
            if volumes is not None:
                await volumes.release(ns, container.id)
            raise
        return task

    async def _create(
        self,
        ns: str,
        cid: str,
        spec: bytes,
        mounts: list[Mount],
        stdio: dict[str, Any],
        binary: str,
        runtime_root: str,
        before: Awaitable[object] | None = None,
    ) -> Task:
        return await self._manager.create(
            ns,
            cid,
            spec,
            mounts,
            {
                "stdin": stdio["stdin"],
                "stdout": self._log_uri(ns, cid, stdio["stdout"]),
                "stderr": self._log_uri(ns, cid, stdio["stderr"]),
                "terminal": stdio["terminal"],
            },
            binary,
            runtime_root,
            before,
        )

    def _networks_for(self, labels: Mapping[str, str]) -> NetworkManager | None:
        """The network manager when the container asks for networks; None otherwise."""
        if self._network_factory is None or not wants_network(labels):
            return None
        if self._networks is None:
            self._networks = self._network_factory()
        return self._networks

    def _netns_of(self, ns: str) -> Callable[[str], Awaitable[Path | None]]:
        """A container id -> its running task's network namespace (`container:` mode)."""

        async def netns_of(cid: str) -> Path | None:
            if not self._manager.exists(ns, cid):
                return None
            pid = self._manager.get(ns, cid).pid
            return Path(f"/proc/{pid}/ns/net") if pid else None

        return netns_of

    async def _release_networks(self, ns: str, cid: str) -> None:
        """A deleted task's endpoints, leases, pin and /etc files, when its container has any."""
        if self._network_factory is None:
            return
        try:
            container = await self._containers(ns).get(cid)
        except errors.NotFound:
            return
        networks = self._networks_for(container.labels)
        if networks is not None:
            await networks.release(ns, cid)

    def _volumes_for(self, labels: Mapping[str, str]) -> VolumeManager | None:
        """The volume manager when the container asks for volumes; None otherwise."""
        if self._volume_factory is None or not wants_volumes(labels):
            return None
        return self._volume_factory()

    async def _release_volumes(self, ns: str, cid: str) -> None:
        """A deleted task's volumes: unmounted once no other task uses them."""
        if self._volume_factory is not None:
            await self._volume_factory().release(ns, cid)

    def _log_uri(self, namespace: str, cid: str, uri: str) -> str:
        return self._logs.resolve(namespace, cid, uri) if self._logs is not None else uri

    async def Start(self, request: pb.StartRequest, context: Context) -> Any:
        task = await self._task(context, request.container_id)
        try:
            result = await task.call_seen("start", {"exec_id": request.exec_id})
        except errors.CtrdError:
            if request.exec_id and await self._never_started(task, request.exec_id):
                task.start_failed(request.exec_id)
            raise
        return pb.StartResponse(pid=result["pid"])

    @staticmethod
    async def _never_started(task: Task, exec_id: str) -> bool:
        """Whether an exec whose start just failed is still only created (its runtime failed)."""
        try:
            state = await task.call("state", {"exec_id": exec_id})
        except errors.CtrdError:
            return False
        return bool(state["status"] == "created")

    async def Delete(self, request: pb.DeleteTaskRequest, context: Context) -> Any:
        ns = rpc.namespace(context)
        if not self._manager.exists(ns, request.container_id):
            await self._no_container(ns, request.container_id)
        result = await self.delete_task(ns, request.container_id)
        return pb.DeleteResponse(  # no id: containerd's names none for a task
            pid=result["pid"],
            exit_status=result["exit_status"],
            exited_at=_timestamp(result["exited_at"]),
        )

    async def delete_task(self, ns: str, cid: str) -> dict[str, Any]:
        """What Delete does: the task, then its networks (restarts use it too)."""
        try:
            links = self._manager.get(ns, cid).ready_to_start
        except errors.NotFound:
            links = None
        result = await self._manager.delete(ns, cid)
        if links is not None and not links.done():  # a task deleted before it started
            await asyncio.wait({links})
        await self._release_networks(ns, cid)
        await self._release_volumes(ns, cid)
        return result

    async def DeleteProcess(self, request: pb.DeleteProcessRequest, context: Context) -> Any:
        task = await self._task(context, request.container_id)
        if not request.exec_id:
            raise errors.InvalidArgument("exec id is required (delete the task instead)")
        result = await task.call("delete", {"exec_id": request.exec_id})
        task.forget_exec(request.exec_id)
        return pb.DeleteResponse(
            id=request.exec_id,
            pid=result["pid"],
            exit_status=result["exit_status"],
            exited_at=_timestamp(result["exited_at"]),
        )

    async def Get(self, request: pb.GetRequest, context: Context) -> Any:
        task = await self._task(context, request.container_id)
        return pb.GetResponse(process=await self._process(task, request.exec_id))

    async def List(self, request: pb.ListTasksRequest, context: Context) -> Any:
        ns = rpc.namespace(context)
        selected = filters.parse_all([request.filter] if request.filter else [])
        processes = []
        for task in self._manager.list(ns):
            try:
                process = await self._process(task, "")
            except errors.CtrdError:
                continue  # deleted meanwhile, or its shim is gone
            if selected.matches(_process_adaptor(process)):
                processes.append(process)
        return pb.ListTasksResponse(tasks=processes)

    async def Kill(self, request: pb.KillRequest, context: Context) -> Any:
        task = await self._task(context, request.container_id)
        await task.call(
            "kill", {"exec_id": request.exec_id, "signal": request.signal, "all": request.all}
        )
        return empty_pb2.Empty()

    async def Exec(self, request: pb.ExecProcessRequest, context: Context) -> Any:
        if not request.exec_id:  # checked first, in containerd's words
            raise errors.InvalidArgument("exec id cannot be empty", plain=True)
        task = await self._task(context, request.container_id)
        await task.call_seen(
            "exec",
            {
                "exec_id": request.exec_id,
                "spec": _json_any(request.spec, "process spec"),
                "stdin": request.stdin,
                "stdout": request.stdout,
                "stderr": request.stderr,
                "terminal": request.terminal,
            },
        )
        return empty_pb2.Empty()

    async def ResizePty(self, request: pb.ResizePtyRequest, context: Context) -> Any:
        task = await self._task(context, request.container_id)
        await task.call(
            "resize_pty",
            {"exec_id": request.exec_id, "width": request.width, "height": request.height},
        )
        return empty_pb2.Empty()

    async def CloseIO(self, request: pb.CloseIORequest, context: Context) -> Any:
        task = await self._task(context, request.container_id)
        await task.call("close_io", {"exec_id": request.exec_id, "stdin": request.stdin})
        return empty_pb2.Empty()

    async def Pause(self, request: pb.PauseTaskRequest, context: Context) -> Any:
        await (await self._task(context, request.container_id)).call_seen("pause")
        return empty_pb2.Empty()

    async def Resume(self, request: pb.ResumeTaskRequest, context: Context) -> Any:
        await (await self._task(context, request.container_id)).call_seen("resume")
        return empty_pb2.Empty()

    async def ListPids(self, request: pb.ListPidsRequest, context: Context) -> Any:
        task = await self._task(context, request.container_id)
        processes = []
        for entry in await task.call("pids"):
            info = types_pb.ProcessInfo(pid=entry["pid"])
            if entry.get("exec_id"):
                info.info.CopyFrom(pack(oci_pb2.ProcessDetails(exec_id=entry["exec_id"])))
            processes.append(info)
        return pb.ListPidsResponse(processes=processes)

    async def Checkpoint(self, request: pb.CheckpointTaskRequest, context: Context) -> Any:
        await self._task(context, request.container_id)
        if self._criu is None:
            self._criu = await _criu_problem()
        if self._criu:
            raise errors.Unimplemented(f"checkpoint needs a working CRIU: {self._criu}")
        raise errors.Unimplemented("checkpoint is not supported yet (CRIU works here)")

    async def Update(self, request: pb.UpdateTaskRequest, context: Context) -> Any:
        task = await self._task(context, request.container_id)
        resources = _json_any(request.resources, "resources")
        await task.call("update", {"resources": resources})
        return empty_pb2.Empty()

    async def Metrics(self, request: pb.MetricsRequest, context: Context) -> Any:
        from supervisor.runtime import metrics  # cgroup parsing: not needed to start

        ns = rpc.namespace(context)
        selected = filters.parse_all(list(request.filters))
        out = []
        for task in self._manager.list(ns):
            if not selected.matches(_task_adaptor(task)):
                continue
            try:
                if "" in task.exits:  # stopped: its cgroup stays until the task is deleted
                    data = await asyncio.to_thread(_stopped_metrics, task)
                else:
                    data = await asyncio.to_thread(metrics.collect, task.pid)
            except errors.NotFound:
                continue
            metric = metrics_pb2.Metric(id=task.id, data=data)
            metric.timestamp.GetCurrentTime()
            out.append(metric)
        return pb.MetricsResponse(metrics=out)

    async def Wait(self, request: pb.WaitRequest, context: Context) -> Any:
        task = await self._task(context, request.container_id)
        exit_: Exit | None = task.exits.get(request.exec_id)
        if exit_ is None:
            await task.call("state", {"exec_id": request.exec_id})  # NotFound if no such process
            exit_ = await task.wait(request.exec_id)
        return pb.WaitResponse(exit_status=exit_.status, exited_at=_timestamp(exit_.at))


def _stopped_metrics(task: Task) -> any_pb2.Any:
    """A stopped task's metrics, from the cgroup its spec names (blocking)."""
    from supervisor.runtime import metrics

    try:
        spec = json.loads((task.bundle.path / "config.json").read_bytes())
        path = str(spec["linux"]["cgroupsPath"])
    except (OSError, ValueError, KeyError, TypeError):
        raise errors.NotFound(f"cgroup of task {task.id}") from None
    return metrics.collect_path(path)


async def _criu_problem() -> str:
    """Why CRIU cannot checkpoint on this host, from `criu check`; "" when it can."""
    if shutil.which("criu") is None:
        return "criu is not installed"
    proc = await asyncio.create_subprocess_exec(
        "criu", "check", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    if proc.returncode == 0:
        return ""
    lines = out.decode(errors="replace").strip().splitlines()
    return f"`criu check` fails: {lines[-1] if lines else f'exit {proc.returncode}'}"


def _task_adaptor(task: Task) -> filters.Adaptor:
    def adapt(path: tuple[str, ...]) -> str | None:
        if path in (("id",), ("container_id",)):
            return task.id
        if path == ("namespace",):
            return task.namespace
        return None

    return adapt


def _process_adaptor(process: types_pb.Process) -> filters.Adaptor:
    names = {v: k for k, v in _STATUS.items()}

    def adapt(path: tuple[str, ...]) -> str | None:
        if path in (("id",), ("container_id",)):
            return process.container_id
        if path == ("status",):
            return names.get(process.status, "unknown")
        if path == ("pid",):
            return str(process.pid)
        return None

    return adapt


def _has_hooks(spec: bytes) -> bool:
    """Whether the OCI spec names hooks (the runtime runs some at its create)."""
    if b'"hooks"' not in spec:  # most specs: no parse on the create's path
        return False
    hooks = json.loads(spec).get("hooks") or {}
    return any(hooks.get(kind) for kind in hooks)


async def _until_ready(ready: asyncio.Future[None], plumbing: asyncio.Future[bytes]) -> None:
    """Until the plumbing says the runtime's create may go; its failure before that."""
    either: set[asyncio.Future[Any]] = {ready, plumbing}
    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
    if not ready.done():
        plumbing.result()


def _retrieved(future: asyncio.Future[Any]) -> None:
    """A failure the start or the create reports, or none if the task is deleted first."""
    if not future.cancelled():
        future.exception()
