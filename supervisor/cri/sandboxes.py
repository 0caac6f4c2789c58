"""runtime.v1's pod sandbox calls: RunPodSandbox, StopPodSandbox, RemovePodSandbox,
PodSandboxStatus, ListPodSandbox; and the sandboxes the other parts look up (`get`, `list`:
`model.SandboxLookup`).

A pod has no process of its own unless it shares one PID namespace (`pause`): its network,
IPC and UTS namespaces are pinned files (`pins`), its hostname, hosts and resolv.conf files
and /dev/shm are made by `podfiles`, its network by the pod network (`model.PodNetwork`,
CNI). RunPodSandbox, in order, each step undone in reverse when a later one fails (nothing
half made is left, the name is free again):

1. the name `podname_podns_uid_attempt` reserved (a retry while the first is in flight waits
   for it and answers its id); the sandbox image ensured when there will be a pause task;
2. the record written (`creating`: a crash from here on is undone at the next start);
3. hostname, hosts, resolv.conf under `<root>/cri/sandboxes/<id>`;
4. the namespaces pinned under `<state>/cri/sandboxes/<id>` (the pod's sysctls written inside
   them; a sysctl for a namespace the pod shares with the host is refused first), then the
   /dev/shm tmpfs there (after: the pin directory's self-bind would copy it);
5. `PodNetwork.setup` on the pinned netns (not for host network pods);
6. the pause task, when the pod shares a PID namespace;
7. the record rewritten READY.

StopPodSandbox stops the pod's containers (SIGKILL, all at once) while it stops the pause task,
tears the network down, unmounts /dev/shm and unpins the namespaces (nothing of that waits for
the containers: a pinned namespace lives on while a process is in it), then marks the pod
NOTREADY; RemovePodSandbox also removes the
containers, the pause snapshot, the directories and the record. Both are idempotent and an
unknown id is success.

Recovery runs lazily, at the first call that needs the sandboxes (a CRI call of this part or
a lookup by another part), never at the daemon's start (a daemon without pods pays nothing):
a record still `creating` is undone as a failed RunPodSandbox; every other pod is READY if its
pins are there and, with a pause task, that task is running (tasks are taken back before the
socket serves), else NOTREADY; directories without a record are removed; then
`PodNetwork.reconcile` gets the ids of the pods that remain.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import grpc
import structlog

from supervisor.api.runtime.v1 import api_pb2 as cri
from supervisor.cri import model, pause, pins, podfiles
from supervisor.cri.sandboxstore import (
    RUNTIME_NAME,
    SPEC_TYPE_URL,
    SandboxMeta,
    SandboxStore,
)
from supervisor.errors import InvalidArgument, NotFound

if TYPE_CHECKING:
    from supervisor.events import Exchange
    from supervisor.metadata.containers import Container

log = structlog.get_logger("ctrd.cri")

Context = grpc.aio.ServicerContext[Any, Any]
RUNTIME_HANDLERS = ("", "runc")
_PROTOCOLS = {cri.TCP: "tcp", cri.UDP: "udp", cri.SCTP: "sctp"}


class PodContainers(Protocol):
    """The pod's containers, stopped and removed by the containers part (`ThroughContainers`)."""

    async def stop_pod(self, sandbox_id: str) -> None: ...

    async def remove_pod(self, sandbox_id: str) -> None: ...


@dataclass(frozen=True)
class Places:
    files: Path  # <root>/cri/sandboxes
    pins: Path  # <state>/cri/sandboxes


