"""ctrd.services.health.v1.Health: containers' health as the daemon keeps it
(`supervisor.health`), for `ctrctl ps` and `inspect`."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from supervisor import errors
from supervisor.api.ctrd.services.health.v1 import health_pb2 as pb
from supervisor.api.ctrd.services.health.v1 import health_pb2_grpc as pb_grpc
from supervisor.health.state import Health
from supervisor.health.store import HealthStore
from supervisor.services import rpc

Context = grpc.aio.ServicerContext[Any, Any]


def _timestamp(ns: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(ns)
    return ts


def to_message(cid: str, health: Health) -> pb.ContainerHealth:
    return pb.ContainerHealth(
        container_id=cid,
        status=health.status,
        failing_streak=health.failing_streak,
        log=[
            pb.Result(
                start=_timestamp(r.start),
                end=_timestamp(r.end),
                exit_code=r.exit_code,
                output=r.output,
            )
            for r in health.log
        ],
        started_at=_timestamp(health.started_at),
    )


class HealthService(pb_grpc.HealthServicer):
    def __init__(self, store: HealthStore) -> None:
        self._store = store

    async def Get(self, request: pb.GetHealthRequest, context: Context) -> Any:
        ns = rpc.namespace(context)
        health = await self._store.get((ns, request.container_id))
        if health is None:
            raise errors.NotFound(f"health of container {request.container_id}")
        return pb.GetHealthResponse(health=to_message(request.container_id, health))

    async def List(self, request: pb.ListHealthRequest, context: Context) -> Any:
        ns = rpc.namespace(context)
        found = await self._store.list(ns)
        return pb.ListHealthResponse(health=[to_message(c, h) for c, h in found.items()])
