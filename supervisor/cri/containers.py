"""CRI containers: their durable record, the lookup the other CRI parts use, and the
containers part of the RuntimeService (`ContainersPart`: Create, Start, Stop, Remove, List,
Status, ReopenContainerLog; its spec is `supervisor.cri.spec`'s).

A CRI container is a container record of the `[cri] namespace` labelled
`io.cri-containerd.kind=container` and `io.kubernetes.cri.sandbox-id=<sandbox>`, whose
extension `io.cri-containerd.container.metadata` holds `ContainerRecord` as JSON (type URL
`model.CONTAINER_TYPE_URL`). The record is rewritten at every state change (created,
started, exited), so a daemon restarted after SIGKILL finds each container where it was.

State is derived from the record's times as containerd derives it from its status file:
`unknown` set -> UNKNOWN; finished_at -> EXITED; started_at -> RUNNING; else CREATED.

The container's root is a snapshot of its image (overlayfs, key = container id) that the
container record holds against the collector; a lease holds it while the record is made.
Its task (id = container id) is made right after CreateContainer answers, in the background
(runc's create, the slow half of a start, then overlaps the client's next call: kubelet and
crictl call StartContainer at once), with both streams going to the CRI log at
`log_directory/log_path` (`ctrd-log:///PATH?format=cri`, written by the shim); StartContainer
waits for it and only starts it (a made task that failed is made again there, so the start
says why; resources updated meanwhile are applied to it first). The task is deleted once its
exit is recorded, or with the container if it never started (that deletion's exit of the
never-run init is no exit of the container). The shim announces that exit only once the container's
output is all in the log (or after a bounded drain: `shim.task`), so a container is EXITED
with its whole log, which kubelet and critest read at once. Stop sends the image's StopSignal
(SIGTERM by default), SIGKILL after the timeout, and returns once the exit is recorded; Stop
and Remove of what is not there succeed; Remove leaves the log file (kubelet's). The image's
VOLUMEs that no CRI mount covers get a directory of the container's under
`root/cri/containers/ID/volumes`, filled from the image at creation and removed with the
container.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import contextlib
import enum
import hashlib
import json
import os
import secrets
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from supervisor import filters
from supervisor.cri import model
from supervisor.errors import (
    AlreadyExists,
    CtrdError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unimplemented,
    Unknown,
)

if TYPE_CHECKING:
    from supervisor.cri.build import CriDeps
    from supervisor.metadata.containers import Container, ContainerStore

log = structlog.get_logger("ctrd.cri")


class ContainerState(enum.IntEnum):
    """runtime.v1's ContainerState values."""

    CREATED = 0
    RUNNING = 1
    EXITED = 2
    UNKNOWN = 3


