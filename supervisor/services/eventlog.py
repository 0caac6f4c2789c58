"""ctrd.services.events.v1.EventLog: replay the durable event log, then follow it live.

The subscription to live events is made before the log is read, and live events the replay
already covered (by sequence number) are skipped, so a client sees every event once: no gap
between the replay and the live part, and no repeat.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from supervisor import filters
from supervisor.api.ctrd.services.events.v1 import log_pb2 as pb
from supervisor.api.ctrd.services.events.v1 import log_pb2_grpc as pb_grpc
from supervisor.errors import Unavailable
from supervisor.eventlog import Logged
from supervisor.events import Exchange, envelope_adaptor

Context = grpc.aio.ServicerContext[Any, Any]
BATCH = 1000


class EventLogService(pb_grpc.EventLogServicer):
    def __init__(self, exchange: Exchange) -> None:
        self._exchange = exchange

    async def Replay(
        self, request: pb.ReplayRequest, context: Context
    ) -> AsyncIterator[pb.LoggedEvent]:
        log = self._exchange.log
        if log is None:
            raise Unavailable("this daemon keeps no event log")
        selected = filters.parse_all(request.filters)
        since = request.since.ToNanoseconds() if request.HasField("since") else 0
        until = request.until.ToNanoseconds() if request.HasField("until") else 0
        # Docker's semantics: an `until` in the future follows live events until then.
        follow = request.follow and (not until or until > time.time_ns())
        live = self._exchange.subscription(selected) if follow else None
        try:
            after = request.after
            while True:
                batch = await log.read(after, since, until, BATCH)
                for item in batch:
                    after = item.seq
                    if selected.matches(envelope_adaptor(item.envelope)):
                        yield pb.LoggedEvent(seq=item.seq, envelope=item.envelope)
                if len(batch) < BATCH:
                    break
            if live is None:
                return
            while True:
                left = (until - time.time_ns()) / 1e9 if until else None
                try:
                    got: Logged | None = await asyncio.wait_for(live.queue.get(), left)
                except TimeoutError:
                    return  # `until` has come
                if got is None:
                    raise Unavailable("the client fell too far behind the live events")
                if got.seq > after:
                    after = got.seq
                    yield pb.LoggedEvent(seq=got.seq, envelope=got.envelope)
        finally:
            if live is not None:
                self._exchange.unsubscribe(live)
