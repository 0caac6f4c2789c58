"""The in-process event exchange: publish once, deliver to every subscriber that matches.

Events travel as containerd's `Envelope` (timestamp, namespace, topic, event as `Any`), with the
event's type URL the bare message name (`containerd.events.TaskExit`): dockerd and ctr resolve
it by that exact name. A subscriber gets its own bounded queue; one that cannot keep up is
dropped with an error instead of holding the publisher or growing without limit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import structlog
from google.protobuf import any_pb2, message, timestamp_pb2

from supervisor import anys, filters, identifiers
from supervisor.api.containerd.services.events.v1 import events_pb2
from supervisor.errors import InvalidArgument
from supervisor.eventlog import EventLog, Logged
from supervisor.metrics import counts

log = structlog.get_logger("ctrd.events")

QUEUE_LIMIT = 4096


def pack(event: message.Message) -> any_pb2.Any:
    return any_pb2.Any(
        type_url=event.DESCRIPTOR.full_name, value=event.SerializeToString(deterministic=True)
    )


class SubscriberTooSlow(Exception):
    pass


@dataclass(eq=False)  # identity: each subscriber is its own
class _Subscriber:
    selected: filters.Filters
    queue: asyncio.Queue[Logged | None]
    dropped: bool = False


# How a part publishes on the daemon's exchange: (namespace, topic, event).
Publish = Callable[[str, str, message.Message], Awaitable[None]]


class Exchange:
    """Publishing journals the event (when there is a log), then delivers it to subscribers."""

    def __init__(self, log: EventLog | None = None) -> None:
        self._subscribers: set[_Subscriber] = set()
        self.log = log

    async def publish(self, namespace: str, topic: str, event: message.Message) -> None:
        await self.publish_packed(namespace, topic, pack(event))

    async def publish_packed(
        self,
        namespace: str,
        topic: str,
        event: any_pb2.Any,
        timestamp_ns: int | None = None,
        source: str = "",
        source_seq: int = 0,
    ) -> bool:
        """Publish; the envelope's time is now, or when the event happened if given.

        An event from a `source` (a shim) with a `source_seq` it was published with before is
        not published again: False.
        """
        ts = timestamp_pb2.Timestamp()
        if timestamp_ns is None:
            ts.GetCurrentTime()
        else:
            ts.FromNanoseconds(timestamp_ns)
        envelope = events_pb2.Envelope(timestamp=ts, namespace=namespace, topic=topic, event=event)
        return await self.deliver(envelope, source, source_seq)

    async def deliver(
        self, envelope: events_pb2.Envelope, source: str = "", source_seq: int = 0
    ) -> bool:
        seq = 0
        if self.log is not None:
            logged = await self.log.append(envelope, source, source_seq)
            if logged is None:
                return False
            seq = logged
        self._deliver(Logged(seq, envelope))
        counts.EVENTS_PUBLISHED.inc(envelope.topic)
        return True

    def _deliver(self, item: Logged) -> None:
        adaptor = envelope_adaptor(item.envelope)
        for sub in list(self._subscribers):
            if sub.dropped or not sub.selected.matches(adaptor):
                continue
            try:
                sub.queue.put_nowait(item)
            except asyncio.QueueFull:
                sub.dropped = True
                with contextlib.suppress(asyncio.QueueEmpty):
                    sub.queue.get_nowait()
                sub.queue.put_nowait(None)
                log.warning("subscriber_dropped", reason="queue full", limit=QUEUE_LIMIT)

    async def subscribe(self, selected: filters.Filters) -> AsyncIterator[events_pb2.Envelope]:
        async for item in self.subscribe_logged(selected):
            yield item.envelope

    async def subscribe_logged(self, selected: filters.Filters) -> AsyncIterator[Logged]:
        """Live events with their sequence numbers in the log (0 without a log).

        The subscription is in place when the first `__anext__` starts waiting, which
        `subscription` makes explicit for callers that must not miss anything after it.
        """
        sub = self.subscription(selected)
        try:
            while True:
                item = await sub.queue.get()
                if item is None:
                    raise SubscriberTooSlow(f"subscriber fell {QUEUE_LIMIT} events behind")
                yield item
        finally:
            self._subscribers.discard(sub)

    def subscription(self, selected: filters.Filters) -> _Subscriber:
        """Subscribe now; read `.queue` (None: dropped for being too slow); `unsubscribe` after."""
        sub = _Subscriber(selected, asyncio.Queue(QUEUE_LIMIT))
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: _Subscriber) -> None:
        self._subscribers.discard(sub)


def validate_topic(topic: str) -> str:
    """Topics are `/`-separated identifiers, as containerd requires: `/tasks/exit`."""
    if not topic.startswith("/") or len(topic) < 2:
        raise InvalidArgument(f'topic "{topic}" must start with "/" and name something')
    for part in topic[1:].split("/"):
        try:
            identifiers.validate(part)
        except InvalidArgument:
            raise InvalidArgument(f'topic "{topic}": invalid component "{part}"') from None
    return topic


def envelope_adaptor(envelope: events_pb2.Envelope) -> filters.Adaptor:
    """Fields a filter can name: namespace, topic, and event.<field...> of the payload."""
    decoded: list[message.Message | None] = []

    def event() -> message.Message | None:
        if not decoded:
            decoded.append(unpack(envelope.event))
        return decoded[0]

    def adapt(path: tuple[str, ...]) -> str | None:
        if path == ("namespace",):
            return envelope.namespace
        if path == ("topic",):
            return envelope.topic
        if len(path) > 1 and path[0] == "event":
            payload = event()
            return None if payload is None else field_value(payload, path[1:])
        return None

    return adapt


def unpack(packed: any_pb2.Any) -> message.Message | None:
    """The event inside an Any, when its type is a message we know (any of our API's,
    whichever modules were imported first) and its bytes parse; None otherwise."""
    return anys.unpack(packed)


def field_value(msg: message.Message, path: tuple[str, ...]) -> str | None:
    """A field of a message as text, following nested messages and map keys."""
    value: object = msg
    for i, name in enumerate(path):
        if isinstance(value, message.Message):
            if name not in value.DESCRIPTOR.fields_by_name:
                return None
            field = value.DESCRIPTOR.fields_by_name[name]
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                mapping = getattr(value, name)
                key = ".".join(path[i + 1 :])
                return str(mapping[key]) if key in mapping else None
            value = getattr(value, name)
        else:
            return None
    if isinstance(value, message.Message):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
