"""containerd.services.leases.v1.Leases over the namespaced lease store.

A Create without an id gets a random one, as containerd's service gives it (`ctr leases
create` sends none unless told one).
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import empty_pb2

from supervisor.api.containerd.services.leases.v1 import leases_pb2 as pb
from supervisor.api.containerd.services.leases.v1 import leases_pb2_grpc as pb_grpc
from supervisor.metadata.gc import Collector
from supervisor.metadata.leases import Lease, LeaseStore, Resource
from supervisor.services import rpc
from supervisor.services.convert import timestamp

Context = grpc.aio.ServicerContext[Any, Any]


def random_id(now_ns: int) -> str:
    """containerd's random lease id: the clock's nanoseconds within its second, then three
    random bytes in URL-safe base64 (`586133961-QIg-`)."""
    return f"{now_ns % 1_000_000_000}-{base64.urlsafe_b64encode(os.urandom(3)).decode()}"


def lease_to_pb(lease: Lease) -> pb.Lease:
    return pb.Lease(id=lease.id, created_at=timestamp(lease.created_at), labels=dict(lease.labels))


class LeasesService(pb_grpc.LeasesServicer):
    def __init__(self, store: Callable[[str], LeaseStore], gc: Collector) -> None:
        self._store = store
        self._gc = gc

    def _for(self, context: Context) -> LeaseStore:
        return self._store(rpc.namespace(context))

    async def Create(self, request: pb.CreateRequest, context: Context) -> Any:
        lease_id = request.id or random_id(time.time_ns())
        lease = await self._for(context).create(lease_id, dict(request.labels))
        return pb.CreateResponse(lease=lease_to_pb(lease))

    async def Delete(self, request: pb.DeleteRequest, context: Context) -> Any:
        await self._for(context).delete(request.id)
        if request.sync:
            await self._gc.collect()
        else:
            self._gc.mark_dirty()
        return empty_pb2.Empty()

    async def List(self, request: pb.ListRequest, context: Context) -> Any:
        leases = await self._for(context).list(list(request.filters))
        return pb.ListResponse(leases=[lease_to_pb(lease) for lease in leases])

    async def AddResource(self, request: pb.AddResourceRequest, context: Context) -> Any:
        resource = Resource(request.resource.id, request.resource.type)
        await self._for(context).add_resource(request.id, resource)
        return empty_pb2.Empty()

    async def DeleteResource(self, request: pb.DeleteResourceRequest, context: Context) -> Any:
        resource = Resource(request.resource.id, request.resource.type)
        await self._for(context).delete_resource(request.id, resource)
        self._gc.mark_dirty()
        return empty_pb2.Empty()

    async def ListResources(self, request: pb.ListResourcesRequest, context: Context) -> Any:
        resources = await self._for(context).list_resources(request.id)
        return pb.ListResourcesResponse(
            resources=[pb.Resource(id=r.id, type=r.type) for r in resources]
        )
