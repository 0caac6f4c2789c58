"""What the daemon installs at its start for its stacks to be read later, kept light (the
reading, `stacks`, is imported only when a dump is asked for).

`install` puts a task factory on the loop that notes when each task was made (a weak map:
nothing outlives its task), so that a dump can tell each task's age; `on_signal` is SIGUSR1's
handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import weakref
from typing import Any

HANDLER_RETURN = 0.02  # seconds the dump waits for the signalled thread to leave the handler

born: weakref.WeakKeyDictionary[asyncio.Task[Any], float] = weakref.WeakKeyDictionary()
loop: asyncio.AbstractEventLoop | None = None  # the loop whose tasks a dump shows


def install(target: asyncio.AbstractEventLoop) -> None:
    """Note each task's birth on `target` from now on, and show its tasks in dumps."""
    global loop
    loop = target
    previous = target.get_task_factory()
    with contextlib.suppress(RuntimeError):  # the task installing it (main's) is born now
        if (current := asyncio.current_task(target)) is not None:
            born[current] = time.monotonic()

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        if previous is not None:
            task = previous(loop, coro, **kwargs)
        else:
            task = asyncio.Task(coro, loop=loop, **kwargs)
        if isinstance(task, asyncio.Task):
            born[task] = time.monotonic()
        return task

    target.set_task_factory(factory)


def on_signal(*_: object) -> None:
    """SIGUSR1's handler: the dump is taken on a thread of its own, so that the main thread's
    stack shows where it was (not this handler) and the log's writer is never re-entered (a
    handler may run inside a write that the signal interrupted)."""
    threading.Thread(target=_dump, name="stack-dump", daemon=True).start()


def _dump() -> None:
    time.sleep(HANDLER_RETURN)
    from supervisor.debug import stacks

    stacks.dump_to_log()
