"""A task whose network's links are still being made when the runtime has created it
(`Task.ready_to_start`, set by Tasks.Create): the init's start waits for them, and fails with
them; Tasks.Create lets runc's create go once the plumbing says so (`_until_ready`), or at once
with everything made first when the spec has hooks runc runs at its create."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from supervisor import errors
from supervisor.runtime.manager import Task
from supervisor.services.tasks import _has_hooks, _until_ready


class _Client:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.closed_reason = None

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        self.calls.append(method)
        return {"pid": 42}


def _task(client: _Client) -> Task:
    return Task("default", "c", Path("/nonexistent"), client, "shim:x")  # type: ignore[arg-type]


def test_the_start_waits_for_the_links():
    async def scenario() -> None:
        client = _Client()
        task = _task(client)
        links: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        task.ready_to_start = links
        starting = asyncio.create_task(task.call_seen("start", {"exec_id": ""}))
        await asyncio.sleep(0.05)
        assert client.calls == []  # runc start not asked yet
        assert not starting.done()
        links.set_result(b"{}")
        assert await starting == {"pid": 42}
        assert client.calls == ["start"]

    asyncio.run(scenario())


def test_the_start_fails_with_the_links():
    async def scenario() -> None:
        client = _Client()
        task = _task(client)
        links: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        links.set_exception(errors.FailedPrecondition("no bridge"))
        task.ready_to_start = links
        with pytest.raises(errors.FailedPrecondition, match="no bridge"):
            await task.call_seen("start", {"exec_id": ""})
        assert client.calls == []
        # an exec's start does not wait for anything
        await task.call_seen("start", {"exec_id": "e1"})
        assert client.calls == ["start"]

    asyncio.run(scenario())


def test_runc_create_goes_when_ready_or_fails_with_the_plumbing():
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        plumbing: asyncio.Future[bytes] = loop.create_future()
        waiting = asyncio.create_task(_until_ready(ready, plumbing))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        ready.set_result(None)
        await waiting  # the plumbing goes on
        assert not plumbing.done()

        ready = loop.create_future()
        plumbing = loop.create_future()
        waiting = asyncio.create_task(_until_ready(ready, plumbing))
        plumbing.set_exception(errors.AlreadyExists("endpoint with name c already exists"))
        with pytest.raises(errors.AlreadyExists):
            await waiting

    asyncio.run(scenario())


def test_hooks_mean_all_of_the_network_first():
    assert not _has_hooks(json.dumps({"process": {}}).encode())
    assert not _has_hooks(json.dumps({"hooks": {}}).encode())
    assert not _has_hooks(json.dumps({"hooks": {"prestart": []}}).encode())
    assert _has_hooks(json.dumps({"hooks": {"prestart": [{"path": "/bin/true"}]}}).encode())
    assert _has_hooks(json.dumps({"hooks": {"createRuntime": [{"path": "/x"}]}}).encode())
