"""Events a restart recovers reach the subscribers that come back after it (dockerd's case).

A bundle is left as a shim that died while no daemon ran leaves it: its journal holds the
task's create, start and exit, nothing was published. `TaskManager.load` publishes them while
nobody can listen; a subscription made afterwards gets them first, then live events; once the
task is deleted, or the replay window has passed, a new subscription gets none.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from shim.journal import FILENAME, Journal
from supervisor.api.containerd.events import task_pb2 as events_pb
from supervisor.api.containerd.services.events.v1 import events_pb2
from supervisor.events import Exchange, unpack
from supervisor.runtime.manager import INSTANCE, TaskManager
from supervisor.services.events import EventsService

NS, CID, PID = "moby", "c1", 4242
DOCKERD_FILTER = f"namespace=={NS},topic~=|^/tasks/|"


def leave_bundle(state: Path) -> None:
    bundle = state / "tasks" / NS / CID
    bundle.mkdir(parents=True)
    (bundle / INSTANCE).write_text("shim:0123")
    (bundle / "address").write_text(f"unix://{state}/s/nobody")
    io = {"stdin": "", "stdout": "/x/init-stdout", "stderr": "/x/init-stderr", "terminal": False}
    with Journal(bundle / FILENAME) as journal:  # type: ignore[arg-type]
        journal.append("/tasks/create", {"container_id": CID, "pid": PID, "io": io})
        journal.append("/tasks/start", {"container_id": CID, "pid": PID})
        journal.append(
            "/tasks/exit",
            {"container_id": CID, "id": CID, "exec_id": "", "pid": PID,
             "exit_status": 137, "exited_at": time.time_ns()},
        )  # fmt: skip


async def next_envelope(stream: AsyncIterator[Any]) -> events_pb2.Envelope:
    envelope: events_pb2.Envelope = await asyncio.wait_for(anext(stream), 5)
    return envelope


class HeadersOnly:
    """What Subscribe asks of its call's context here: to send the headers."""

    async def send_initial_metadata(self, metadata: object) -> None:
        pass


def subscribe(service: EventsService, *filter_: str) -> AsyncIterator[Any]:
    request = events_pb2.SubscribeRequest(filters=list(filter_))
    return service.Subscribe(request, HeadersOnly())  # type: ignore[arg-type]


def test_a_late_subscriber_gets_the_recovered_events_then_live_ones(tmp_path):
    async def main() -> None:
        leave_bundle(tmp_path)
        exchange = Exchange()
        manager = TaskManager(tmp_path, str(tmp_path / "ctrd.sock"), exchange)
        await manager.load()
        service = EventsService(exchange, manager.recovered_events)

        stream = subscribe(service, DOCKERD_FILTER)
        got = [await next_envelope(stream) for _ in range(3)]
        assert [e.topic for e in got] == ["/tasks/create", "/tasks/start", "/tasks/exit"]
        exit_ = unpack(got[2].event)
        assert isinstance(exit_, events_pb.TaskExit)
        assert (exit_.container_id, exit_.id, exit_.pid, exit_.exit_status) == (CID, CID, PID, 137)
        await exchange.publish(NS, "/tasks/oom", events_pb.TaskOOM(container_id=CID))
        assert (await next_envelope(stream)).topic == "/tasks/oom"  # live, after the backlog
        await stream.aclose()

        other_ns = subscribe(service, "namespace==default")  # matches none of them
        first = asyncio.ensure_future(next_envelope(other_ns))
        await asyncio.sleep(0.01)  # subscribed (on its first read), and had no backlog
        await exchange.publish("default", "/tasks/oom", events_pb.TaskOOM(container_id="d"))
        assert (await first).namespace == "default"
        await other_ns.aclose()

        deleted = await manager.delete(NS, CID)
        assert deleted["exit_status"] == 137
        assert manager.recovered_events() == []
        await manager.stop()

    asyncio.run(main())


def test_recovered_events_are_not_replayed_once_the_window_has_passed(tmp_path):
    async def main() -> None:
        leave_bundle(tmp_path)
        manager = TaskManager(tmp_path, str(tmp_path / "ctrd.sock"), Exchange(), recovered_replay=0)
        await manager.load()
        assert manager.get(NS, CID).exits[""].status == 137  # recovered all the same
        assert manager.recovered_events() == []
        await manager.stop()

    asyncio.run(main())


@pytest.mark.parametrize("selected", ['topic=="/tasks/exit"', ""])
def test_the_backlog_is_filtered_like_live_events(tmp_path, selected):
    async def main() -> None:
        leave_bundle(tmp_path)
        exchange = Exchange()
        manager = TaskManager(tmp_path, str(tmp_path / "ctrd.sock"), exchange)
        await manager.load()
        stream = subscribe(EventsService(exchange, manager.recovered_events),
                           *([selected] if selected else []))  # fmt: skip
        first = await next_envelope(stream)
        assert first.topic == ("/tasks/exit" if selected else "/tasks/create")
        await stream.aclose()
        await manager.stop()

    asyncio.run(main())
