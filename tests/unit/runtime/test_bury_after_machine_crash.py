"""A task buried after a machine crash whose journal lost its unsynced tail: the exit the
daemon makes up for it is published, though the event log has numbers past the journal's end.

The shim syncs only exits (`shim.journal`); the event log is not synced at each commit either.
So after a machine crash the event log may say the shim's events up to 3 were published where
the journal, read back, ends at 2.
"""

from __future__ import annotations

import asyncio

from google.protobuf import any_pb2

from shim.journal import FILENAME, Journal
from supervisor.api.containerd.services.events.v1 import events_pb2
from supervisor.eventlog import EventLog
from supervisor.events import Exchange
from supervisor.runtime.manager import INSTANCE, TaskManager

NS, CID, PID, SOURCE = "default", "c1", 4242, "shim:0123"


def test_the_made_up_exit_is_numbered_past_what_was_published(tmp_path):
    bundle = tmp_path / "tasks" / NS / CID
    bundle.mkdir(parents=True)
    (bundle / INSTANCE).write_text(SOURCE)
    (bundle / "address").write_text(f"unix://{tmp_path}/s/nobody")
    with Journal(bundle / FILENAME) as journal:  # type: ignore[arg-type]
        journal.append("/tasks/create", {"container_id": CID, "pid": PID})
        journal.append("/tasks/start", {"container_id": CID, "pid": PID})
        # /tasks/exec-added, 3, was published and lost with the page cache.

    async def main() -> None:
        log = await EventLog.open(tmp_path / "events.db", retention=3600, limit=1000)
        try:
            for seq, topic in enumerate(("/tasks/create", "/tasks/start", "/tasks/exec-added")):
                envelope = events_pb2.Envelope(namespace=NS, topic=topic, event=any_pb2.Any())
                assert await log.append(envelope, SOURCE, seq + 1)
            manager = TaskManager(tmp_path, str(tmp_path / "ctrd.sock"), Exchange(log))
            await manager.load()
            task = manager.get(NS, CID)
            assert task.exits[""].status == 137
            logged = await log.read()
            assert [e.envelope.topic for e in logged][3:] == ["/tasks/exit"]
            assert (await log.sources())[SOURCE] == 4
            await manager.stop()
        finally:
            await log.close()

    asyncio.run(main())