class Sandboxes:
    def __init__(
        self,
        namespace: str,
        sandbox_image: str,
        places: Places,
        store: SandboxStore,
        pauses: pause.PauseTasks,
        image_service: Callable[[], Any],
        network: Callable[[], model.PodNetwork | None],
        containers: PodContainers,
        events: Exchange,
        oom_score_adj: Callable[[], int] = pause.own_oom_score_adj,
    ) -> None:
        self._ns = namespace
        self._image = sandbox_image
        self._places = places
        self._store = store
        self._pauses = pauses
        self._image_service = image_service
        self._network = network
        self._pod_containers = containers
        self._events = events
        self._oom_score_adj = oom_score_adj
        self._locks: dict[str, asyncio.Lock] = {}
        self._recovered: asyncio.Future[None] | None = None
        self._creations: set[asyncio.Future[None]] = set()

    # -- SandboxLookup ---------------------------------------------------------------------

    async def get(self, sandbox_id: str) -> model.SandboxRecord:
        await self.ready()
        return self._current(self._store.find(sandbox_id)).record

    async def list(self) -> list[model.SandboxRecord]:
        await self.ready()
        return [self._current(m).record for m in self._store.all()]

    # -- the calls -------------------------------------------------------------------------

    async def RunPodSandbox(self, request: cri.RunPodSandboxRequest, context: Context) -> Any:
        config = request.config
        _check(request)
        await self.ready()
        md = config.metadata
        name = "_".join((md.name, md.namespace, md.uid, str(md.attempt)))
        sandbox_id = secrets.token_hex(32)
        started = time.monotonic()
        made = await self._store.reserve(name, sandbox_id)
        if made is not None:
            log.info("cri_sandbox_retry_joined", id=made, name=name)
            return cri.RunPodSandboxResponse(pod_sandbox_id=made)
        # The creation runs to its end even when its caller gives up (kubelet's deadline):
        # kubelet's retry, which waits on the name, then gets the pod instead of its undoing.
        creation = asyncio.ensure_future(self._create(sandbox_id, name, request, started))
        self._creations.add(creation)
        creation.add_done_callback(self._created)
        await asyncio.shield(creation)
        return cri.RunPodSandboxResponse(pod_sandbox_id=sandbox_id)

    async def _create(
        self, sandbox_id: str, name: str, request: cri.RunPodSandboxRequest, started: float
    ) -> None:
        error: BaseException | None = None
        try:
            async with self._lock(sandbox_id):  # a Stop or Remove of it waits for the end
                await self._run(sandbox_id, name, request)
        except BaseException as e:
            error = e
            raise
        finally:
            self._store.created(name, sandbox_id, error)
            if error is not None and self._store.maybe(sandbox_id) is None:
                self._locks.pop(sandbox_id, None)
        ms = round((time.monotonic() - started) * 1000, 1)
        log.info("cri_sandbox_ready", id=sandbox_id, name=name, ms=ms)

    def _created(self, creation: asyncio.Future[None]) -> None:
        self._creations.discard(creation)
        if not creation.cancelled():
            creation.exception()  # retrieved: its caller got it, or had gone

    async def StopPodSandbox(self, request: cri.StopPodSandboxRequest, context: Context) -> Any:
        await self.ready()
        meta = self._store.maybe(request.pod_sandbox_id)
        if meta is not None:
            async with self._lock(meta.id):
                await self._stop(meta.id)
        return cri.StopPodSandboxResponse()

    async def RemovePodSandbox(self, request: cri.RemovePodSandboxRequest, context: Context) -> Any:
        await self.ready()
        meta = self._store.maybe(request.pod_sandbox_id)
        if meta is not None:
            async with self._lock(meta.id):
                if self._store.maybe(meta.id) is not None:
                    await self._remove(meta.id)
            self._locks.pop(meta.id, None)
        return cri.RemovePodSandboxResponse()

    async def PodSandboxStatus(self, request: cri.PodSandboxStatusRequest, context: Context) -> Any:
        await self.ready()
        meta = self._current(self._store.find(request.pod_sandbox_id))
        config = _config(meta.record)
        info = {"info": json.dumps(self._verbose(meta, config))} if request.verbose else {}
        return cri.PodSandboxStatusResponse(status=_status(meta.record, config), info=info)

    async def ListPodSandbox(self, request: cri.ListPodSandboxRequest, context: Context) -> Any:
        await self.ready()
        found = [self._current(m) for m in self._store.all()]
        if request.HasField("filter"):
            found = _filtered(found, request.filter)
        items = []
        for meta in found:
            config = _config(meta.record)
            items.append(
                cri.PodSandbox(
                    id=meta.id,
                    metadata=config.metadata,
                    state=_state(meta.record.state),
                    created_at=meta.record.created_at,
                    labels=config.labels,
                    annotations=config.annotations,
                    runtime_handler=meta.record.runtime_handler,
                )
            )
        return cri.ListPodSandboxResponse(items=items)

    # -- run -------------------------------------------------------------------------------

    async def _run(self, sandbox_id: str, name: str, request: cri.RunPodSandboxRequest) -> None:
        config = request.config
        options = config.linux.security_context.namespace_options
        host_net = options.network == cri.NODE
        host_ipc = options.ipc == cri.NODE
        kinds = tuple(
            kind
            for kind, host in (("net", host_net), ("ipc", host_ipc), ("uts", host_net))
            if not host
        )
        sysctls = dict(config.linux.sysctls)
        pins.check_sysctls(sysctls, kinds)
        with_pause = options.pid == cri.POD
        image = None
        if with_pause:
            image = await pause.ensure_image(self._image_service(), self._image)
        files = self._places.files / sandbox_id
        pin_dir = self._places.pins / sandbox_id
        hostname = podfiles.host_hostname() if host_net else config.hostname
        hostname = hostname or podfiles.host_hostname()
        record = model.SandboxRecord(
            id=sandbox_id,
            name=name,
            config=config.SerializeToString(),
            created_at=time.time_ns(),
            state=model.SandboxState.NOTREADY,
            namespaces=model.Namespaces(
                network=str(pins.pin_path(pin_dir, "net")) if "net" in kinds else "",
                ipc=str(pins.pin_path(pin_dir, "ipc")) if "ipc" in kinds else "",
                uts=str(pins.pin_path(pin_dir, "uts")) if "uts" in kinds else "",
                host_network=host_net,
                host_ipc=host_ipc,
                host_pid=options.pid == cri.NODE,
            ),
            files=str(files),
            shm="" if host_ipc else str(pin_dir / "shm"),
            hostname=hostname,
            runtime_handler=request.runtime_handler,
            cgroup_parent=config.linux.cgroup_parent,
            pause=with_pause,
        )
        meta = SandboxMeta(
            record,
            pin_dir=str(pin_dir),
            pinned=kinds,
            image=image.id if image else "",
            creating=True,
        )
        undo: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        try:
            container = self._container(meta, config, image)
            await self._store.create(meta, container)
            undo.append(("record", lambda: self._forget(sandbox_id)))
            await self._publish_create(container)
            # Side by side where nothing orders them: the pod's files with its pins, and its
            # /dev/shm with its network (which needs the pinned netns). Each undo is listed
            # before its step starts, and runs whatever part of it was done.
            undo.append(("files", lambda: asyncio.to_thread(podfiles.remove_files, files)))
            undo.append(("pins", lambda: asyncio.to_thread(_remove_pin_dir, pin_dir)))
            dns = _dns(config) if config.HasField("dns_config") else None
            plan = pins.PinPlan(pin_dir, kinds, sysctls, hostname if "uts" in kinds else "")
            await _both(
                asyncio.to_thread(podfiles.write_files, files, hostname, dns),
                asyncio.to_thread(pins.pin, plan),
            )
            steps: list[Awaitable[object]] = []
            if record.shm:
                steps.append(asyncio.to_thread(podfiles.mount_shm, Path(record.shm)))
            address: model.PodAddress | None = None
            network = None if host_net else self._network()
            if network is not None:
                netns = record.namespaces.network
                undo.append(("network", lambda: network.teardown(sandbox_id, netns)))
                meta = replace(meta, network=True)
                pod = model.PodRef(sandbox_id, config.metadata.name, config.metadata.namespace,
                                   config.metadata.uid)  # fmt: skip

                async def attach() -> None:
                    nonlocal address
                    address = await network.setup(
                        pod, netns, _ports(config), dns, dict(config.annotations)
                    )

                steps.append(attach())
            await _both(*steps)
            namespaces = record.namespaces
            if image is not None:
                undo.append(("snapshot", lambda: self._pauses.remove_snapshot(sandbox_id)))
                undo.append(("pause", lambda: self._pauses.stop(sandbox_id)))
                pid = await self._pauses.start(container, image)
                namespaces = replace(namespaces, pid=f"/proc/{pid}/ns/pid")
            record = replace(
                record,
                state=model.SandboxState.READY,
                namespaces=namespaces,
                ip=address.ip if address else "",
                additional_ips=address.additional_ips if address else (),
            )
            meta = replace(
                meta,
                record=record,
                cni_result=address.result if address else "",
                creating=False,
            )
            await self._store.put(meta)
        except BaseException as e:
            await self._undo(sandbox_id, undo, e)
            raise

    def _container(
        self, meta: SandboxMeta, config: Any, image: pause.PauseImage | None
    ) -> Container:
        from supervisor.metadata.containers import Container

        labels = {**dict(config.labels), model.KIND_LABEL: model.KIND_SANDBOX}
        extensions = {model.SANDBOX_EXTENSION: (model.SANDBOX_TYPE_URL, meta.to_json())}
        if image is None:
            value = pause.record_spec(meta.record, config, self._ns)
            spec = (SPEC_TYPE_URL, json.dumps(value).encode())
            return Container(meta.id, RUNTIME_NAME, spec=spec, labels=labels, extensions=extensions)
        value = pause.spec(meta.record, image, config, self._ns, self._oom_score_adj())
        return Container(
            meta.id,
            RUNTIME_NAME,
            spec=(SPEC_TYPE_URL, json.dumps(value).encode()),
            labels=labels,
            image=self._image,
            snapshotter=pause.SNAPSHOTTER,
            snapshot_key=meta.id,
            extensions=extensions,
        )

    async def _undo(
        self,
        sandbox_id: str,
        undo: Sequence[tuple[str, Callable[[], Awaitable[None]]]],
        error: BaseException,
    ) -> None:
        """Undo what a failed RunPodSandbox made, last first. When a step cannot be undone
        the record stays (NOTREADY, still `creating`) for a Remove or the next start."""
        failed: list[str] = []
        for step, action in reversed(undo):
            if step == "record" and failed:
                break
            try:
                await asyncio.shield(action())
            except Exception as e:
                failed.append(step)
                log.warning("cri_sandbox_undo_failed", id=sandbox_id, step=step, error=str(e))
        if not undo:
            self._store.forget(sandbox_id)
        log.info("cri_sandbox_failed", id=sandbox_id, error=str(error), left=failed)

    async def _forget(self, sandbox_id: str) -> None:
        await self._store.delete(sandbox_id)
        await self._publish_delete(sandbox_id)

    # -- stop and remove -------------------------------------------------------------------

    def _lock(self, sandbox_id: str) -> asyncio.Lock:
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    async def _stop(self, sandbox_id: str) -> None:
        meta = self._store.find(sandbox_id)
        await _both(self._pod_containers.stop_pod(sandbox_id), self._release(meta))
        if meta.state != model.SandboxState.NOTREADY or meta.network:
            meta = replace(meta.with_state(model.SandboxState.NOTREADY), network=False)
            await self._store.put(meta)

    async def _release(self, meta: SandboxMeta) -> None:
        """The pod's pause task, network, /dev/shm and pins, each if still there."""
        if meta.record.pause:
            await self._pauses.stop(meta.id)
        if meta.network:
            network = self._network()
            if network is not None:
                netns = meta.record.namespaces.network
                alive = await asyncio.to_thread(pins.pinned, Path(meta.pin_dir), ("net",))
                await network.teardown(meta.id, netns if netns and alive else "")
        if meta.pin_dir:
            await asyncio.to_thread(_unmake, Path(meta.pin_dir))

    async def _remove(self, sandbox_id: str) -> None:
        await self._stop(sandbox_id)
        await self._pod_containers.remove_pod(sandbox_id)
        await self._discard(self._store.find(sandbox_id))
        log.info("cri_sandbox_removed", id=sandbox_id)

    async def _discard(self, meta: SandboxMeta) -> None:
        """The last of a released pod: its pause snapshot, directories and record."""
        if meta.record.pause:
            await self._pauses.remove_snapshot(meta.id)
        await asyncio.to_thread(_remove_dirs, meta)
        await self._forget(meta.id)

    # -- recovery --------------------------------------------------------------------------

    async def ready(self) -> None:
        """Recover once (see the module's docstring); later calls return at once."""
        if self._recovered is None:
            self._recovered = asyncio.ensure_future(self._recover())
        await asyncio.shield(self._recovered)

    async def _recover(self) -> None:
        started = time.monotonic()
        try:
            found = await self._store.load()
            for meta in found:
                if meta.creating:
                    log.info("cri_sandbox_unfinished", id=meta.id)
                    await self._release(meta)
                    await self._discard(meta)
                    continue
                current = await asyncio.to_thread(self._current, meta)
                if current != meta:
                    await self._store.put(current)
            await asyncio.to_thread(self._sweep)
            network = self._network()
            if network is not None and (found or self._places.pins.exists()):
                await network.reconcile({m.id for m in self._store.all()})
        except BaseException:
            self._recovered = None  # tried again at the next call
            raise
        if found:
            ms = round((time.monotonic() - started) * 1000, 1)
            log.info("cri_sandboxes_recovered", count=len(self._store.all()), ms=ms)

    def _current(self, meta: SandboxMeta) -> SandboxMeta:
        """A READY pod whose pause task died or whose pins went is NOTREADY; a pause task's
        pid namespace is where its process is now."""
        if meta.state != model.SandboxState.READY:
            return meta
        alive = not meta.record.pause or self._pauses.alive(meta.id)
        if not alive or not pins.pinned(Path(meta.pin_dir), meta.pinned):
            return meta.with_state(model.SandboxState.NOTREADY)
        if meta.record.pause:
            pid = self._pauses.pid(meta.id)
            path = f"/proc/{pid}/ns/pid"
            if meta.record.namespaces.pid != path:
                namespaces = replace(meta.record.namespaces, pid=path)
                return replace(meta, record=replace(meta.record, namespaces=namespaces))
        return meta

    def _sweep(self) -> None:
        """Directories of sandboxes that have no record (a remove cut short): unmounted and
        removed."""
        known = {m.id for m in self._store.all()}
        for base in (self._places.pins, self._places.files):
            if not base.is_dir():
                continue
            for entry in base.iterdir():
                if entry.name not in known:
                    log.info("cri_sandbox_leftover", path=str(entry))
                    if base == self._places.pins:
                        _unmake(entry)
                    shutil.rmtree(entry, ignore_errors=True)

    # -- answers ---------------------------------------------------------------------------

    def _verbose(self, meta: SandboxMeta, config: Any) -> dict[str, Any]:
        from google.protobuf import json_format

        record = meta.record
        pid = self._pauses.pid(meta.id) if record.pause else 0
        return {
            "pid": pid,
            "processStatus": ("running" if pid else "stopped") if record.pause else "",
            "netNamespaceClosed": not (
                record.namespaces.network and pins.pinned(Path(meta.pin_dir), ("net",))
            ),
            "image": self._image if record.pause else "",
            "snapshotKey": meta.id if record.pause else "",
            "snapshotter": pause.SNAPSHOTTER if record.pause else "",
            "runtimeHandler": record.runtime_handler,
            "runtimeType": RUNTIME_NAME,
            "config": json_format.MessageToDict(config),
            "cniResult": json.loads(meta.cni_result) if meta.cni_result else None,
            "pinnedNamespaces": {
                kind: str(pins.pin_path(Path(meta.pin_dir), kind)) for kind in meta.pinned
            },
            "files": record.files,
            "shm": record.shm,
            "hostname": record.hostname,
        }

    async def _publish_create(self, container: Container) -> None:
        from supervisor.api.containerd.events import container_pb2

        runtime = container_pb2.ContainerCreate.Runtime(name=container.runtime_name)
        await self._events.publish(
            self._ns,
            "/containers/create",
            container_pb2.ContainerCreate(id=container.id, image=container.image, runtime=runtime),
        )

    async def _publish_delete(self, sandbox_id: str) -> None:
        from supervisor.api.containerd.events import container_pb2

        await self._events.publish(
            self._ns, "/containers/delete", container_pb2.ContainerDelete(id=sandbox_id)
        )


