"""A live daemon's snapshotter, over gRPC: `Snapshotter` as a client sees it.

`RemoteSnapshotter` speaks containerd.services.snapshots.v1.Snapshots for one snapshotter
name, bound at construction to a namespace and, optionally, a lease. Failed calls raise the
typed error of their status code.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import field_mask_pb2

from snapshotter.protocol import Info, Kind, Mount, Usage
from supervisor.api.containerd.services.snapshots.v1 import snapshots_pb2 as pb
from supervisor.api.containerd.services.snapshots.v1 import snapshots_pb2_grpc as pb_grpc
from supervisor.api.containerd.types import mount_pb2
from supervisor.client.rpc import headers, typed_errors

if TYPE_CHECKING:
    from snapshotter.protocol import Snapshotter


def info_from_pb(info: pb.Info) -> Info:
    return Info(
        name=info.name,
        kind=Kind(info.kind),
        parent=info.parent,
        labels=dict(info.labels),
        created_at=info.created_at.ToNanoseconds(),
        updated_at=info.updated_at.ToNanoseconds(),
    )


def mounts_from_pb(mounts: Sequence[mount_pb2.Mount]) -> builtins.list[Mount]:
    return [Mount(m.type, m.source, tuple(m.options), m.target) for m in mounts]


class RemoteSnapshotter:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        namespace: str,
        snapshotter: str = "overlayfs",
        lease: str | None = None,
    ) -> None:
        self.snapshotter = snapshotter
        self._stub: Any = pb_grpc.SnapshotsStub(channel)  # generated, untyped
        self._metadata = headers(namespace, lease)

    async def _call(self, method: str, request: Any) -> Any:
        with typed_errors():
            return await getattr(self._stub, method)(request, metadata=self._metadata)

    async def stat(self, key: str) -> Info:
        request = pb.StatSnapshotRequest(snapshotter=self.snapshotter, key=key)
        return info_from_pb((await self._call("Stat", request)).info)

    async def update(self, info: Info, paths: Sequence[str] = ()) -> Info:
        request = pb.UpdateSnapshotRequest(
            snapshotter=self.snapshotter,
            info=pb.Info(name=info.name, kind=int(info.kind), labels=dict(info.labels)),  # type: ignore[arg-type]
            update_mask=field_mask_pb2.FieldMask(paths=list(paths)),
        )
        return info_from_pb((await self._call("Update", request)).info)

    async def usage(self, key: str) -> Usage:
        answer = await self._call("Usage", pb.UsageRequest(snapshotter=self.snapshotter, key=key))
        return Usage(answer.size, answer.inodes)

    async def mounts(self, key: str) -> builtins.list[Mount]:
        request = pb.MountsRequest(snapshotter=self.snapshotter, key=key)
        return mounts_from_pb((await self._call("Mounts", request)).mounts)

    async def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> builtins.list[Mount]:
        request = pb.PrepareSnapshotRequest(
            snapshotter=self.snapshotter, key=key, parent=parent, labels=dict(labels or {})
        )
        return mounts_from_pb((await self._call("Prepare", request)).mounts)

    async def view(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> builtins.list[Mount]:
        request = pb.ViewSnapshotRequest(
            snapshotter=self.snapshotter, key=key, parent=parent, labels=dict(labels or {})
        )
        return mounts_from_pb((await self._call("View", request)).mounts)

    async def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        request = pb.CommitSnapshotRequest(
            snapshotter=self.snapshotter, name=name, key=key, labels=dict(labels or {})
        )
        await self._call("Commit", request)

    async def remove(self, key: str) -> None:
        await self._call("Remove", pb.RemoveSnapshotRequest(snapshotter=self.snapshotter, key=key))

    async def list(self, filters: Sequence[str] = ()) -> builtins.list[Info]:
        call = self._stub.List(
            pb.ListSnapshotsRequest(snapshotter=self.snapshotter, filters=list(filters)),
            metadata=self._metadata,
        )
        out: builtins.list[Info] = []
        with typed_errors():
            async for response in call:
                out.extend(info_from_pb(i) for i in response.info)
        return out

    async def cleanup(self) -> None:
        await self._call("Cleanup", pb.CleanupRequest(snapshotter=self.snapshotter))


if TYPE_CHECKING:
    _check: Snapshotter = RemoteSnapshotter(grpc.aio.insecure_channel(""), "ns")
