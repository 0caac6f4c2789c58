"""ctrd.services.restarts.v1.Restarts: what the daemon keeps of its containers' restarts
(`supervisor.restart`): the count, the last start and exit, a pending restart."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from supervisor.api.ctrd.services.restarts.v1 import restarts_pb2 as pb
from supervisor.api.ctrd.services.restarts.v1 import restarts_pb2_grpc as pb_grpc
from supervisor.restart.store import Record, RestartStore
from supervisor.services import rpc

Context = grpc.aio.ServicerContext[Any, Any]


def state(cid: str, record: Record, restarting: bool) -> pb.RestartState:
    out = pb.RestartState(
        container_id=cid,
        restart_count=record.count,
        restarting=restarting,
        exited=bool(record.exited_at),
        exit_status=record.exit_status,
    )
    if record.started_at:
        out.started_at.FromNanoseconds(record.started_at)
    if record.exited_at:
        out.exited_at.FromNanoseconds(record.exited_at)
    if restarting and record.restart_at:
        out.restart_at.FromNanoseconds(record.restart_at)
    return out


class RestartsService(pb_grpc.RestartsServicer):
    def __init__(self, store: RestartStore, restarting: Callable[[str, str], bool]) -> None:
        self._store = store
        self._restarting = restarting  # (namespace, id): whether a restart is under way

    async def List(self, request: pb.ListRestartsRequest, context: Context) -> Any:
        ns = rpc.namespace(context)
        if request.container_id:
            record = await self._store.get(ns, request.container_id)
            records = {} if record is None else {request.container_id: record}
        else:
            records = await self._store.list(ns)
        return pb.ListRestartsResponse(
            restarts=[
                state(cid, record, self._restarting(ns, cid))
                for cid, record in sorted(records.items())
            ]
        )
