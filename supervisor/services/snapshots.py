"""containerd.services.snapshots.v1.Snapshots over the namespaced snapshot stores."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import empty_pb2

from snapshotter.protocol import Info, Kind, Mount
from supervisor.api.containerd.events import snapshot_pb2 as events_pb2
from supervisor.api.containerd.services.snapshots.v1 import snapshots_pb2 as pb
from supervisor.api.containerd.services.snapshots.v1 import snapshots_pb2_grpc as pb_grpc
from supervisor.api.containerd.types import mount_pb2
from supervisor.errors import CtrdError, InvalidArgument, Unknown
from supervisor.events import Exchange
from supervisor.metadata.snapshots import SnapshotStore
from supervisor.services import rpc
from supervisor.services.convert import timestamp

Context = grpc.aio.ServicerContext[Any, Any]
StoreFactory = Callable[[str, str | None, str], SnapshotStore]  # (ns, lease, snapshotter)
LIST_BATCH = 100


def mount_to_pb(m: Mount) -> mount_pb2.Mount:
    return mount_pb2.Mount(type=m.type, source=m.source, target=m.target, options=m.options)


def mount_from_pb(m: mount_pb2.Mount) -> Mount:
    return Mount(m.type, m.source, tuple(m.options), m.target)


def info_to_pb(info: Info) -> pb.Info:
    return pb.Info(
        name=info.name,
        parent=info.parent,
        kind=int(info.kind),  # type: ignore[arg-type]
        created_at=timestamp(info.created_at),
        updated_at=timestamp(info.updated_at),
        labels=dict(info.labels),
    )


class SnapshotsService(pb_grpc.SnapshotsServicer):
    def __init__(self, store: StoreFactory, snapshotters: frozenset[str], events: Exchange) -> None:
        self._store = store
        self._snapshotters = snapshotters
        self._events = events

    def _for_snapshotter(self, snapshotter: str) -> Callable[[str, str | None], SnapshotStore]:
        if not snapshotter:
            raise InvalidArgument("snapshotter argument missing")
        if snapshotter not in self._snapshotters:
            raise InvalidArgument(f"snapshotter not loaded: {snapshotter}")
        return lambda ns, lease: self._store(ns, lease, snapshotter)

    def _for(self, snapshotter: str, context: Context) -> SnapshotStore:
        return self._for_snapshotter(snapshotter)(rpc.namespace(context), rpc.lease(context))

    async def Prepare(self, request: pb.PrepareSnapshotRequest, context: Context) -> Any:
        store = self._for(request.snapshotter, context)
        mounts = await store.prepare(request.key, request.parent, dict(request.labels))
        await self._events.publish(
            store.ns,
            "/snapshot/prepare",
            events_pb2.SnapshotPrepare(key=request.key, parent=request.parent),
        )
        return pb.PrepareSnapshotResponse(mounts=[mount_to_pb(m) for m in mounts])

    async def View(self, request: pb.ViewSnapshotRequest, context: Context) -> Any:
        store = self._for(request.snapshotter, context)
        mounts = await store.view(request.key, request.parent, dict(request.labels))
        return pb.ViewSnapshotResponse(mounts=[mount_to_pb(m) for m in mounts])

    async def Mounts(self, request: pb.MountsRequest, context: Context) -> Any:
        mounts = await self._for(request.snapshotter, context).mounts(request.key)
        return pb.MountsResponse(mounts=[mount_to_pb(m) for m in mounts])

    async def Commit(self, request: pb.CommitSnapshotRequest, context: Context) -> Any:
        store = self._for(request.snapshotter, context)
        await store.commit(request.name, request.key, dict(request.labels))
        await self._events.publish(
            store.ns,
            "/snapshot/commit",
            events_pb2.SnapshotCommit(key=request.key, name=request.name),
        )
        return empty_pb2.Empty()

    async def Remove(self, request: pb.RemoveSnapshotRequest, context: Context) -> Any:
        store = self._for(request.snapshotter, context)
        await store.remove(request.key)
        await self._events.publish(
            store.ns, "/snapshot/remove", events_pb2.SnapshotRemove(key=request.key)
        )
        return empty_pb2.Empty()

    async def Stat(self, request: pb.StatSnapshotRequest, context: Context) -> Any:
        info = await self._for(request.snapshotter, context).stat(request.key)
        return pb.StatSnapshotResponse(info=info_to_pb(info))

    async def Update(self, request: pb.UpdateSnapshotRequest, context: Context) -> Any:
        store = self._for(request.snapshotter, context)
        info = Info(request.info.name, Kind(request.info.kind), labels=dict(request.info.labels))
        updated = await store.update(info, list(request.update_mask.paths))
        return pb.UpdateSnapshotResponse(info=info_to_pb(updated))

    async def List(
        self, request: pb.ListSnapshotsRequest, context: Context
    ) -> AsyncIterator[pb.ListSnapshotsResponse]:
        store = self._for_snapshotter(request.snapshotter)
        try:
            infos = await store(rpc.namespace(context), rpc.lease(context)).list(
                list(request.filters)
            )
        except CtrdError as e:
            # containerd's List hands its store's error back unconverted: UNKNOWN, words whole.
            raise Unknown(str(e), plain=True) from None
        for start in range(0, len(infos), LIST_BATCH):
            yield pb.ListSnapshotsResponse(
                info=[info_to_pb(i) for i in infos[start : start + LIST_BATCH]]
            )

    async def Usage(self, request: pb.UsageRequest, context: Context) -> Any:
        usage = await self._for(request.snapshotter, context).usage(request.key)
        return pb.UsageResponse(size=usage.size, inodes=usage.inodes)

    async def Cleanup(self, request: pb.CleanupRequest, context: Context) -> Any:
        await self._for(request.snapshotter, context).cleanup()
        return empty_pb2.Empty()
