"""The in-process event exchange: publish once, deliver to every subscriber that matches.

Events travel as containerd's `Envelope` (timestamp, namespace, topic, event as `Any`), with the
event's type URL the bare message name (`containerd.events.TaskExit`): dockerd and ctr resolve
it by that exact name. A subscriber gets its own bounded queue; one that cannot keep up is
dropped with an error instead of holding the publisher or growing without limit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog
from google.protobuf import any_pb2, message, timestamp_pb2

from supervisor import filters
from supervisor.api.containerd.services.events.v1 import events_pb2

log = structlog.get_logger("ctrd.events")

QUEUE_LIMIT = 4096


def pack(event: message.Message) -> any_pb2.Any:
    return any_pb2.Any(
        type_url=event.DESCRIPTOR.full_name, value=event.SerializeToString(deterministic=True)
    )


class SubscriberTooSlow(Exception):
    pass


@dataclass
class _Subscriber:
    selected: filters.Filters
    queue: asyncio.Queue[events_pb2.Envelope | None]
    dropped: bool = False


class Exchange:
    def __init__(self) -> None:
        self._subscribers: set[_Subscriber] = set()

    async def publish(self, namespace: str, topic: str, event: message.Message) -> None:
        ts = timestamp_pb2.Timestamp()
        ts.GetCurrentTime()
        envelope = events_pb2.Envelope(
            timestamp=ts, namespace=namespace, topic=topic, event=pack(event)
        )
        self.deliver(envelope)

    def deliver(self, envelope: events_pb2.Envelope) -> None:
        adaptor = envelope_adaptor(envelope)
        for sub in list(self._subscribers):
            if sub.dropped or not sub.selected.matches(adaptor):
                continue
            try:
                sub.queue.put_nowait(envelope)
            except asyncio.QueueFull:
                sub.dropped = True
                with contextlib.suppress(asyncio.QueueEmpty):
                    sub.queue.get_nowait()
                sub.queue.put_nowait(None)
                log.warning("subscriber_dropped", reason="queue full", limit=QUEUE_LIMIT)

    async def subscribe(self, selected: filters.Filters) -> AsyncIterator[events_pb2.Envelope]:
        sub = _Subscriber(selected, asyncio.Queue(QUEUE_LIMIT))
        self._subscribers.add(sub)
        try:
            while True:
                envelope = await sub.queue.get()
                if envelope is None:
                    raise SubscriberTooSlow(f"subscriber fell {QUEUE_LIMIT} events behind")
                yield envelope
        finally:
            self._subscribers.discard(sub)


def envelope_adaptor(envelope: events_pb2.Envelope) -> filters.Adaptor:
    """Fields a filter can name: namespace, topic, and event.<field> of the payload."""

    def adapt(path: tuple[str, ...]) -> str | None:
        if path == ("namespace",):
            return envelope.namespace
        if path == ("topic",):
            return envelope.topic
        return None

    return adapt