@dataclass(frozen=True)
class ContainerRecord:
    """What the extension holds (JSON): the container as the CRI sees it.

    `config` is the ContainerConfig kubelet sent, serialised (labels and annotations are
    answered from it byte for byte). Times are ns since the epoch; 0 = not yet.
    """

    id: str
    name: str  # the reserved key: name_podname_podnamespace_poduid_attempt
    sandbox_id: str
    config: bytes
    image: str  # the image as answered in statuses (first repo tag, else as asked)
    image_ref: str  # the image's ID (sha256:<config digest>)
    image_repo_ref: str = ""  # first repo digest if known (ContainerStatus' image_ref)
    log_path: str = ""  # absolute; "" = output discarded
    stop_signal: str = ""  # the image's StopSignal ("" = SIGTERM)
    created_at: int = 0
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    pid: int = 0
    unknown: bool = False

    @property
    def state(self) -> ContainerState:
        if self.unknown:
            return ContainerState.UNKNOWN
        if self.finished_at:
            return ContainerState.EXITED
        if self.started_at:
            return ContainerState.RUNNING
        return ContainerState.CREATED

    @property
    def state_name(self) -> str:
        """The state as runtime.v1 names it (CONTAINER_RUNNING...)."""
        return f"CONTAINER_{self.state.name}"

    def container_config(self) -> Any:
        """The ContainerConfig message (runtime.v1), parsed."""
        from supervisor.api.runtime.v1 import api_pb2 as cri

        config = cri.ContainerConfig()
        config.ParseFromString(self.config)
        return config

    def to_json(self) -> bytes:
        value = asdict(self)
        value["config"] = base64.b64encode(self.config).decode()
        return json.dumps(value, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ContainerRecord:
        value = json.loads(data)
        known = {f.name for f in fields(cls)}
        value = {k: v for k, v in value.items() if k in known}  # newer keys ignored
        value["config"] = base64.b64decode(value.get("config", ""))
        return cls(**value)


def record_of(container: Container) -> ContainerRecord | None:
    """The CRI record a ctrd container holds, None if it is not a CRI container."""
    if container.labels.get(model.KIND_LABEL) != model.KIND_CONTAINER:
        return None
    found = container.extensions.get(model.CONTAINER_EXTENSION)
    if found is None or found[0] != model.CONTAINER_TYPE_URL:
        return None
    return ContainerRecord.from_json(found[1])


def pick(records: Sequence[ContainerRecord], key: str) -> ContainerRecord:
    """The record whose id is `key` or starts with it (unique), NotFound otherwise."""
    if not key:
        raise InvalidArgument("container id must not be empty")
    matched = [r for r in records if r.id == key]
    if not matched:
        matched = [r for r in records if r.id.startswith(key)]
    if not matched:
        raise NotFound(f'container "{key}" not found')
    if len(matched) > 1:
        raise InvalidArgument(f'container id prefix "{key}" is ambiguous')
    return matched[0]


async def stored_records(store: ContainerStore) -> list[ContainerRecord]:
    """Every CRI container's record, as the containers part last wrote them to the store."""
    containers = await store.list(
        [f"labels.{json.dumps(model.KIND_LABEL)}=={model.KIND_CONTAINER}"]
    )
    return [r for r in map(record_of, containers) if r is not None]


class CriContainerLookup:
    """CRI containers for the other parts (stats, logs, exec): by id or unique prefix (from
    the containers part's own copy of the records: an exec then reads nothing from the store,
    where listing them all cost ~1 ms at one pod, more with more), all, or a sandbox's (read
    from the store)."""

    def __init__(
        self, store: Callable[[], ContainerStore], part: Callable[[], ContainersPart]
    ) -> None:
        self._store = store
        self._part = part

    async def list(self) -> list[ContainerRecord]:
        return await stored_records(self._store())

    async def get(self, key: str) -> ContainerRecord:
        return await self._part().record(key)

    async def list_by_sandbox(self, sandbox_id: str) -> builtins.list[ContainerRecord]:
        return [r for r in await self.list() if r.sandbox_id == sandbox_id]


# --- the containers part: the RuntimeService's container calls ------------------------------


def reserved_name(config: Any, sandbox_config: Any) -> str:
    """containerd's container name: name_podname_podnamespace_poduid_attempt."""
    pod = sandbox_config.metadata
    meta = config.metadata
    return f"{meta.name}_{pod.name}_{pod.namespace}_{pod.uid}_{meta.attempt}"


def layer_dirs(mounts: Sequence[Any]) -> tuple[str, ...] | None:
    """A snapshot's directories, top first (one overlay or one bind), for reading the image's
    users without mounting it; None for other mounts."""
    if len(mounts) != 1:
        return None
    mount = mounts[0]
    if mount.type == "bind":
        return (mount.source,)
    if mount.type != "overlay":
        return None
    options = dict(option.partition("=")[::2] for option in mount.options)
    upper = [options["upperdir"]] if options.get("upperdir") else []
    return (*upper, *options.get("lowerdir", "").split(":"))


def _exit_reason(code: int, oom: bool) -> str:
    if oom:
        return "OOMKilled"
    return "Completed" if code == 0 else "Error"


class ContainersPart:
    """CreateContainer, StartContainer, StopContainer, RemoveContainer, ListContainers,
    ContainerStatus, ReopenContainerLog over the records (see the module's docstring).

    The records are loaded, and checked against the tasks the daemon holds, at the first
    call (`_ready`): a RUNNING one whose task exited while no daemon ran takes that exit, one
    whose task is gone exits 255 "Unknown", a task left "created" by a crash mid-start is
    deleted. From then on a subscription to `/tasks/exit` and `/tasks/oom` of the CRI's
    namespace records each exit (its task is then deleted, as containerd's CRI does). A daemon
    without CRI containers pays nothing: the part is built at its first call.
    """

    RUNTIME = "io.containerd.runc.v2"
    SNAPSHOTTER = "overlayfs"
    STOP_WAIT = 60.0  # how long a SIGKILLed process may take to die before Stop fails
    SHIM_WAIT = 60.0  # how long a shim may take to answer a start or a kill

    def __init__(self, deps: CriDeps, sandboxes: model.SandboxLookup) -> None:
        self._deps = deps
        self._ns = deps.config.cri.namespace
        self._sandboxes = sandboxes
        self._records: dict[str, ContainerRecord] = {}
        self._names: dict[str, str] = {}  # reserved name -> id
        self._locks: dict[str, asyncio.Lock] = {}
        self._oom: set[str] = set()
        self._loaded: asyncio.Future[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._cleanups: set[asyncio.Task[None]] = set()
        self._host: Any = None
        self._configs: dict[str, Any] = {}  # id -> its ContainerConfig, parsed once
        # id -> its task being made ahead of StartContainer: (the spec it was made with, task)
        self._made: dict[str, asyncio.Future[tuple[Any, Any]]] = {}
        self._unstarted: set[str] = set()  # ids with a task whose init never ran

    def _config(self, record: ContainerRecord) -> Any:
        """The record's ContainerConfig (it never changes; kubelet lists every second)."""
        config = self._configs.get(record.id)
        if config is None:
            config = self._configs[record.id] = record.container_config()
        return config

    # -- state -----------------------------------------------------------------------------

    def _store(self) -> ContainerStore:
        return self._deps.containers(self._ns)

    def _lock(self, cid: str) -> asyncio.Lock:
        return self._locks.setdefault(cid, asyncio.Lock())

    async def _ready(self) -> None:
        if self._loaded is None:
            self._loaded = asyncio.ensure_future(self._load())
        loading = self._loaded
        try:
            await asyncio.shield(loading)
        except Exception:
            if self._loaded is loading and loading.done():
                self._loaded = None  # the next call tries again
            raise

    async def _load(self) -> None:
        if self._watcher is None:  # first, so that no exit after the check below is missed
            subscription = self._deps.events.subscription(
                filters.parse_all_wrapped(
                    [
                        f'namespace=={self._ns},topic=="/tasks/exit"',
                        f'namespace=={self._ns},topic=="/tasks/oom"',
                    ]
                )
            )
            self._watcher = asyncio.create_task(
                self._watch(subscription), name="cri-container-exits"
            )
        for record in await stored_records(self._store()):
            self._records[record.id] = record
            self._names[record.name] = record.id
        for record in list(self._records.values()):
            await self._recover(record)
        log.info("cri_containers_loaded", ns=self._ns, count=len(self._records))

    async def _recover(self, record: ContainerRecord) -> None:
        """A record checked against the task the daemon holds (after a restart)."""
        tasks = self._deps.tasks
        exists = tasks.exists(self._ns, record.id)
        task = tasks.get(self._ns, record.id) if exists else None
        if record.state is ContainerState.EXITED:
            if task is not None:
                self._cleanup(record.id)
            return
        if task is None:
            if record.state is ContainerState.RUNNING:
                await self._save(
                    replace(record, finished_at=time.time_ns(), exit_code=255, reason="Unknown")
                )
            return
        exit_ = task.exits.get("")
        if exit_ is not None:
            await self._exited(record.id, exit_.status, exit_.at)
        elif task.status == "created" and record.state is ContainerState.CREATED:
            self._unstarted.add(record.id)
            self._cleanup(record.id)  # made, never started: the task goes, the container stays
        elif record.state is ContainerState.CREATED:  # started, not yet recorded
            await self._save(replace(record, started_at=time.time_ns(), pid=task.pid))

    async def _save(self, record: ContainerRecord) -> ContainerRecord:
        """Keep `record` in memory and in its container's extension."""
        from supervisor.metadata.containers import Container

        self._records[record.id] = record
        ext = {model.CONTAINER_EXTENSION: (model.CONTAINER_TYPE_URL, record.to_json())}
        update = Container(record.id, self.RUNTIME, extensions=ext)
        with contextlib.suppress(NotFound):  # removed meanwhile
            await self._store().update(update, [f"extensions.{model.CONTAINER_EXTENSION}"])
        return record

    async def _watch(self, subscription: Any) -> None:
        from supervisor.events import unpack

        while True:
            item = await subscription.queue.get()
            if item is None:  # dropped for being slow: subscribe again and look at the tasks
                self._deps.events.unsubscribe(subscription)
                subscription = self._deps.events.subscription(subscription.selected)
                for record in list(self._records.values()):
                    if record.state is ContainerState.RUNNING:
                        await self._recover(record)
                continue
            envelope = item.envelope
            event: Any = unpack(envelope.event)
            cid = getattr(event, "container_id", "")
            if cid not in self._records:
                continue
            if envelope.topic == "/tasks/oom":
                self._oom.add(cid)
            elif getattr(event, "id", "") in ("", cid):
                try:
                    await self._exited(cid, event.exit_status, event.exited_at.ToNanoseconds())
                except Exception:
                    log.exception("cri_exit_failed", ns=self._ns, id=cid)

    async def _exited(self, cid: str, status: int, at: int) -> None:
        """Record the exit of a container's process (once), then let its task go."""
        async with self._lock(cid):
            record = self._records.get(cid)
            if record is None or record.finished_at:
                return
            if not record.started_at and cid in self._unstarted:
                return  # a made task deleted unstarted: the container stays CREATED
            oom = cid in self._oom
            await self._save(
                replace(
                    record,
                    finished_at=at or time.time_ns(),
                    exit_code=status,
                    reason=_exit_reason(status, oom),
                )
            )
        self._cleanup(cid)

    def _cleanup(self, cid: str) -> None:
        """Delete a stopped container's task in the background (its shim exits)."""
        job = asyncio.ensure_future(self._delete_task(cid))
        self._cleanups.add(job)
        job.add_done_callback(self._cleanups.discard)

    async def _delete_task(self, cid: str) -> None:
        from supervisor.cri.streaming import containerio

        if not self._deps.tasks.exists(self._ns, cid):
            containerio.remove(containerio.directory(self._deps.state, cid))
            return
        try:
            await asyncio.wait_for(self._deps.tasks_service.delete_task(self._ns, cid), 30)
        except (NotFound, FailedPrecondition):
            pass
        except Exception as e:
            log.warning("cri_task_delete_failed", ns=self._ns, id=cid, error=str(e))
            return
        containerio.remove(containerio.directory(self._deps.state, cid))

    async def _get(self, key: str) -> ContainerRecord:
        await self._ready()
        return pick(list(self._records.values()), key)

    async def record(self, key: str) -> ContainerRecord:
        """A container's record by id or unique prefix, as this part keeps it (for exec)."""
        return await self._get(key)

    # -- create ----------------------------------------------------------------------------

    async def CreateContainer(self, request: Any, context: Any) -> Any:
        from supervisor.api.runtime.v1 import api_pb2 as cri

        await self._ready()
        config = request.config
        if not config.HasField("metadata") or not config.metadata.name:
            raise InvalidArgument("container config must include metadata")
        sandbox = await self._sandboxes.get(request.pod_sandbox_id)
        sandbox_config = request.sandbox_config
        if not request.HasField("sandbox_config"):
            sandbox_config = cri.PodSandboxConfig()
            sandbox_config.ParseFromString(sandbox.config)
        name = reserved_name(config, sandbox_config)
        holder = self._names.get(name)
        if holder is not None:
            raise AlreadyExists(
                f'failed to reserve container name "{name}": '
                f'name "{name}" is reserved for "{holder}"'
            )
        cid = secrets.token_hex(32)
        self._names[name] = cid
        try:
            record, made_with = await self._create(cid, name, config, sandbox, sandbox_config)
        except BaseException:
            self._names.pop(name, None)
            raise
        self._records[cid] = record
        self._unstarted.add(cid)
        made = self._made[cid] = asyncio.ensure_future(self._make_task(record, *made_with))
        made.add_done_callback(_quiet)
        return cri.CreateContainerResponse(container_id=cid)

    async def _create(
        self, cid: str, name: str, config: Any, sandbox: model.SandboxRecord, sandbox_config: Any
    ) -> tuple[ContainerRecord, tuple[Container, list[Any]]]:
        """The container's record, and the stored container and its snapshot's mounts (its
        task is made from them at once, without reading them back)."""
        from ctl.spec import SPEC_TYPE_URL, encode
        from supervisor.cri import spec as specs
        from supervisor.cri import users
        from supervisor.metadata.containers import Container

        try:
            image = await self._deps.image_service().image(config.image.image)
        except NotFound:
            raise NotFound(f'failed to resolve image "{config.image.image}": not found') from None
        image_config = image.content.config.get("config") or {}
        chain = image.content.chain_id
        parts = self._deps.parts
        lease_id = f"cri-create-{cid}"
        leases = parts.leases(self._ns)
        await leases.create(lease_id, {"containerd.io/gc.expire": _expiry(3600)})
        snapshots = parts.snapshots(self._ns, lease_id, self.SNAPSHOTTER)
        try:
            try:
                mounts = await snapshots.prepare(cid, chain, {})
            except NotFound:
                raise FailedPrecondition(
                    f'image "{config.image.image}" is not unpacked into {self.SNAPSHOTTER}'
                ) from None
            try:
                context = config.linux.security_context
                user_text = users.user_string(
                    context.run_as_username,
                    context.run_as_user.value if context.HasField("run_as_user") else None,
                    context.run_as_group.value if context.HasField("run_as_group") else None,
                ) or str(image_config.get("User") or "")
                user = users.resolve(
                    user_text,
                    layer_dirs(mounts),
                    [int(g) for g in context.supplemental_groups],
                    context.run_as_username,
                )
                volumes = await self._image_volumes(cid, config, image_config, mounts)
                if self._host is None:
                    self._host = specs.read_host(self._deps.config.cri.restrict_oom_score_adj)
                image_name = image.repo_tags[0] if image.repo_tags else config.image.image
                inputs = specs.Inputs(
                    id=cid, namespace=self._ns, config=config, sandbox_config=sandbox_config,
                    sandbox=sandbox, image_config=image_config, image_name=image_name,
                    user=user, target_pid=self._target_pid(config, sandbox.id),
                    volumes=volumes,
                )  # fmt: skip
                spec = specs.build(inputs, self._host)
                log_path = ""
                if config.log_path:  # relative to the pod's directory; none without one
                    log_path = os.path.join(sandbox_config.log_directory, config.log_path)
                    log_path = log_path if os.path.isabs(log_path) else ""
                record = ContainerRecord(
                    id=cid, name=name, sandbox_id=sandbox.id, config=config.SerializeToString(),
                    image=image_name, image_ref=image.id,
                    image_repo_ref=image.repo_digests[0] if image.repo_digests else image.id,
                    log_path=log_path, stop_signal=str(image_config.get("StopSignal") or ""),
                    created_at=time.time_ns(),
                )  # fmt: skip
                labels = {
                    **dict(config.labels),
                    model.KIND_LABEL: model.KIND_CONTAINER,
                    model.SANDBOX_ID_LABEL: sandbox.id,
                }
                container = await self._store().create(
                    Container(
                        id=cid, runtime_name=self.RUNTIME, spec=(SPEC_TYPE_URL, encode(spec)),
                        labels=labels, image=image_name, snapshotter=self.SNAPSHOTTER,
                        snapshot_key=cid,
                        extensions={
                            model.CONTAINER_EXTENSION: (model.CONTAINER_TYPE_URL, record.to_json())
                        },
                    )
                )  # fmt: skip
            except BaseException:
                with contextlib.suppress(NotFound):
                    await snapshots.remove(cid)
                await asyncio.to_thread(shutil.rmtree, self._directory(cid), True)
                raise
        finally:
            with contextlib.suppress(NotFound):
                await leases.delete(lease_id)
        log.info("cri_container_created", ns=self._ns, id=cid, name=name)
        return record, (container, list(mounts))

    def _directory(self, cid: str) -> Path:
        """The container's own files (its image volumes) under the root."""
        return self._deps.root / "cri" / "containers" / cid

    async def _image_volumes(
        self, cid: str, config: Any, image_config: Any, mounts: Sequence[Any]
    ) -> list[tuple[str, str]]:
        """A directory for each of the image's VOLUMEs no CRI mount covers, filled with what
        the image has there (containerd's WithVolumes; `supervisor.volumes.copyup` copies,
        from the new snapshot mounted read-only for the while)."""
        from supervisor.cri.spec import image_volumes

        paths = image_volumes(config, image_config)
        if not paths:
            return []
        from snapshotter.mount import temp_mount
        from snapshotter.protocol import Mount
        from supervisor.volumes import copyup

        base = self._directory(cid) / "volumes"
        scratch = self._deps.state / "cri" / "mnt"
        readonly = [Mount(m.type, m.source, (*m.options, "ro")) for m in mounts]
        made: list[tuple[str, str]] = []

        def fill() -> None:
            scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
            with temp_mount(readonly, scratch) as root:
                for path in paths:
                    directory = base / hashlib.sha256(path.encode()).hexdigest()[:16]
                    data = directory / "_data"
                    data.mkdir(parents=True, exist_ok=True)
                    copyup.copy_up(root, path, directory, data)
                    made.append((path, str(data)))

        await asyncio.to_thread(fill)
        return made

    def _target_pid(self, config: Any, sandbox_id: str) -> int:
        """The pid of the container whose PID namespace a TARGET-mode container joins."""
        from supervisor.cri.spec import TARGET

        options = config.linux.security_context.namespace_options
        if int(options.pid) != TARGET:
            return 0
        target = self._records.get(options.target_id)
        if target is None or target.sandbox_id != sandbox_id:
            raise NotFound(f'target container "{options.target_id}" not found in the pod')
        if target.state is not ContainerState.RUNNING or not self._deps.tasks.running(
            self._ns, target.id
        ):
            raise FailedPrecondition(f'target container "{target.id}" is not running')
        return int(self._deps.tasks.get(self._ns, target.id).pid)

    # -- start -----------------------------------------------------------------------------

    async def StartContainer(self, request: Any, context: Any) -> Any:
        from supervisor.api.runtime.v1 import api_pb2 as cri

        record = await self._get(request.container_id)
        async with self._lock(record.id):
            record = self._records[record.id]
            if record.state is not ContainerState.CREATED:
                raise FailedPrecondition(f'container "{record.id}" is in {record.state.name} state')
            try:
                pid = await self._start(record)
            except BaseException as e:
                message = e.detail if isinstance(e, CtrdError) else str(e)
                await self._save(
                    replace(
                        record, finished_at=time.time_ns(), exit_code=128,
                        reason="StartError", message=message,
                    )
                )  # fmt: skip
                self._cleanup(record.id)
                raise
            await self._save(replace(record, started_at=time.time_ns(), pid=pid))
        return cri.StartContainerResponse()

    async def _start(self, record: ContainerRecord) -> int:
        sandbox = await self._sandboxes.get(record.sandbox_id)
        if sandbox.state is not model.SandboxState.READY:
            raise FailedPrecondition(f'sandbox container "{sandbox.id}" is not running')
        made = self._made.pop(record.id, None)
        ready = None
        if made is not None:
            with contextlib.suppress(Exception):  # made again below, so the error is this one
                ready = await made
        spec, task = ready or await self._make_task(record)
        await self._catch_up(record.id, spec, task)
        self._unstarted.discard(record.id)
        try:  # a shim that does not answer fails the start rather than hanging kubelet
            await asyncio.wait_for(task.call_seen("start", {"exec_id": ""}), self.SHIM_WAIT)
        except TimeoutError:
            raise Unknown(
                f"the shim did not start the container in {self.SHIM_WAIT:.0f}s"
            ) from None
        log.info("cri_container_started", ns=self._ns, id=record.id, pid=task.pid)
        return int(task.pid)

    async def _catch_up(self, cid: str, spec: Any, task: Any) -> None:
        """The resources of the spec as it is now to a task made from `spec`: an
        UpdateContainerResources while the task was being made changed the stored spec only."""
        container = await self._store().get(cid)
        if container.spec != spec and container.spec is not None:
            resources = json.loads(container.spec[1]).get("linux", {}).get("resources") or {}
            await task.call("update", {"resources": resources})

    async def _forget_made(self, cid: str) -> None:
        """Wait out a task being made ahead (its deletion is the caller's)."""
        made = self._made.pop(cid, None)
        if made is not None:
            with contextlib.suppress(Exception):
                await made

    async def _make_task(
        self,
        record: ContainerRecord,
        container: Container | None = None,
        mounts: list[Any] | None = None,
    ) -> tuple[Any, Any]:
        """The container's task, made (runc create) and not started; the spec it has. The
        stored container and its snapshot's mounts are read unless given (just made)."""
        if container is None or mounts is None:
            container = await self._store().get(record.id)
            snapshots = self._deps.parts.snapshots(self._ns, None, self.SNAPSHOTTER)
            mounts = await snapshots.mounts(record.id)
        config = self._config(record)
        uri = ""
        if record.log_path:
            os.makedirs(os.path.dirname(record.log_path), exist_ok=True)
            max_line = self._deps.config.cri.max_container_log_line_size
            uri = f"ctrd-log://{record.log_path}?format=cri&max-line={max(max_line, 0)}"
        from supervisor.cri.streaming import containerio  # attach's FIFOs, stdin

        io_dir = containerio.directory(self._deps.state, record.id)
        stdio = containerio.stdio(io_dir, uri, config.stdin, config.tty)
        task = await self._deps.tasks_service.create_task(self._ns, container, mounts, stdio)
        return container.spec, task

    # -- stop and remove -------------------------------------------------------------------

    async def StopContainer(self, request: Any, context: Any) -> Any:
        from supervisor.api.runtime.v1 import api_pb2 as cri

        try:
            record = await self._get(request.container_id)
        except NotFound:
            return cri.StopContainerResponse()  # idempotent
        await self._stop(record, float(request.timeout))
        return cri.StopContainerResponse()

    async def _stop(self, record: ContainerRecord, grace: float) -> None:
        """Stop signal, SIGKILL after `grace` s (0: at once); returns once it is dead."""
        from ctl.spec import parse_signal

        if record.state is not ContainerState.RUNNING:
            return
        tasks = self._deps.tasks
        if not tasks.exists(self._ns, record.id):
            await self._recover(record)
            return
        task = tasks.get(self._ns, record.id)
        exit_ = task.exits.get("")
        if exit_ is None and grace > 0:
            try:
                number = parse_signal(record.stop_signal or "SIGTERM")
            except ValueError:
                number = int(signal.SIGTERM)
            await self._kill(task, number)
            with contextlib.suppress(TimeoutError):
                exit_ = await asyncio.wait_for(task.wait(""), grace)
        if exit_ is None:
            await self._kill(task, int(signal.SIGKILL))
            try:
                exit_ = await asyncio.wait_for(task.wait(""), self.STOP_WAIT)
            except TimeoutError:
                raise Unknown(
                    f'container "{record.id}" did not die {self.STOP_WAIT:.0f}s after SIGKILL'
                ) from None
        await self._exited(record.id, exit_.status, exit_.at)

    async def _kill(self, task: Any, number: int) -> None:
        """Signal the init; gone already, or a shim not answering, is left to the wait."""
        with contextlib.suppress(NotFound, FailedPrecondition, TimeoutError):
            await asyncio.wait_for(
                task.call("kill", {"exec_id": "", "signal": number, "all": False}), self.SHIM_WAIT
            )

    async def RemoveContainer(self, request: Any, context: Any) -> Any:
        from supervisor.api.runtime.v1 import api_pb2 as cri

        try:
            record = await self._get(request.container_id)
        except NotFound:
            return cri.RemoveContainerResponse()  # idempotent
        await self._stop(record, 0)
        async with self._lock(record.id):
            await self._forget_made(record.id)
            await self._delete_task(record.id)
            with contextlib.suppress(NotFound):
                await self._store().delete(record.id)
            snapshots = self._deps.parts.snapshots(self._ns, None, self.SNAPSHOTTER)
            with contextlib.suppress(NotFound):
                await snapshots.remove(record.id)
            await asyncio.to_thread(shutil.rmtree, self._directory(record.id), True)
            self._records.pop(record.id, None)
            if self._names.get(record.name) == record.id:
                del self._names[record.name]
            self._oom.discard(record.id)
            self._unstarted.discard(record.id)
            self._configs.pop(record.id, None)
        self._locks.pop(record.id, None)
        log.info("cri_container_removed", ns=self._ns, id=record.id)
        return cri.RemoveContainerResponse()

    # -- list and status -------------------------------------------------------------------

    async def ListContainers(self, request: Any, context: Any) -> Any:
        from supervisor.api.runtime.v1 import api_pb2 as cri

        await self._ready()
        wanted = request.filter if request.HasField("filter") else None
        out = []
        for record in sorted(self._records.values(), key=lambda r: r.created_at):
            config = self._config(record)
            if wanted is not None and not _matches(record, config, wanted):
                continue
            out.append(
                cri.Container(
                    id=record.id, pod_sandbox_id=record.sandbox_id, metadata=config.metadata,
                    image=config.image, image_ref=record.image_ref, state=record.state_name,
                    created_at=record.created_at, labels=dict(config.labels),
                    annotations=dict(config.annotations),
                )
            )  # fmt: skip
        return cri.ListContainersResponse(containers=out)

    async def ContainerStatus(self, request: Any, context: Any) -> Any:
        from supervisor.api.runtime.v1 import api_pb2 as cri

        record = await self._get(request.container_id)
        config = self._config(record)
        status = cri.ContainerStatus(
            id=record.id, metadata=config.metadata, state=record.state_name,
            created_at=record.created_at, started_at=record.started_at,
            finished_at=record.finished_at, exit_code=record.exit_code,
            image=cri.ImageSpec(image=record.image, annotations=dict(config.image.annotations)),
            image_ref=record.image_repo_ref, reason=record.reason, message=record.message,
            labels=dict(config.labels), annotations=dict(config.annotations),
            mounts=list(config.mounts), log_path=record.log_path,
        )  # fmt: skip
        info = await self._verbose(record, config) if request.verbose else {}
        return cri.ContainerStatusResponse(status=status, info=info)

    async def _verbose(self, record: ContainerRecord, config: Any) -> dict[str, str]:
        from google.protobuf import json_format

        container = await self._store().get(record.id)
        spec = json.loads(container.spec[1]) if container.spec else {}
        pid = record.pid if record.state is ContainerState.RUNNING else 0
        value = {
            "sandboxID": record.sandbox_id, "pid": pid, "removing": False,
            "snapshotKey": container.snapshot_key, "snapshotter": container.snapshotter,
            "runtimeType": container.runtime_name,
            "config": json_format.MessageToDict(config), "runtimeSpec": spec,
        }  # fmt: skip
        return {"info": json.dumps(value)}

    async def ReopenContainerLog(self, request: Any, context: Any) -> Any:
        from supervisor.api.runtime.v1 import api_pb2 as cri

        record = await self._get(request.container_id)
        if record.state is not ContainerState.RUNNING:
            raise FailedPrecondition("container is not running", plain=True)
        reopen = getattr(self._deps.tasks, "reopen_log", None)
        if reopen is None:
            raise Unimplemented("reopening a container's log is not there yet")
        await reopen(self._ns, record.id)
        return cri.ReopenContainerLogResponse()


def _quiet(made: asyncio.Future[Any]) -> None:
    """A task made ahead that failed is made again at StartContainer, which says why."""
    if not made.cancelled() and made.exception() is not None:
        log.debug("cri_task_made_ahead_failed", error=str(made.exception()))


def _matches(record: ContainerRecord, config: Any, wanted: Any) -> bool:
    if wanted.id and not record.id.startswith(wanted.id):
        return False
    if wanted.HasField("state") and int(wanted.state.state) != int(record.state):
        return False
    if wanted.pod_sandbox_id and not record.sandbox_id.startswith(wanted.pod_sandbox_id):
        return False
    labels = config.labels
    return all(labels.get(k) == v for k, v in wanted.label_selector.items())


def _expiry(seconds: int) -> str:
    import datetime as dt

    at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def build(deps: CriDeps, sandboxes: model.SandboxLookup) -> ContainersPart:
    """The part, with the sandboxes' lookup (`build.sandbox_lookup`)."""
    return ContainersPart(deps, sandboxes)