# -- helpers ---------------------------------------------------------------------------------


def _check(request: cri.RunPodSandboxRequest) -> None:
    if not request.HasField("config") or not request.config.HasField("metadata"):
        raise InvalidArgument("sandbox config must include metadata")
    md = request.config.metadata
    if not md.name or not md.uid or not md.namespace:
        raise InvalidArgument("sandbox metadata must include name, uid and namespace")
    if request.runtime_handler not in RUNTIME_HANDLERS:
        handler = request.runtime_handler
        raise NotFound(f'failed to get sandbox runtime: no runtime for "{handler}" is configured')
    options = request.config.linux.security_context.namespace_options
    if options.network not in (cri.POD, cri.NODE) or options.ipc not in (cri.POD, cri.NODE):
        raise InvalidArgument("a pod's network and IPC namespace modes are POD or NODE")


def _unmake(pin_dir: Path) -> None:
    """/dev/shm unmounted, namespaces unpinned, the shared mount released (blocking)."""
    podfiles.unmount_shm(pin_dir / "shm")
    pins.unpin(pin_dir)


def _remove_pin_dir(pin_dir: Path) -> None:
    _unmake(pin_dir)
    shutil.rmtree(pin_dir, ignore_errors=True)


def _remove_dirs(meta: SandboxMeta) -> None:
    if meta.pin_dir:
        _remove_pin_dir(Path(meta.pin_dir))
    podfiles.remove_files(Path(meta.record.files))


