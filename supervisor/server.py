"""The composition root: everything the daemon is made of is built here, in plain code.

`Daemon.start` takes the root's lock, opens the metadata, builds the stores and services and
serves them on the unix socket; `Daemon.stop` undoes it in reverse. Nothing registers itself.

What a restarted daemon needs to answer for its tasks (the task manager, the containers' and
events' records) is built before it serves. Everything else is imported and built the first
time a call needs it (`Deferred` services, `Parts`), and the collector's first run waits a
moment (as containerd's `startup_delay`): the daemon answers `Tasks.List` after a restart
before it has imported a snapshotter, the content store or the registry client.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import os
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2_grpc

from supervisor import tmpmounts
from supervisor.api.containerd.services.containers.v1 import containers_pb2_grpc
from supervisor.api.containerd.services.content.v1 import content_pb2_grpc
from supervisor.api.containerd.services.diff.v1 import diff_pb2_grpc
from supervisor.api.containerd.services.events.v1 import events_pb2_grpc
from supervisor.api.containerd.services.images.v1 import images_pb2_grpc
from supervisor.api.containerd.services.introspection.v1 import introspection_pb2_grpc
from supervisor.api.containerd.services.leases.v1 import leases_pb2_grpc
from supervisor.api.containerd.services.namespaces.v1 import namespaces_pb2_grpc
from supervisor.api.containerd.services.snapshots.v1 import snapshots_pb2_grpc
from supervisor.api.containerd.services.tasks.v1 import tasks_pb2_grpc
from supervisor.api.containerd.services.version.v1 import version_pb2_grpc
from supervisor.api.ctrd.services.archive.v1 import archive_pb2_grpc
from supervisor.api.ctrd.services.events.v1 import log_pb2_grpc
from supervisor.api.ctrd.services.health.v1 import health_pb2_grpc as ctrd_health_pb2_grpc
from supervisor.api.ctrd.services.images.v1 import pull_pb2_grpc, push_pb2_grpc
from supervisor.api.ctrd.services.logs.v1 import logs_pb2_grpc
from supervisor.api.ctrd.services.networks.v1 import networks_pb2_grpc
from supervisor.api.ctrd.services.restarts.v1 import restarts_pb2_grpc
from supervisor.api.ctrd.services.volumes.v1 import volumes_pb2_grpc
from supervisor.config import Config
from supervisor.errors import FailedPrecondition
from supervisor.eventlog import EventLog
from supervisor.events import Exchange
from supervisor.health import subscribe as follow_health
from supervisor.metadata.containers import ContainerStore
from supervisor.metadata.db import Database
from supervisor.restart.launch import TaskLauncher
from supervisor.restart.monitor import RestartMonitor
from supervisor.restart.store import RestartStore
from supervisor.runtime.manager import TaskManager
from supervisor.services.logs import Logs, LogsService
from supervisor.services.rpc import Deferred, Registrar
from supervisor.services.tasks import TasksService
from supervisor.services.version import IntrospectionService, Plugin, VersionService
from supervisor.sockets import clear_stale_socket

if TYPE_CHECKING:
    from snapshotter.native import NativeSnapshotter
    from snapshotter.overlay import OverlaySnapshotter
    from supervisor.content.local import LocalStore
    from supervisor.events import Publish
    from supervisor.health.monitor import HealthMonitor
    from supervisor.metadata.content import ContentStore
    from supervisor.metadata.gc import Collector
    from supervisor.metadata.images import ImageStore
    from supervisor.metadata.leases import LeaseStore
    from supervisor.metadata.snapshots import SnapshotStore
    from supervisor.metrics.daemon import OwnMetrics
    from supervisor.metrics.server import MetricsServer
    from supervisor.tracing import Tracing
    from supervisor.volumes.manager import VolumeManager

log = structlog.get_logger("ctrd")

MAX_MESSAGE = 16 << 20  # containerd's limit both ways
GC_STARTUP_DELAY = 0.1  # seconds before the collector's first run (containerd's default)
PLATFORM = ("linux", {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, "unknown"))


class RootLock:
    """An exclusive flock on `<root>/ctrd.lock`, held for the daemon's lifetime."""

    def __init__(self, root: Path) -> None:
        self.path = root / "ctrd.lock"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self._fd)
            raise FailedPrecondition(
                f'root "{root}" is in use by another ctrd (pid {holder})'
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        os.close(self._fd)


def server_uuid(root: Path) -> str:
    """The daemon's identity, made once and kept under the root."""
    path = root / "uuid"
    with contextlib.suppress(FileNotFoundError):
        return path.read_text().strip()
    tmp = root / "uuid.tmp"
    tmp.write_text(str(uuid.uuid4()) + "\n")
    os.replace(tmp, path)
    return path.read_text().strip()


def plugins(root: Path, state: Path) -> list[Plugin]:
    """What `ctr plugins ls` shows; the exports name each store's directory, as containerd's."""
    grpc_services = (  # in containerd's order; healthcheck is grpc.health.v1
        "introspection", "containers", "content", "diff", "events", "healthcheck", "images",
        "leases", "namespaces", "snapshots", "tasks", "version",
    )  # fmt: skip
    return [
        Plugin("io.containerd.content.v1", "content", exports={"root": str(root / "content")}),
        Plugin("io.containerd.event.v1", "exchange"),
        Plugin(
            "io.containerd.metadata.v1",
            "sqlite",
            requires=("io.containerd.content.v1", "io.containerd.event.v1"),
        ),
        Plugin("io.containerd.gc.v1", "scheduler", requires=("io.containerd.metadata.v1",)),
        *(
            Plugin(
                "io.containerd.snapshotter.v1",
                name,
                platforms=(PLATFORM,),
                exports={"root": str(root / "snapshots" / name)},
            )
            for name in ("native", "overlayfs")
        ),
        Plugin("io.containerd.differ.v1", "walking", platforms=(PLATFORM,)),
        Plugin("io.containerd.lease.v1", "manager", requires=("io.containerd.metadata.v1",)),
        Plugin(
            "io.containerd.runtime.v2",
            "task",
            requires=("io.containerd.event.v1", "io.containerd.metadata.v1"),
            platforms=(PLATFORM,),
            exports={"root": str(root), "state": str(state)},
        ),
        *(
            Plugin("io.containerd.grpc.v1", name, requires=("io.containerd.metadata.v1",))
            for name in grpc_services
        ),
    ]


class Parts:
    """The stores the services share and the collector, each built the first time it is needed
    (their modules are imported then)."""

    def __init__(
        self, root: Path, db: Database, gc_interval: float, publish: Publish | None = None
    ) -> None:
        self.root = root
        self.db = db
        self.gc_interval = gc_interval
        self.publish = publish  # the daemon's events, for the volumes'

    @functools.cached_property
    def blobs(self) -> LocalStore:
        from supervisor.content.local import LocalStore

        return LocalStore(self.root / "content")

    @functools.cached_property
    def snapshotters(self) -> dict[str, OverlaySnapshotter | NativeSnapshotter]:
        from snapshotter.native import NativeSnapshotter
        from snapshotter.overlay import OverlaySnapshotter

        return {
            "overlayfs": OverlaySnapshotter(self.root / "snapshots" / "overlayfs"),
            "native": NativeSnapshotter(self.root / "snapshots" / "native"),
        }

    @functools.cached_property
    def gc(self) -> Collector:
        from supervisor.metadata.gc import Collector

        return Collector(self.db, self.blobs, self.snapshotters, interval=self.gc_interval)

    @functools.cached_property
    def volumes(self) -> VolumeManager:
        """The volumes (`supervisor.volumes`): built at the first call or task that names one,
        or at the start when the root has volumes."""
        from supervisor.volumes.manager import VolumeManager

        return VolumeManager(
            self.db, self.root / "volumes", self.root / "volumes" / ".mounts", self.publish
        )

    def built_snapshotters(self) -> list[OverlaySnapshotter | NativeSnapshotter]:
        """The snapshotters, if something built them (a cached property lives in __dict__)."""
        return list(self.__dict__.get("snapshotters", {}).values())

    def content(self, ns: str, lease: str | None) -> ContentStore:
        from supervisor.metadata.content import ContentStore

        return ContentStore(self.db, self.blobs, ns, lease, on_delete=self.gc.mark_dirty)

    def images(self, ns: str) -> ImageStore:
        from supervisor.metadata.images import ImageStore

        return ImageStore(self.db, ns)

    def leases(self, ns: str) -> LeaseStore:
        from supervisor.metadata.leases import LeaseStore

        return LeaseStore(self.db, ns)

    def snapshots(self, ns: str, lease: str | None, name: str) -> SnapshotStore:
        from supervisor.metadata.snapshots import SnapshotStore

        return SnapshotStore(self.db, self.snapshotters[name], name, ns, lease, self.gc.mark_dirty)


async def check_health_later(
    db: Database, events: Exchange, tasks: TaskManager, state: Path, subscription: Any
) -> HealthMonitor | None:
    """The containers' health checks, from GC_STARTUP_DELAY on: a restart's first answers do
    not wait for the monitor's modules, and the task events meanwhile wait in `subscription`
    (made before serving). A monitor that cannot start is logged; the daemon serves on."""
    await asyncio.sleep(GC_STARTUP_DELAY)
    from supervisor.health.monitor import HealthMonitor

    monitor = HealthMonitor(db, events, tasks, state)
    try:
        await monitor.start(subscription)
    except Exception:
        log.exception("health_checks_unavailable")
        return None
    return monitor


async def stop_health(starting: asyncio.Task[HealthMonitor | None]) -> None:
    """Stop the health checks, or their start if it has not happened yet."""
    starting.cancel()  # nothing if it is done
    await asyncio.wait({starting})
    if not starting.cancelled() and (monitor := starting.result()) is not None:
        await monitor.stop()


def start_tracing(config: Config) -> Tracing | None:
    """OpenTelemetry's spans (`supervisor.tracing`), imported only when configured."""
    if not config.tracing.endpoint:
        return None
    from supervisor.tracing import Settings, Tracing

    t = config.tracing
    return Tracing(Settings(t.endpoint, t.protocol, t.insecure, t.service_name, t.sampling_ratio))


def own_metrics(config: Config, tasks: TaskManager, root: Path) -> OwnMetrics | None:
    """The gRPC server's metrics and ctrd's own (`supervisor.metrics.daemon`), registered when
    /v1/metrics is served; prometheus_client is imported only then."""
    if not config.metrics.address:
        return None
    from supervisor.metrics.daemon import OwnMetrics

    return OwnMetrics(tasks.all, root, ("overlayfs", "native"), config.cri.namespace)


async def collect_later(parts: Parts, delay: float) -> None:
    """The collector's runs, from `delay` seconds on (see the module's doc). Stores that cannot
    be built (a root the daemon may not write, say) are logged, as each call to a service that
    needs them fails with the reason, and the daemon goes on serving the rest."""
    await asyncio.sleep(delay)
    try:
        collector = parts.gc
    except Exception:
        log.exception("gc_unavailable")
        return
    await collector.run()


async def prepare_firewall() -> None:
    """libnftables' one context, made before the tasks' files are opened: its socket must stay
    below FD_SETSIZE (`nft.prepare`); ~1 ms. Without libnftables, networks fail, not ctrd."""
    from supervisor.network import nft

    try:
        nft.prepare()
    except Exception:
        log.exception("nft_unavailable")


async def reconcile_networks(
    db: Database, manager: Callable[[], Any], has_task: Callable[[str, str], bool]
) -> None:
    """At start, before serving: the kernel made to match the stored networks (bridges, stale
    veths and pins, the nft table; `NetworkManager.reconcile`). Without networks nothing is
    loaded. A failure is logged and the daemon serves on: containers without networks work."""

    def any_network(conn: sqlite3.Connection) -> bool:
        return conn.execute("SELECT 1 FROM networks LIMIT 1").fetchone() is not None

    if not await db.read(any_network):
        return
    try:
        report = await manager().reconcile(has_task)
    except Exception:
        log.exception("network_reconcile_failed")
        return
    log.info(
        "network_reconciled",
        links_removed=list(report.links_removed),
        pins_removed=list(report.pins_removed),
        endpoints_released=list(report.endpoints_released),
    )


async def reconcile_volumes(parts: Parts, tasks: TaskManager) -> None:
    """At start, before serving, when the root has volumes: mounts made to match the tasks
    taken back, cut-off copy-ups and removals discarded (`VolumeManager.reconcile`). A failure
    is logged and the daemon serves on."""
    if not (parts.root / "volumes").is_dir():
        return
    try:
        await parts.volumes.reconcile([(t.namespace, t.id) for t in tasks.all()])
    except Exception:
        log.exception("volume_reconcile_failed")


@dataclass
class Daemon:
    config: Config
    lock: RootLock
    db: Database
    server: grpc.aio.Server
    gc_task: asyncio.Task[None]
    parts: Parts
    tasks: TaskManager
    events: Exchange
    networks: Any = None  # the cached NetworkManager factory (built at first need)
    health: asyncio.Task[HealthMonitor | None] | None = None  # the health checks, starting
    restarts: RestartMonitor | None = None  # the containers' restart policies
    tracing: Tracing | None = None  # OpenTelemetry, when [tracing] endpoint is set
    metrics: MetricsServer | None = None  # /v1/metrics, when [metrics] address is set
    own: OwnMetrics | None = None  # the gRPC server's metrics and ctrd's own, when served

    @classmethod
    async def start(cls, config: Config) -> Daemon:
        root, state, address = Path(config.root), Path(config.state), config.grpc.address
        for directory in (root, state, Path(address).parent):
            directory.mkdir(mode=0o711, parents=True, exist_ok=True)
        lock = RootLock(root)
        try:
            clear_stale_socket(address)
            db = await Database.open(root / "meta.db")
        except BaseException:
            lock.release()
            raise
        try:
            event_log = await EventLog.open(
                root / "events.db", config.events.retention, config.events.max_events
            )
        except BaseException:
            await db.close()
            lock.release()
            raise
        events = Exchange(event_log)
        parts = Parts(root, db, config.gc.interval, events.publish)
        tasks = TaskManager(
            state, address, events, config.runtime.binary,
            native_exec=config.runtime.native_exec,
        )  # fmt: skip
        logs = Logs(root / "logs", config.logs.max_size, config.logs.max_files)

        def containers(ns: str) -> ContainerStore:
            return ContainerStore(db, ns)

        @functools.cache
        def network_manager() -> Any:  # one, built at the first task that asks for a network
            from supervisor.network.manager import NetworkManager

            return NetworkManager(
                db, state, config.network.nft_table, watch=True, publish=events.publish
            )

        # The services a restart's first calls do not need, built at their first call.
        def namespaces_service() -> Any:
            from supervisor.metadata.namespaces import NamespaceStore
            from supervisor.services.namespaces import NamespacesService

            return NamespacesService(NamespaceStore(db), events)

        def content_service() -> Any:
            from supervisor.services.content import ContentService

            return ContentService(parts.content, events)

        def images_service() -> Any:
            from supervisor.services.images import ImagesService

            return ImagesService(parts.images, events, parts.gc)

        def leases_service() -> Any:
            from supervisor.services.leases import LeasesService

            return LeasesService(parts.leases, parts.gc)

        def containers_service() -> Any:
            from supervisor.services.containers import ContainersService

            return ContainersService(containers, events, parts.gc, tasks.exists, logs.remove)

        def snapshots_service() -> Any:
            from supervisor.services.snapshots import SnapshotsService

            return SnapshotsService(parts.snapshots, frozenset(parts.snapshotters), events)

        def diff_service() -> Any:
            from supervisor.services.diff import DiffService

            roots = [s.root for s in parts.snapshotters.values()]
            return DiffService(parts.content, parts.blobs, roots, root / "tmpmounts")

        def events_service() -> Any:
            from supervisor.services.events import EventsService

            return EventsService(events, tasks.recovered_events)

        def event_log_service() -> Any:
            from supervisor.services.eventlog import EventLogService

            return EventLogService(events)

        def pull_service() -> Any:
            from supervisor.services.pull import PullService

            return PullService(
                parts.content,
                parts.snapshots,
                frozenset(parts.snapshotters),
                parts.images,
                parts.leases,
                parts.blobs,
                events,
                parts.gc,
                config.registry,
            )

        def push_service() -> Any:
            from supervisor.services.push import PushService

            return PushService(parts.content, parts.images, config.registry)

        def health_service() -> Any:
            from supervisor.health.store import HealthStore
            from supervisor.services.health import HealthService

            return HealthService(HealthStore(db))

        def networks_service() -> Any:
            from supervisor.network.live import LiveNetworks
            from supervisor.network.store import SqliteNetworkStore
            from supervisor.services.networks import NetworksService

            async def remove(ns: str, ref: str) -> None:  # the record, the bridge, the rules
                await network_manager().remove_network(ns, ref)

            live = LiveNetworks(containers, network_manager, tasks.exists)
            return NetworksService(
                lambda ns: SqliteNetworkStore(db, ns),
                remove=remove,
                publish=events.publish,
                live=live,
                drivers=lambda: network_manager().drivers,
            )

        tasks_service = TasksService(
            tasks, containers, logs, network_manager, volumes=lambda: parts.volumes
        )

        async def snapshot_mounts(ns: str, snapshotter: str, key: str) -> Any:
            return await parts.snapshots(ns, None, snapshotter).mounts(key)

        restart_store = RestartStore(db)
        restarts = RestartMonitor(
            events, tasks, containers, restart_store, TaskLauncher(tasks_service, snapshot_mounts)
        )

        def restarts_service() -> Any:
            from supervisor.services.restarts import RestartsService

            return RestartsService(restart_store, restarts.restarting)

        def archive_service() -> Any:
            from supervisor.services.archive import ArchiveService

            async def snapshot_mounts(ns: str, snapshotter: str, key: str) -> Any:
                return await parts.snapshots(ns, None, snapshotter).mounts(key)

            return ArchiveService(
                containers, tasks, snapshot_mounts, root / "tmpmounts", root / "volumes"
            )

        def volumes_service() -> Any:
            from supervisor.services.volumes import VolumesService

            return VolumesService(lambda: parts.volumes)

        def cri_servicers() -> tuple[Any, Any]:
            """runtime.v1 (`supervisor.cri`): built at the first call to either service."""
            from supervisor.cri.build import CriDeps, builders
            from supervisor.cri.image_service import ImageService
            from supervisor.cri.runtime_service import CriParts, RuntimeService
            from supervisor.services.version import version

            pull = functools.cache(pull_service)
            images = ImageService(
                config.cri, config.registry, parts.images, parts.content,
                pull, events, lambda: parts.gc, root / "snapshots" / "overlayfs",
            )  # fmt: skip
            deps = CriDeps(
                config, root, state, db, events, tasks, tasks_service, containers, parts,
                pull, network_manager, lambda: images,
            )  # fmt: skip
            return RuntimeService(config.cri, version(), CriParts(builders(deps))), images

        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_MESSAGE),
                ("grpc.http2.lookahead_bytes", 8 << 20),
            ],
        )
        services: list[tuple[Any, Any]] = [
            (version_pb2_grpc.add_VersionServicer_to_server, VersionService()),
            # grpc.health.v1: dockerd waits for SERVING before it subscribes to events again.
            # (grpc-stubs 1.53 predates the package's asyncio servicer.)
            (health_pb2_grpc.add_HealthServicer_to_server, health.aio.HealthServicer()),  # type: ignore[attr-defined]
            (
                introspection_pb2_grpc.add_IntrospectionServicer_to_server,
                IntrospectionService(plugins(root, state), server_uuid(root)),
            ),
            (tasks_pb2_grpc.add_TasksServicer_to_server, tasks_service),
            (logs_pb2_grpc.add_LogsServicer_to_server, LogsService(logs, tasks.running)),
            (namespaces_pb2_grpc.add_NamespacesServicer_to_server, Deferred(namespaces_service)),
            (content_pb2_grpc.add_ContentServicer_to_server, Deferred(content_service)),
            (images_pb2_grpc.add_ImagesServicer_to_server, Deferred(images_service)),
            (leases_pb2_grpc.add_LeasesServicer_to_server, Deferred(leases_service)),
            (containers_pb2_grpc.add_ContainersServicer_to_server, Deferred(containers_service)),
            (snapshots_pb2_grpc.add_SnapshotsServicer_to_server, Deferred(snapshots_service)),
            (diff_pb2_grpc.add_DiffServicer_to_server, Deferred(diff_service)),
            (events_pb2_grpc.add_EventsServicer_to_server, Deferred(events_service)),
            (log_pb2_grpc.add_EventLogServicer_to_server, Deferred(event_log_service)),
            (pull_pb2_grpc.add_PullServicer_to_server, Deferred(pull_service)),
            (push_pb2_grpc.add_PushServicer_to_server, Deferred(push_service)),
            (networks_pb2_grpc.add_NetworksServicer_to_server, Deferred(networks_service)),
            (volumes_pb2_grpc.add_VolumesServicer_to_server, Deferred(volumes_service)),
            (archive_pb2_grpc.add_ArchiveServicer_to_server, Deferred(archive_service)),
            (ctrd_health_pb2_grpc.add_HealthServicer_to_server, Deferred(health_service)),
            (restarts_pb2_grpc.add_RestartsServicer_to_server, Deferred(restarts_service)),
        ]
        own = own_metrics(config, tasks, root)  # None unless [metrics] address is set
        tracing = start_tracing(config)  # None unless [tracing] endpoint is set
        taps = [t for t in (own.grpc if own is not None else None, tracing) if t is not None]
        registrar = Registrar(server, taps)
        for add, servicer in services:
            add(servicer, registrar)
        if config.cri.enabled:  # Kubernetes' CRI, imported at its first call
            from supervisor.cri.serve import LazyCri

            registrar.add_generic_rpc_handlers([LazyCri(cri_servicers)])
        try:
            old_umask = os.umask(0o117)  # the socket is born 0660, never briefly wider
            try:
                server.add_insecure_port(f"unix:{address}")
            finally:
                os.umask(old_umask)
            os.chmod(address, 0o660)
            os.chown(address, config.grpc.uid, config.grpc.gid)
            await prepare_firewall()
            await asyncio.to_thread(tmpmounts.clear, root / "tmpmounts")  # a crash's leftovers
            await tasks.start()
            await tasks.load()
            await reconcile_networks(db, network_manager, tasks.exists)
            await reconcile_volumes(parts, tasks)
            health_events = follow_health(events)  # task events for the health checks
            restarts.follow()  # exits from now on; those the load recovered are boot's
            await server.start()
            tasks.serving()
            restarts.boot()  # containers to start again (after a reboot too)
        except BaseException:
            await restarts.stop()
            await server.stop(None)
            await db.close()
            await event_log.close()
            if tracing is not None:
                await asyncio.to_thread(tracing.close)
            if own is not None:
                own.unregister()
            lock.release()
            raise
        gc_task = asyncio.create_task(collect_later(parts, GC_STARTUP_DELAY), name="gc")
        checks = asyncio.create_task(
            check_health_later(db, events, tasks, state, health_events), name="health"
        )
        log.info("ctrd_started", address=address, root=str(root), state=str(state), pid=os.getpid())
        daemon = cls(
            config, lock, db, server, gc_task, parts, tasks, events, network_manager, checks,
            restarts, tracing,
        )  # fmt: skip
        daemon.own = own
        if config.metrics.address:  # /v1/metrics: aiohttp and prometheus_client if asked
            from supervisor.metrics import server as metrics_server

            try:
                daemon.metrics = await metrics_server.start(*config.metrics.listen(), tasks.all)
            except BaseException:
                await daemon.stop()
                raise
        return daemon

    async def stop(self) -> None:
        log.info("ctrd_stopping")
        if self.metrics is not None:
            await self.metrics.stop()
        if self.own is not None:
            self.own.unregister()
        if self.restarts is not None:
            await self.restarts.stop()  # no restart once the daemon stops (docker's rule)
        if self.health is not None:
            await stop_health(self.health)  # before the shims are let go: probes deleted
        await self.tasks.stop()  # first: a Wait in flight fails with UNAVAILABLE
        await self.server.stop(grace=1.0)
        self.gc_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.gc_task
        for snapshotter in self.parts.built_snapshotters():
            await snapshotter.close()
        if self.networks is not None and self.networks.cache_info().currsize:
            await self.networks().close()
        if "volumes" in self.parts.__dict__:  # built: unmount what no task uses
            await self.parts.volumes.close()
        await self.db.close()
        if self.events.log is not None:
            await self.events.log.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.config.grpc.address)
        if self.tracing is not None:  # the last spans sent (blocking: the exporter's timeout)
            await asyncio.to_thread(self.tracing.close)
        self.lock.release()
        log.info("ctrd_stopped")
