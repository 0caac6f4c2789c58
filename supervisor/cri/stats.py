"""The CRI's stats calls and UpdateContainerResources (the part "stats").

- ContainerStats / ListContainerStats: containers with a live task only (created-but-never-
  started, exited and task-less containers are not listed, as containerd lists only tasks
  that answer Metrics). Filters as containerd's: `id` and `pod_sandbox_id` full or unique
  prefix (an unknown one selects nothing), `label_selector` every key=value among the
  container's CRI labels. Attributes (id, metadata, labels, annotations) come from the
  ContainerConfig kubelet sent (the CRI record, `supervisor.cri.containers`); values from
  the container's cgroup and writable layer (`supervisor.cri.usage`).
- PodSandboxStats / ListPodSandboxStats: READY sandboxes (a list skips the others, a single
  call refuses them with UNAVAILABLE, as containerd). CPU and memory of the pod's cgroup (its
  `cgroup_parent`; a pod without one, as `crictl runp` makes, is the sum of its containers),
  network counters of every interface but lo in its pinned namespace (`eth0` the default
  interface; none for a host-network pod), the process count of its running containers, and
  its containers' stats.
- UpdateContainerResources: the new resources merged into the container's stored OCI spec
  (`supervisor.cri.resources`), then applied to a live task through its shim (`runc update`,
  the Tasks.Update path); a failed apply puts the old spec back. A created, exited or task-less
  container gets the spec only (applied when its task starts). One update at a time.

All file reads of one call run on one worker thread; the event loop only assembles messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from supervisor.api.runtime.v1 import api_pb2 as cri
from supervisor.cri import model, resources, usage
from supervisor.cri.containers import ContainerRecord, pick, record_of
from supervisor.errors import CtrdError, FailedPrecondition, NotFound, Unavailable, Unknown

if TYPE_CHECKING:
    import grpc

    from supervisor.cri.build import CriDeps
    from supervisor.metadata.containers import Container, ContainerStore
    from supervisor.runtime.manager import Task

    Context = grpc.aio.ServicerContext[Any, Any]

log = structlog.get_logger()

KIND_FILTER = f"labels.{json.dumps(model.KIND_LABEL)}=={model.KIND_CONTAINER}"
DEFAULT_INTERFACE = "eth0"


@dataclass(frozen=True)
class Live:
    """A CRI container whose task runs."""

    container: Container
    record: ContainerRecord
    pid: int


class Stats:
    def __init__(
        self,
        deps: CriDeps,
        sandboxes: Callable[[], model.SandboxLookup],
        restrict_oom_score_adj: bool = True,
    ) -> None:
        self._deps = deps
        self._ns = deps.config.cri.namespace
        self._sandboxes = sandboxes
        self._restrict_oom = restrict_oom_score_adj
        self._image_fs = str(deps.root / "snapshots" / "overlayfs")
        self._rates = usage.CpuRates()
        self._layers = usage.LayerUsage()
        self._cgroups: dict[tuple[str, int], usage.Cgroup | None] = {}
        self._updating = asyncio.Lock()  # one update at a time (they are rare)
        self._host: resources.HostLimits | None = None

    def _store(self) -> ContainerStore:
        return self._deps.containers(self._ns)

    # -- containers -------------------------------------------------------------------------

    async def ContainerStats(self, request: cri.ContainerStatsRequest, context: Context) -> Any:
        container, record = await self._find(request.container_id)
        pid = self._live_pid(record.id)
        if pid is None:
            raise Unknown(f"failed to fetch metrics for task: container {record.id} is not running")
        (stats,), _ = await self._stats([Live(container, record, pid)])
        return cri.ContainerStatsResponse(stats=stats)

    async def ListContainerStats(
        self, request: cri.ListContainerStatsRequest, context: Context
    ) -> Any:
        live = await self._live()
        chosen = await self._filtered(live, request.filter)
        self._forget_gone(live)
        stats, _ = await self._stats(chosen)
        return cri.ListContainerStatsResponse(stats=stats)

    async def _filtered(self, live: Sequence[Live], wanted: Any) -> list[Live]:
        chosen = list(live)
        if wanted.id:
            full = _resolve([e.record.id for e in live], wanted.id)
            chosen = [e for e in chosen if e.record.id == full]
        if wanted.pod_sandbox_id:
            try:
                sandbox = (await self._sandboxes().get(wanted.pod_sandbox_id)).id
            except NotFound:
                return []
            chosen = [e for e in chosen if e.record.sandbox_id == sandbox]
        if wanted.label_selector:
            chosen = [e for e in chosen if _selects(wanted.label_selector, _config(e).labels)]
        return chosen

    async def _find(self, key: str) -> tuple[Container, ContainerRecord]:
        pairs = await self._records()
        record = pick([r for _, r in pairs], key)
        return next((c, r) for c, r in pairs if r is record)

    async def _records(self) -> list[tuple[Container, ContainerRecord]]:
        pairs = []
        for container in await self._store().list([KIND_FILTER]):
            record = record_of(container)
            if record is not None:
                pairs.append((container, record))
        return pairs

    async def _live(self) -> list[Live]:
        live = []
        for container, record in await self._records():
            pid = self._live_pid(record.id)
            if pid is not None:
                live.append(Live(container, record, pid))
        return live

    def _live_pid(self, cid: str) -> int | None:
        """The pid of the container's task if it has started and not exited."""
        tasks = self._deps.tasks
        if not tasks.exists(self._ns, cid):
            return None
        task = tasks.get(self._ns, cid)
        if "" in task.exits or task.dead or task.pid <= 0 or task.status == "created":
            return None
        return task.pid

    def _forget_gone(self, live: Sequence[Live]) -> None:
        """What is kept per container (and per pod: `pod:<id>`) for those that run no more."""
        ids = [e.record.id for e in live]
        self._layers.keep(ids)
        self._rates.keep([*ids, *(f"pod:{e.record.sandbox_id}" for e in live)])
        keys = {(e.record.id, e.pid) for e in live}
        for key in [k for k in self._cgroups if k not in keys]:
            del self._cgroups[key]

    async def _stats(
        self, live: Sequence[Live]
    ) -> tuple[list[cri.ContainerStats], list[usage.Sample | None]]:
        """The containers' stats, and the cgroup samples they were made of."""
        samples = await asyncio.to_thread(self._sample_all, live)
        layers = await asyncio.gather(*(self._layer(e) for e in live))
        stats = [
            self._message(e, s, layer) for e, s, layer in zip(live, samples, layers, strict=True)
        ]
        return stats, samples

    def _sample_all(self, live: Sequence[Live]) -> list[usage.Sample | None]:
        """Every container's cgroup, read on this (worker) thread; /proc/self/mountinfo is read
        at most once, for the containers whose cgroups are not known yet."""
        mountinfo: str | None = None
        samples: list[usage.Sample | None] = []
        for entry in live:
            key = (entry.record.id, entry.pid)
            if key not in self._cgroups:
                if mountinfo is None:
                    mountinfo = Path("/proc/self/mountinfo").read_text(encoding="utf-8")
                self._cgroups[key] = usage.of_process(entry.pid, mountinfo)
            where = self._cgroups[key]
            samples.append(None if where is None else usage.sample(where))
        return samples

    async def _layer(self, entry: Live) -> usage.LayerSize:
        container = entry.container
        if not container.snapshot_key:
            return usage.LayerSize(0, 0, 0)

        async def measure() -> tuple[int, int]:
            store = self._deps.parts.snapshots(self._ns, None, container.snapshotter)
            used = await store.usage(container.snapshot_key)
            return used.size, used.inodes

        return await self._layers.get(entry.record.id, measure)

    def _message(
        self, entry: Live, sample: usage.Sample | None, layer: usage.LayerSize
    ) -> cri.ContainerStats:
        config = _config(entry)
        now = time.time_ns()
        stats = cri.ContainerStats(
            attributes=cri.ContainerAttributes(
                id=entry.record.id,
                metadata=config.metadata,
                labels=config.labels,
                annotations=config.annotations,
            ),
            writable_layer=cri.FilesystemUsage(
                timestamp=layer.at or now,
                fs_id=cri.FilesystemIdentifier(mountpoint=self._image_fs),
                used_bytes=cri.UInt64Value(value=layer.used_bytes),
                inodes_used=cri.UInt64Value(value=layer.inodes_used),
            ),
        )
        if sample is not None:
            self._fill(stats, entry.record.id, sample)
        return stats

    def _fill(self, stats: Any, key: str, sample: usage.Sample) -> None:
        """cpu and memory of a ContainerStats or a LinuxPodSandboxStats."""
        if sample.cpu is not None:
            stats.cpu.CopyFrom(
                cri.CpuUsage(
                    timestamp=sample.at,
                    usage_core_nano_seconds=cri.UInt64Value(value=sample.cpu),
                    usage_nano_cores=cri.UInt64Value(
                        value=self._rates.rate(key, sample.at, sample.cpu)
                    ),
                )
            )
        if (m := sample.memory) is not None:
            stats.memory.CopyFrom(
                cri.MemoryUsage(
                    timestamp=sample.at,
                    working_set_bytes=cri.UInt64Value(value=m.working_set),
                    available_bytes=cri.UInt64Value(value=m.available),
                    usage_bytes=cri.UInt64Value(value=m.usage),
                    rss_bytes=cri.UInt64Value(value=m.rss),
                    page_faults=cri.UInt64Value(value=m.page_faults),
                    major_page_faults=cri.UInt64Value(value=m.major_page_faults),
                )
            )

    # -- pods -------------------------------------------------------------------------------

    async def PodSandboxStats(self, request: cri.PodSandboxStatsRequest, context: Context) -> Any:
        sandbox = await self._sandboxes().get(request.pod_sandbox_id)
        if sandbox.state != model.SandboxState.READY:
            raise Unavailable(
                "failed to get pod sandbox stats since sandbox container "
                f'"{sandbox.id}" is not in ready state'
            )
        (stats,) = await self._pod_stats([sandbox])
        return cri.PodSandboxStatsResponse(stats=stats)

    async def ListPodSandboxStats(
        self, request: cri.ListPodSandboxStatsRequest, context: Context
    ) -> Any:
        wanted = request.filter
        sandboxes = [
            s for s in await self._sandboxes().list() if s.state == model.SandboxState.READY
        ]
        if wanted.id:
            full = _resolve([s.id for s in sandboxes], wanted.id)
            sandboxes = [s for s in sandboxes if s.id == full]
        if wanted.label_selector:
            sandboxes = [
                s for s in sandboxes if _selects(wanted.label_selector, _pod_config(s).labels)
            ]
        return cri.ListPodSandboxStatsResponse(stats=await self._pod_stats(sandboxes))

    async def _pod_stats(self, sandboxes: Sequence[model.SandboxRecord]) -> list[Any]:
        live = await self._live()
        by_pod = {s.id: [e for e in live if e.record.sandbox_id == s.id] for s in sandboxes}
        every = [e for s in sandboxes for e in by_pod[s.id]]
        stats, samples = await self._stats(every)
        containers = dict(zip([id(e) for e in every], stats, strict=True))
        own = dict(zip([id(e) for e in every], samples, strict=True))
        pods = await asyncio.to_thread(self._sample_pods, sandboxes, by_pod, own)
        out = []
        for sandbox, (sample, interfaces) in zip(sandboxes, pods, strict=True):
            config = _pod_config(sandbox)
            linux = cri.LinuxPodSandboxStats(
                process=cri.ProcessUsage(
                    timestamp=sample.at, process_count=cri.UInt64Value(value=sample.processes)
                ),
                containers=[containers[id(e)] for e in by_pod[sandbox.id]],
            )
            self._fill(linux, f"pod:{sandbox.id}", sample)
            if interfaces is not None:
                linux.network.CopyFrom(_network(sample.at, interfaces))
            out.append(
                cri.PodSandboxStats(
                    attributes=cri.PodSandboxAttributes(
                        id=sandbox.id,
                        metadata=config.metadata,
                        labels=config.labels,
                        annotations=config.annotations,
                    ),
                    linux=linux,
                )
            )
        return out

    def _sample_pods(
        self,
        sandboxes: Sequence[model.SandboxRecord],
        by_pod: Mapping[str, Sequence[Live]],
        own: Mapping[int, usage.Sample | None],
    ) -> list[tuple[usage.Sample, list[usage.Interface] | None]]:
        """Each pod's cgroup (or its containers' sum) and interfaces (None: host network)."""
        out = []
        for sandbox in sandboxes:
            now = time.time_ns()
            mine = [s for e in by_pod[sandbox.id] if (s := own[id(e)]) is not None]
            where = usage.of_parent(sandbox.cgroup_parent) if sandbox.cgroup_parent else None
            if where is not None and usage.exists(where):
                pod = usage.sample(where)
                # containerd counts the processes of the pod's running containers
                pod = replace(pod, processes=sum(s.processes for s in mine))
            else:
                pod = usage.add(mine, now)
            interfaces = None
            pin = sandbox.namespaces.network
            if pin and not sandbox.namespaces.host_network:
                try:
                    interfaces = usage.net_dev(pin)
                except OSError as e:
                    log.warning("pod_network_stats_failed", id=sandbox.id, error=str(e))
                    interfaces = []
            out.append((pod, interfaces))
        return out

    # -- UpdateContainerResources -----------------------------------------------------------

    async def UpdateContainerResources(
        self, request: cri.UpdateContainerResourcesRequest, context: Context
    ) -> Any:
        _, record = await self._find(request.container_id)
        async with self._updating:
            await self._update(record.id, request.linux)
        return cri.UpdateContainerResourcesResponse()

    async def _update(self, cid: str, linux: Any) -> None:
        store = self._store()
        container = await store.get(cid)  # as it is now, under the lock
        if container.spec is None:
            raise FailedPrecondition(f"container {cid} has no spec")
        type_url, raw = container.spec
        old = json.loads(raw)
        if self._host is None:
            self._host = await asyncio.to_thread(resources.host_limits)
        floor = await asyncio.to_thread(resources.own_oom_score_adj) if self._restrict_oom else None
        new = resources.updated_spec(old, linux, self._host, floor)
        await self._put_spec(store, container, type_url, new)
        try:
            await self._apply(cid, new)
        except BaseException:
            with contextlib.suppress(CtrdError):
                await self._put_spec(store, container, type_url, old)
            raise

    async def _put_spec(
        self, store: ContainerStore, container: Container, type_url: str, spec: dict[str, Any]
    ) -> None:
        await store.update(replace(container, spec=(type_url, json.dumps(spec).encode())), ["spec"])

    async def _apply(self, cid: str, spec: dict[str, Any]) -> None:
        """The spec's resources to the container's live task, if it has one that has not
        exited (created tasks too: runc updates their cgroup before they start). A task still
        being made is left alone: StartContainer gives it the stored spec's resources."""
        tasks = self._deps.tasks
        try:
            task = tasks.get(self._ns, cid)
        except NotFound:
            return
        if "" in task.exits or task.dead:
            return
        try:
            await task.call("update", {"resources": spec["linux"]["resources"]})
        except NotFound:
            return  # exited meanwhile
        except CtrdError as e:
            if "cannot update a stopped container" in str(e):
                return  # exited meanwhile
            raise
        adj = resources.oom_score_adj(spec)
        if adj is not None and task.pid > 0:
            await asyncio.to_thread(_set_oom_score_adj, task, adj)


