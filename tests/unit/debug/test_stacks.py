"""supervisor.debug: stacks of threads and of tasks (with ages), read from another thread."""

from __future__ import annotations

import asyncio
import threading
import time

from supervisor.debug import hooks, stacks


async def _inner(gate: asyncio.Event) -> None:
    await gate.wait()


async def _outer(gate: asyncio.Event) -> None:
    await _inner(gate)


def test_a_task_shows_the_coroutines_it_awaits_through_and_its_age() -> None:
    async def main() -> stacks.Dump:
        hooks.install(asyncio.get_running_loop())
        gate = asyncio.Event()
        task = asyncio.create_task(_outer(gate), name="waiter")
        await asyncio.sleep(0.05)
        dump = stacks.snapshot()
        gate.set()
        await task
        return dump

    dump = asyncio.run(main())
    waiter = next(t for t in dump.tasks if t.name == "waiter")
    assert waiter.state == "pending"
    assert waiter.age is not None
    assert 0.04 < waiter.age < 5
    names = [frame.split(", in ", 1)[1].split("\n", 1)[0] for frame in waiter.frames]
    assert names == ["_outer", "_inner", "wait"]  # outermost first, into asyncio's Event
    assert waiter.awaiting.startswith("<Future pending")
    text = stacks.render(dump)
    assert "task 'waiter' [pending, 0.0" in text
    assert "in _inner" in text


def test_a_loop_stuck_in_a_callback_can_still_be_looked_at_from_another_thread() -> None:
    stuck = threading.Event()
    release = threading.Event()

    def hog() -> None:  # a callback that never yields, as a blocking call would
        stuck.set()
        release.wait(10)

    async def main() -> None:
        hooks.install(asyncio.get_running_loop())
        asyncio.get_running_loop().call_soon(hog)
        await asyncio.sleep(0.01)

    runner = threading.Thread(target=asyncio.run, args=(main(),), name="loop-thread")
    runner.start()
    try:
        assert stuck.wait(10)
        dump = stacks.snapshot()
    finally:
        release.set()
        runner.join(10)
    loop_thread = next(t for t in dump.threads if t.name == "loop-thread")
    assert any(", in hog" in frame for frame in loop_thread.frames)
    main_task = next(t for t in dump.tasks if any(", in main" in f for f in t.frames))
    assert main_task.state == "pending"
    assert main_task.awaiting.startswith("<Future pending")
    as_json = stacks.as_json(dump)
    assert {"name", "age", "state", "stack", "awaiting"} <= set(as_json["tasks"][0])


def test_reading_stacks_without_a_loop_gives_the_threads_only() -> None:
    hooks.loop = None
    dump = stacks.snapshot()
    assert dump.tasks == ()
    assert any(t.name == threading.current_thread().name for t in dump.threads)
    assert time.time() - dump.taken < 5