def _config(record: model.SandboxRecord) -> Any:
    config = cri.PodSandboxConfig()
    config.ParseFromString(record.config)
    return config


def _state(state: model.SandboxState) -> Any:
    return cri.SANDBOX_READY if state == model.SandboxState.READY else cri.SANDBOX_NOTREADY


def _status(record: model.SandboxRecord, config: Any) -> Any:
    network = cri.PodSandboxNetworkStatus(
        ip=record.ip, additional_ips=[cri.PodIP(ip=ip) for ip in record.additional_ips]
    )
    options = config.linux.security_context.namespace_options
    return cri.PodSandboxStatus(
        id=record.id,
        metadata=config.metadata,
        state=_state(record.state),
        created_at=record.created_at,
        network=network,
        linux=cri.LinuxPodSandboxStatus(namespaces=cri.Namespace(options=options)),
        labels=config.labels,
        annotations=config.annotations,
        runtime_handler=record.runtime_handler,
    )


def _filtered(found: list[SandboxMeta], wanted: Any) -> list[SandboxMeta]:
    if wanted.id:
        found = [m for m in found if m.id.startswith(wanted.id)]
    if wanted.HasField("state"):
        found = [m for m in found if _state(m.state) == wanted.state.state]
    if wanted.label_selector:
        selector = dict(wanted.label_selector)
        kept = []
        for meta in found:
            labels = _config(meta.record).labels
            if all(labels.get(k) == v for k, v in selector.items()):
                kept.append(meta)
        found = kept
    return found


