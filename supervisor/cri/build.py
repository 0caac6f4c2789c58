"""The CRI's parts, built from what the daemon already has (`CriDeps`), each at its first call.

`builders` maps a part's name (see `runtime_service.CriParts`) to a function that builds it;
each part's module is imported only then. The parts share one `CriDeps`: the daemon's stores
and services, in-process (no gRPC round trip to ourselves).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from supervisor.config import Config

if TYPE_CHECKING:
    from supervisor.cri.containers import CriContainerLookup
    from supervisor.cri.model import PodNetwork, SandboxLookup
    from supervisor.cri.sandboxes import Sandboxes
    from supervisor.events import Exchange
    from supervisor.metadata.containers import ContainerStore
    from supervisor.metadata.db import Database
    from supervisor.runtime.manager import TaskManager
    from supervisor.services.tasks import TasksService


@dataclass(frozen=True)
class CriDeps:
    config: Config
    root: Path  # the daemon's root: the CRI keeps its files under root / "cri"
    state: Path  # the daemon's state dir: pins and sockets under state / "cri"
    db: Database
    events: Exchange
    tasks: TaskManager
    tasks_service: TasksService  # create_task / delete_task, as Tasks.Create and Delete do
    containers: Callable[[str], ContainerStore]  # by namespace
    parts: Any  # server.Parts: images, content, snapshots, leases, gc, volumes
    pull: Callable[[], Any]  # the PullService, built once
    network_manager: Callable[[], Any]  # ctrd's own networks (`supervisor.network.manager`)
    image_service: Callable[[], Any]  # the CRI's ImageService (image lookup, normalisation)


def container_lookup(deps: CriDeps) -> CriContainerLookup:
    """The CRI containers (`supervisor.cri.containers`) for the other parts (stats, logs,
    exec): by id or unique prefix, all, or a sandbox's."""
    from supervisor.cri.containers import CriContainerLookup

    return CriContainerLookup(
        lambda: deps.containers(deps.config.cri.namespace), part=lambda: _containers(deps)
    )


def _exec(deps: CriDeps) -> Any:
    from supervisor.cri.execsync import ExecSync

    namespace = deps.config.cri.namespace
    fifos = deps.state / "cri" / "exec"
    shutil.rmtree(fifos, ignore_errors=True)  # FIFOs a killed daemon left
    return ExecSync(
        namespace, container_lookup(deps), deps.tasks, lambda: deps.containers(namespace), fifos
    )


_shared: dict[int, tuple[CriDeps, Any]] = {}  # id(deps) -> (deps, its Sandboxes)


def sandboxes(deps: CriDeps) -> Sandboxes:
    """The pod sandboxes (`supervisor.cri.sandboxes`), one per daemon: the `sandboxes` part
    and, for the other parts, the `model.SandboxLookup` (`get` by id or unique prefix,
    `list`). Their recovery runs at the first call of either."""
    held = _shared.get(id(deps))
    if held is None:
        held = (deps, _make_sandboxes(deps))
        _shared[id(deps)] = held
    sandboxes_: Sandboxes = held[1]
    return sandboxes_


def sandbox_lookup(deps: CriDeps) -> SandboxLookup:
    return sandboxes(deps)


_networks: dict[int, tuple[CriDeps, Any]] = {}  # id(deps) -> (deps, its pod network)


def pod_network(deps: CriDeps) -> PodNetwork | None:
    """The pod network (CNI, `supervisor.network.cni`) the sandboxes set up and tear down and
    Status reports (the `network` part): one per daemon, made at its first use."""
    held = _networks.get(id(deps))
    if held is None:
        from supervisor.network.cni.pod import CniPodNetwork

        cri = deps.config.cri
        made = CniPodNetwork(deps.db, cri.cni_conf_dir, cri.cni_plugin_dirs(), cri.cni_cache_dir)
        held = _networks[id(deps)] = (deps, made)
    network: PodNetwork = held[1]
    return network


def _make_sandboxes(deps: CriDeps) -> Sandboxes:
    from supervisor.cri import pause
    from supervisor.cri.sandboxes import Places, Sandboxes, ThroughContainers
    from supervisor.cri.sandboxstore import SandboxStore

    cri = deps.config.cri
    ns = cri.namespace

    def snapshots() -> Any:
        return deps.parts.snapshots(ns, None, pause.SNAPSHOTTER)

    def store() -> ContainerStore:
        return deps.containers(ns)

    network = [pod_network(deps)]
    return Sandboxes(
        ns,
        cri.sandbox_image,
        Places(deps.root / "cri" / "sandboxes", deps.state / "cri" / "sandboxes"),
        SandboxStore(store),
        pause.PauseTasks(ns, deps.tasks_service, deps.tasks, snapshots),
        deps.image_service,
        lambda: network[0],
        ThroughContainers(lambda: _containers(deps)),
        deps.events,
        pause.own_oom_score_adj if cri.restrict_oom_score_adj else lambda: -1000,
    )


_containers_parts: dict[int, tuple[CriDeps, Any]] = {}  # id(deps) -> (deps, the part)


def _containers(deps: CriDeps) -> Any:
    """The containers part, one per daemon: the RuntimeService's and the sandboxes' (which
    stop and remove a pod's containers through it)."""
    held = _containers_parts.get(id(deps))
    if held is None:
        from supervisor.cri import containers

        held = (deps, containers.build(deps, sandbox_lookup(deps)))
        _containers_parts[id(deps)] = held
    return held[1]


def _stats(deps: CriDeps) -> Any:
    """The stats calls and UpdateContainerResources (`supervisor.cri.stats`)."""
    from supervisor.cri.stats import Stats

    restrict = getattr(deps.config.cri, "restrict_oom_score_adj", True)
    return Stats(deps, lambda: sandbox_lookup(deps), restrict_oom_score_adj=restrict)


def _streaming(deps: CriDeps) -> Any:
    """The streaming server's part (`supervisor.cri.streaming.part`)."""
    from supervisor.cri.streaming import part

    return part.build(deps)


def builders(deps: CriDeps) -> dict[str, Callable[[], Any]]:
    """Each part's builder. A part missing here answers UNIMPLEMENTED."""
    return {
        "sandboxes": lambda: sandboxes(deps),
        "containers": lambda: _containers(deps),
        "exec": lambda: _exec(deps),
        "stats": lambda: _stats(deps),
        "network": lambda: pod_network(deps),  # Status' NetworkReady
        "streaming": lambda: _streaming(deps),  # Exec, Attach, PortForward: URLs
    }
