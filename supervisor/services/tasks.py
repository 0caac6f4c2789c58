"""containerd.services.tasks.v1.Tasks, until tasks exist: there are none.

Shims and tasks land with the tasks issue. Until then this daemon runs no task, and says so
truthfully where clients ask: Get is NotFound (ctr asks before deleting a container and treats
NotFound as "no task") and List is empty; every other method answers Unimplemented.
"""

from __future__ import annotations

from typing import Any

import grpc

from supervisor.api.containerd.services.tasks.v1 import tasks_pb2 as pb
from supervisor.api.containerd.services.tasks.v1 import tasks_pb2_grpc as pb_grpc
from supervisor.errors import NotFound
from supervisor.services import rpc

Context = grpc.aio.ServicerContext[Any, Any]


class TasksService(pb_grpc.TasksServicer):
    async def Get(self, request: pb.GetRequest, context: Context) -> Any:
        rpc.namespace(context)
        raise NotFound(f'no running task found: task "{request.container_id}"')

    async def List(self, request: pb.ListTasksRequest, context: Context) -> Any:
        rpc.namespace(context)
        return pb.ListTasksResponse()