def _dns(config: Any) -> model.DnsConfig:
    dns = config.dns_config
    return model.DnsConfig(tuple(dns.servers), tuple(dns.searches), tuple(dns.options))


def _ports(config: Any) -> list[model.PortMapping]:
    return [
        model.PortMapping(
            _PROTOCOLS.get(p.protocol, "tcp"), p.container_port, p.host_port, p.host_ip
        )
        for p in config.port_mappings
    ]


class ThroughContainers:
    """The pod's containers stopped (timeout 0) and removed through the containers part's
    own calls, so that its records and names follow."""

    def __init__(self, part: Callable[[], Any]) -> None:
        self._part = part

    async def _ids(self, sandbox_id: str) -> list[str]:
        wanted = cri.ContainerFilter(pod_sandbox_id=sandbox_id)
        found = await self._part().ListContainers(cri.ListContainersRequest(filter=wanted), None)
        return [c.id for c in found.containers if c.pod_sandbox_id == sandbox_id]

    async def stop_pod(self, sandbox_id: str) -> None:
        part = self._part()
        await _both(
            *(
                part.StopContainer(cri.StopContainerRequest(container_id=cid, timeout=0), None)
                for cid in await self._ids(sandbox_id)
            )
        )

    async def remove_pod(self, sandbox_id: str) -> None:
        part = self._part()
        await _both(
            *(
                part.RemoveContainer(cri.RemoveContainerRequest(container_id=cid), None)
                for cid in await self._ids(sandbox_id)
            )
        )


async def _both(*work: Awaitable[object]) -> None:
    """All of `work` side by side, each to its end; then the first failure, if any."""
    for outcome in await asyncio.gather(*work, return_exceptions=True):
        if isinstance(outcome, BaseException):
            raise outcome
