"""The containers part's exits: from `/tasks/exit` and `/tasks/oom` on the exchange, and from
the tasks themselves when its subscription was dropped for being slow."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from supervisor.api.containerd.events import task_pb2 as events_pb
from supervisor.config import Config
from supervisor.cri.containers import ContainerRecord, ContainersPart, ContainerState
from supervisor.events import Exchange

NS = "k8s.io"


@dataclass
class FakeTasks:
    """The TaskManager as the part asks it: which tasks exist (none here)."""

    existing: set[str] = field(default_factory=set)

    def exists(self, ns: str, cid: str) -> bool:
        return cid in self.existing


class FakeStore:
    def __init__(self) -> None:
        self.updates: list[str] = []

    async def list(self, filter_texts: list[str]) -> list[Any]:
        return []  # the tests put their records in memory

    async def update(self, container: Any, paths: list[str]) -> Any:
        self.updates.append(container.id)
        return container


def _part(events: Exchange, store: FakeStore) -> ContainersPart:
    deps = SimpleNamespace(
        config=Config(), events=events, tasks=FakeTasks(), containers=lambda ns: store
    )
    return ContainersPart(deps, sandboxes=None)  # type: ignore[arg-type]


def _running(cid: str) -> ContainerRecord:
    return ContainerRecord(
        id=cid, name=f"{cid}_p_ns_u_0", sandbox_id="s", config=b"", image="i", image_ref="r",
        created_at=1, started_at=2,
    )  # fmt: skip


async def _settle(part: ContainersPart, cid: str) -> ContainerRecord:
    for _ in range(200):
        record = part._records[cid]
        if record.state is ContainerState.EXITED:
            return record
        await asyncio.sleep(0.01)
    raise AssertionError(f"{cid} not exited: {part._records[cid]}")


def test_exits_and_ooms_on_the_exchange_are_recorded_with_their_reason():
    asyncio.run(_exits_and_ooms())


async def _exits_and_ooms() -> None:
    events, store = Exchange(), FakeStore()
    part = _part(events, store)
    await part._ready()
    for cid in ("a", "b", "c"):
        part._records[cid] = _running(cid)  # started after the part was loaded
    await events.publish(NS, "/tasks/oom", events_pb.TaskOOM(container_id="b"))
    for cid, status in (("a", 0), ("b", 137), ("c", 2)):
        exit_ = events_pb.TaskExit(container_id=cid, id=cid, exit_status=status)
        exit_.exited_at.FromNanoseconds(5)
        await events.publish(NS, "/tasks/exit", exit_)
    await events.publish(NS, "/tasks/exit", events_pb.TaskExit(container_id="a", id="exec1"))
    reasons = [(await _settle(part, cid)).reason for cid in ("a", "b", "c")]
    assert reasons == ["Completed", "OOMKilled", "Error"]
    assert part._records["a"].finished_at == 5
    await events.publish("default", "/tasks/exit", events_pb.TaskExit(container_id="a", id="a"))
    assert part._watcher is not None
    part._watcher.cancel()


def test_a_dropped_subscription_is_made_again_and_the_tasks_looked_at():
    asyncio.run(_dropped())


async def _dropped() -> None:
    events, store = Exchange(), FakeStore()
    part = _part(events, store)
    await part._ready()
    part._records["gone"] = _running("gone")
    [subscription] = list(events._subscribers)
    subscription.queue.put_nowait(None)  # what the exchange does to a slow subscriber
    record = await _settle(part, "gone")
    assert (record.exit_code, record.reason) == (255, "Unknown")  # its task is not there
    assert len(events._subscribers) == 1
    assert next(iter(events._subscribers)) is not subscription
    assert part._watcher is not None
    part._watcher.cancel()