def _set_oom_score_adj(task: Task, adj: int) -> None:
    """The container's init process gets the new score (its later children inherit it)."""
    try:
        Path(f"/proc/{task.pid}/oom_score_adj").write_text(f"{adj}\n", encoding="ascii")
    except OSError as e:
        log.warning("oom_score_adj_not_set", id=task.id, pid=task.pid, error=str(e))


def _config(entry: Live) -> Any:
    return entry.record.container_config()


def _pod_config(sandbox: model.SandboxRecord) -> Any:
    config = cri.PodSandboxConfig()
    config.ParseFromString(sandbox.config)
    return config


def _resolve(ids: Sequence[str], key: str) -> str:
    """The id that is `key` or the only one starting with it; "" when none (or several)."""
    if key in ids:
        return key
    matched = [i for i in ids if i.startswith(key)]
    return matched[0] if len(matched) == 1 else ""


def _selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _network(at: int, interfaces: Sequence[usage.Interface]) -> Any:
    def message(i: usage.Interface) -> Any:
        return cri.NetworkInterfaceUsage(
            name=i.name,
            rx_bytes=cri.UInt64Value(value=i.rx_bytes),
            rx_errors=cri.UInt64Value(value=i.rx_errors),
            tx_bytes=cri.UInt64Value(value=i.tx_bytes),
            tx_errors=cri.UInt64Value(value=i.tx_errors),
        )

    default = next((i for i in interfaces if i.name == DEFAULT_INTERFACE), None)
    network = cri.NetworkUsage(timestamp=at, interfaces=[message(i) for i in interfaces])
    if default is not None:
        network.default_interface.CopyFrom(message(default))
    return network
