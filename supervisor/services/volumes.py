"""ctrd.services.volumes.v1.Volumes over the volume manager: docker's `volume` API.

A thin translation: each call turns its request into `supervisor.volumes.manager` terms, calls
the daemon's one `VolumeManager` for the request's namespace and turns the answer back. The
manager keeps the rules (docker's names, options, filters and words; no removal of a volume in
use, force or not).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import empty_pb2

from supervisor.api.ctrd.services.volumes.v1 import volumes_pb2 as pb
from supervisor.api.ctrd.services.volumes.v1 import volumes_pb2_grpc as pb_grpc
from supervisor.services import rpc
from supervisor.services.convert import timestamp
from supervisor.volumes.manager import LIST_FILTERS, VolumeManager, list_matcher, parse_filters
from supervisor.volumes.store import Volume

Context = grpc.aio.ServicerContext[Any, Any]


def volume_to_pb(
    manager: VolumeManager, ns: str, v: Volume, users: list[str], size: int = -1
) -> pb.Volume:
    return pb.Volume(
        name=v.name,
        driver=v.driver,
        mountpoint=str(manager.paths(ns, v.name).data),
        created_at=timestamp(v.created_at),
        labels=dict(v.labels),
        options=dict(v.options),
        scope="local",
        usage=pb.UsageData(size=size, ref_count=len(users)),
        containers=sorted(users),
        mounted=manager.is_mounted(ns, v.name),
    )


class VolumesService(pb_grpc.VolumesServicer):
    def __init__(self, manager: Callable[[], VolumeManager]) -> None:
        """`manager()`: the daemon's one manager (built at the first call that needs it)."""
        self._manager = manager

    async def Create(self, request: pb.CreateVolumeRequest, context: Context) -> Any:
        ns = rpc.namespace(context)
        manager = self._manager()
        volume = await manager.create(
            ns, request.name, request.driver, dict(request.driver_opts), dict(request.labels)
        )
        users = (await manager.users(ns)).get(volume.name, [])
        return pb.CreateVolumeResponse(volume=volume_to_pb(manager, ns, volume, users))

    async def Get(self, request: pb.GetVolumeRequest, context: Context) -> Any:
        ns = rpc.namespace(context)
        manager = self._manager()
        volume = await manager.get(ns, request.name)
        users = (await manager.users(ns)).get(volume.name, [])
        return pb.GetVolumeResponse(volume=volume_to_pb(manager, ns, volume, users))

    async def List(self, request: pb.ListVolumesRequest, context: Context) -> Any:
        ns = rpc.namespace(context)
        matches = list_matcher(parse_filters(request.filters, LIST_FILTERS))
        manager = self._manager()
        users = await manager.users(ns)
        shown = []
        for volume in await manager.list(ns):
            used = users.get(volume.name, [])
            if not matches(volume, bool(used)):
                continue
            size = await manager.size(ns, volume) if request.with_usage else -1
            shown.append(volume_to_pb(manager, ns, volume, used, size))
        return pb.ListVolumesResponse(volumes=shown)

    async def Remove(self, request: pb.RemoveVolumeRequest, context: Context) -> Any:
        await self._manager().remove(rpc.namespace(context), request.name, request.force)
        return empty_pb2.Empty()

    async def Prune(self, request: pb.PruneVolumesRequest, context: Context) -> Any:
        removed, reclaimed = await self._manager().prune(
            rpc.namespace(context), list(request.filters)
        )
        return pb.PruneVolumesResponse(volumes_deleted=removed, space_reclaimed=reclaimed)
