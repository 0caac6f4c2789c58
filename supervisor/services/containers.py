"""containerd.services.containers.v1.Containers over the namespaced container store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2, empty_pb2

from supervisor.api.containerd.events import container_pb2 as events_pb2
from supervisor.api.containerd.services.containers.v1 import containers_pb2 as pb
from supervisor.api.containerd.services.containers.v1 import containers_pb2_grpc as pb_grpc
from supervisor.errors import FailedPrecondition
from supervisor.events import Exchange
from supervisor.metadata.containers import Container, ContainerStore, Opaque
from supervisor.metadata.gc import Collector
from supervisor.services import rpc
from supervisor.services.convert import timestamp

Context = grpc.aio.ServicerContext[Any, Any]


def _opaque(value: any_pb2.Any) -> Opaque:
    return (value.type_url, value.value)


def _any(value: Opaque | None) -> any_pb2.Any | None:
    return None if value is None else any_pb2.Any(type_url=value[0], value=value[1])


def container_from_pb(c: pb.Container) -> Container:
    return Container(
        id=c.id,
        runtime_name=c.runtime.name,
        spec=_opaque(c.spec) if c.HasField("spec") else None,
        runtime_options=_opaque(c.runtime.options) if c.runtime.HasField("options") else None,
        labels=dict(c.labels),
        image=c.image,
        snapshotter=c.snapshotter,
        snapshot_key=c.snapshot_key,
        extensions={name: _opaque(value) for name, value in c.extensions.items()},
    )


def container_to_pb(c: Container) -> pb.Container:
    return pb.Container(
        id=c.id,
        labels=dict(c.labels),
        image=c.image,
        runtime=pb.Container.Runtime(name=c.runtime_name, options=_any(c.runtime_options)),
        spec=_any(c.spec),
        snapshotter=c.snapshotter,
        snapshot_key=c.snapshot_key,
        created_at=timestamp(c.created_at),
        updated_at=timestamp(c.updated_at),
        extensions={
            name: any_pb2.Any(type_url=value[0], value=value[1])
            for name, value in c.extensions.items()
        },
    )


class ContainersService(pb_grpc.ContainersServicer):
    def __init__(
        self,
        store: Callable[[str], ContainerStore],
        events: Exchange,
        gc: Collector,
        has_task: Callable[[str, str], bool] = lambda ns, cid: False,
        deleted: Callable[[str, str], None] = lambda ns, cid: None,
    ) -> None:
        self._store = store
        self._events = events
        self._gc = gc
        self._has_task = has_task
        self._deleted = deleted  # what else goes with a container (its logs)

    async def Get(self, request: pb.GetContainerRequest, context: Context) -> Any:
        container = await self._store(rpc.namespace(context)).get(request.id)
        return pb.GetContainerResponse(container=container_to_pb(container))

    async def List(self, request: pb.ListContainersRequest, context: Context) -> Any:
        containers = await self._store(rpc.namespace(context)).list(list(request.filters))
        return pb.ListContainersResponse(containers=[container_to_pb(c) for c in containers])

    async def ListStream(
        self, request: pb.ListContainersRequest, context: Context
    ) -> AsyncIterator[pb.ListContainerMessage]:
        for c in await self._store(rpc.namespace(context)).list(list(request.filters)):
            yield pb.ListContainerMessage(container=container_to_pb(c))

    async def Create(self, request: pb.CreateContainerRequest, context: Context) -> Any:
        ns = rpc.namespace(context)
        c = await self._store(ns).create(container_from_pb(request.container))
        runtime = events_pb2.ContainerCreate.Runtime(
            name=c.runtime_name, options=_any(c.runtime_options)
        )
        await self._events.publish(
            ns,
            "/containers/create",
            events_pb2.ContainerCreate(id=c.id, image=c.image, runtime=runtime),
        )
        return pb.CreateContainerResponse(container=container_to_pb(c))

    async def Update(self, request: pb.UpdateContainerRequest, context: Context) -> Any:
        ns = rpc.namespace(context)
        c = await self._store(ns).update(
            container_from_pb(request.container), list(request.update_mask.paths)
        )
        await self._events.publish(
            ns,
            "/containers/update",
            events_pb2.ContainerUpdate(
                id=c.id, image=c.image, labels=dict(c.labels), snapshot_key=c.snapshot_key
            ),
        )
        return pb.UpdateContainerResponse(container=container_to_pb(c))

    async def Delete(self, request: pb.DeleteContainerRequest, context: Context) -> Any:
        ns = rpc.namespace(context)
        if self._has_task(ns, request.id):
            raise FailedPrecondition(f'container "{request.id}" has a task: delete the task first')
        await self._store(ns).delete(request.id)
        await asyncio.to_thread(self._deleted, ns, request.id)
        self._gc.mark_dirty()
        await self._events.publish(
            ns, "/containers/delete", events_pb2.ContainerDelete(id=request.id)
        )
        return empty_pb2.Empty()
