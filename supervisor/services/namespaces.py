"""containerd.services.namespaces.v1.Namespaces over the namespace store.

Get answers for any valid name, with no labels for a namespace that holds nothing yet, as
containerd does: its clients ask for a namespace's labels before they write anything in it
(dockerd refuses to start when `Get` of `moby` fails).
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import empty_pb2

from supervisor.api.containerd.events import namespace_pb2 as events_pb2
from supervisor.api.containerd.services.namespaces.v1 import namespaces_pb2 as pb
from supervisor.api.containerd.services.namespaces.v1 import namespaces_pb2_grpc as pb_grpc
from supervisor.errors import NotFound
from supervisor.events import Exchange
from supervisor.metadata.namespaces import Namespace, NamespaceStore

Context = grpc.aio.ServicerContext[Any, Any]


def _to_pb(ns: Namespace) -> pb.Namespace:
    return pb.Namespace(name=ns.name, labels=dict(ns.labels))


class NamespacesService(pb_grpc.NamespacesServicer):
    def __init__(self, store: NamespaceStore, events: Exchange) -> None:
        self._store = store
        self._events = events

    async def Get(self, request: pb.GetNamespaceRequest, context: Context) -> Any:
        try:
            ns = await self._store.get(request.name)
        except NotFound:  # not created yet: a namespace with no labels (the name is valid)
            ns = Namespace(request.name)
        return pb.GetNamespaceResponse(namespace=_to_pb(ns))

    async def List(self, request: pb.ListNamespacesRequest, context: Context) -> Any:
        return pb.ListNamespacesResponse(namespaces=[_to_pb(ns) for ns in await self._store.list()])

    async def Create(self, request: pb.CreateNamespaceRequest, context: Context) -> Any:
        ns = await self._store.create(request.namespace.name, request.namespace.labels)
        await self._events.publish(
            ns.name,
            "/namespaces/create",
            events_pb2.NamespaceCreate(name=ns.name, labels=dict(ns.labels)),
        )
        return pb.CreateNamespaceResponse(namespace=_to_pb(ns))

    async def Update(self, request: pb.UpdateNamespaceRequest, context: Context) -> Any:
        ns = await self._store.update(
            request.namespace.name, request.namespace.labels, list(request.update_mask.paths)
        )
        await self._events.publish(
            ns.name,
            "/namespaces/update",
            events_pb2.NamespaceUpdate(name=ns.name, labels=dict(ns.labels)),
        )
        return pb.UpdateNamespaceResponse(namespace=_to_pb(ns))

    async def Delete(self, request: pb.DeleteNamespaceRequest, context: Context) -> Any:
        await self._store.delete(request.name)
        await self._events.publish(
            request.name, "/namespaces/delete", events_pb2.NamespaceDelete(name=request.name)
        )
        return empty_pb2.Empty()
