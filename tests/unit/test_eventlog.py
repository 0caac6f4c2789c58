"""The durable event log: numbering, exactly-once per source, time windows, pruning."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from google.protobuf import any_pb2, timestamp_pb2

from supervisor.api.containerd.services.events.v1 import events_pb2
from supervisor.eventlog import EventLog


def envelope(topic: str, at_ns: int, ns: str = "default") -> events_pb2.Envelope:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(at_ns)
    return events_pb2.Envelope(
        timestamp=ts, namespace=ns, topic=topic, event=any_pb2.Any(type_url="x", value=b"v")
    )


def test_sources_are_published_once_and_survive_a_reopen(tmp_path: Path):
    async def scenario() -> None:
        log = await EventLog.open(tmp_path / "events.db", retention=3600, limit=100)
        now = time.time_ns()
        assert await log.append(envelope("/a", now)) == 1
        assert await log.append(envelope("/tasks/start", now + 1), "shim:1", 1) == 2
        assert await log.append(envelope("/tasks/start", now + 1), "shim:1", 1) is None
        assert await log.append(envelope("/tasks/exit", now + 2), "shim:1", 2) == 3
        await log.close()
        log = await EventLog.open(tmp_path / "events.db", retention=3600, limit=100)
        assert await log.last_seq("shim:1") == 2
        assert await log.append(envelope("/tasks/exit", now + 2), "shim:1", 2) is None
        assert [e.seq for e in await log.read()] == [1, 2, 3]
        assert [e.envelope.topic for e in await log.read(after=1)] == [
            "/tasks/start",
            "/tasks/exit",
        ]
        window = await log.read(since_ns=now + 1, until_ns=now + 2)
        assert [e.envelope.topic for e in window] == ["/tasks/start"]
        assert window[0].envelope.timestamp.ToNanoseconds() == now + 1
        await log.forget("shim:1")
        assert await log.last_seq("shim:1") == 0
        await log.close()

    asyncio.run(scenario())


def test_pruning_keeps_the_newest_within_retention(tmp_path: Path):
    async def scenario() -> None:
        log = await EventLog.open(tmp_path / "events.db", retention=60, limit=3)
        now = time.time_ns()
        await log.append(envelope("/old", now - 120 * 10**9), "shim:1", 1)
        for n in range(5):
            await log.append(envelope(f"/e{n}", now + n))
        await log.prune()
        assert [e.envelope.topic for e in await log.read()] == ["/e2", "/e3", "/e4"]
        assert await log.last_seq("shim:1") == 1  # pruning events never forgets a source
        await log.close()

    asyncio.run(scenario())
