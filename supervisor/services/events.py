"""containerd.services.events.v1.Events: publish into the exchange, and subscribe to it.

Subscribe delivers events of every namespace (the namespace header is ignored, as containerd
does); filters select by `namespace`, `topic` and `event.<field>`. A new subscription first
gets the backlog it matches (the events a restart recovered, see `runtime.manager`), then the
live events published since it was made: nothing in between is missed or repeated.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc
import structlog
from google.protobuf import empty_pb2

from supervisor import filters, identifiers
from supervisor.api.containerd.services.events.v1 import events_pb2 as pb
from supervisor.api.containerd.services.events.v1 import events_pb2_grpc as pb_grpc
from supervisor.errors import InvalidArgument, Unavailable
from supervisor.events import QUEUE_LIMIT, Exchange, envelope_adaptor, validate_topic
from supervisor.services import rpc

log = structlog.get_logger("ctrd.events")

Context = grpc.aio.ServicerContext[Any, Any]


class EventsService(pb_grpc.EventsServicer):
    def __init__(
        self,
        exchange: Exchange,
        backlog: Callable[[], Sequence[pb.Envelope]] = tuple,
    ) -> None:
        self._exchange = exchange
        self._backlog = backlog

    async def Publish(self, request: pb.PublishRequest, context: Context) -> Any:
        if not request.HasField("event"):
            raise InvalidArgument(f'event for topic "{request.topic}" must be set')
        await self._exchange.publish_packed(
            rpc.namespace(context), validate_topic(request.topic), request.event
        )
        return empty_pb2.Empty()

    async def Forward(self, request: pb.ForwardRequest, context: Context) -> Any:
        envelope = request.envelope
        identifiers.validate(envelope.namespace)
        validate_topic(envelope.topic)
        await self._exchange.deliver(envelope)
        return empty_pb2.Empty()

    async def Subscribe(
        self, request: pb.SubscribeRequest, context: Context
    ) -> AsyncIterator[pb.Envelope]:
        selected = filters.parse_all(request.filters)
        # Subscribe and take the backlog at once (no await between): each event is in one.
        subscription = self._exchange.subscription(selected)
        backlog = [e for e in self._backlog() if selected.matches(envelope_adaptor(e))]
        try:
            # The headers tell the client it is subscribed: what is published from now on
            # reaches it (without them, it could only guess when that is).
            await context.send_initial_metadata(())
            log.debug("events_subscribed", filters=list(request.filters))
            for envelope in backlog:
                yield envelope
            while (item := await subscription.queue.get()) is not None:
                yield item.envelope
            raise Unavailable(f"subscriber fell {QUEUE_LIMIT} events behind")
        finally:
            self._exchange.unsubscribe(subscription)
