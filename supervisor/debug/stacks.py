"""Every thread's stack and every asyncio task's stack, with each task's age.

containerd dumps its goroutines on SIGUSR1; the daemon's equivalents are its Python threads
(`sys._current_frames`) and the event loop's tasks. A suspended task's own frame says little
(`Task.get_stack` stops at the outermost coroutine): its stack here is the chain of
coroutines it awaits through (`cr_await`), down to the future it waits for.

Ages come from `hooks.install`'s task factory; tasks made before it have no age. `snapshot`
may be called from any thread (the debug socket's, or the dump's own), so that a loop stuck in
a callback can still be looked at.

Invariant: reading stacks never raises into the caller and never blocks on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any

import structlog

from supervisor.debug import hooks

log = structlog.get_logger("ctrd.debug")


@dataclass(frozen=True)
class ThreadStack:
    ident: int
    name: str
    daemon: bool
    frames: tuple[str, ...]  # outermost first, as a traceback reads


@dataclass(frozen=True)
class TaskStack:
    name: str
    age: float | None  # seconds since it was made; None when made before `install`
    state: str  # pending, cancelling, done
    frames: tuple[str, ...]  # the outermost coroutine first
    awaiting: str  # what the innermost coroutine waits for ("" when running or done)


@dataclass(frozen=True)
class Dump:
    pid: int
    taken: float  # wall-clock time, seconds since the epoch
    threads: tuple[ThreadStack, ...]
    tasks: tuple[TaskStack, ...]


def snapshot() -> Dump:
    """The stacks now, of every thread and of the installed loop's tasks."""
    return Dump(os.getpid(), time.time(), tuple(_threads()), tuple(_tasks()))


def _threads() -> Iterator[ThreadStack]:
    names = {t.ident: t for t in threading.enumerate()}
    for ident, frame in sorted(sys._current_frames().items()):
        thread = names.get(ident)
        name = thread.name if thread is not None else "?"
        daemon = thread.daemon if thread is not None else False
        yield ThreadStack(ident, name, daemon, tuple(_format(traceback.extract_stack(frame))))


def _tasks() -> Iterator[TaskStack]:
    loop = hooks.loop
    if loop is None or loop.is_closed():
        return
    now = time.monotonic()
    tasks = sorted(asyncio.all_tasks(loop), key=lambda t: hooks.born.get(t, 0.0))
    for task in tasks:
        born = hooks.born.get(task)
        frames, awaiting = _awaits(task.get_coro())
        waiter = getattr(task, "_fut_waiter", None)  # the future it waits on, when it does
        if waiter is not None:
            awaiting = _describe(waiter)
        if task.done():
            state = "done"
        elif task.cancelling():
            state = "cancelling"
        else:
            state = "pending"
        yield TaskStack(
            task.get_name(),
            None if born is None else round(now - born, 3),
            state,
            tuple(_format(traceback.StackSummary.extract((f, f.f_lineno) for f in frames))),
            awaiting,
        )


def _awaits(coro: Any) -> tuple[list[FrameType], str]:
    """The frames of the coroutines `coro` awaits through, and what the last one awaits."""
    frames: list[FrameType] = []
    current = coro
    for _ in range(1000):  # a cycle cannot happen; a bound costs nothing
        frame = _first(current, "cr_frame", "gi_frame", "ag_frame")
        if frame is None:
            break
        frames.append(frame)
        awaited = _first(current, "cr_await", "gi_yieldfrom", "ag_await")
        if awaited is None:
            return frames, ""
        current = awaited
    if current is coro:
        return frames, ""
    return frames, _describe(current)


def _describe(awaited: Any) -> str:
    with contextlib.suppress(Exception):  # a repr is the awaited object's own code
        return _short(repr(awaited))
    return type(awaited).__name__


def _first(obj: Any, *names: str) -> Any:
    for name in names:
        value = getattr(obj, name, None)
        if value is not None:
            return value
    return None


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _format(summary: traceback.StackSummary) -> Iterator[str]:
    for entry in summary:
        line = f'File "{entry.filename}", line {entry.lineno}, in {entry.name}'
        if entry.line:
            line += f"\n    {entry.line.strip()}"
        yield line


def render(dump: Dump) -> str:
    """The dump as text, threads first, a blank line between stacks (as Go's goroutine dump)."""
    out = [
        f"pid {dump.pid}: {len(dump.threads)} threads, {len(dump.tasks)} asyncio tasks, at "
        + time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(dump.taken))
    ]
    for thread in dump.threads:
        kind = ", daemon" if thread.daemon else ""
        out.append(f"\nthread {thread.ident} [{thread.name}{kind}]:")
        out.extend("  " + line.replace("\n", "\n  ") for line in thread.frames)
    for task in dump.tasks:
        age = "age unknown" if task.age is None else f"{task.age:.3f}s old"
        out.append(f"\ntask {task.name!r} [{task.state}, {age}]:")
        out.extend("  " + line.replace("\n", "\n  ") for line in task.frames)
        if task.awaiting:
            out.append(f"  awaiting {task.awaiting}")
    return "\n".join(out) + "\n"


def as_json(dump: Dump) -> dict[str, Any]:
    return {
        "pid": dump.pid,
        "time": dump.taken,
        "threads": [
            {"id": t.ident, "name": t.name, "daemon": t.daemon, "stack": list(t.frames)}
            for t in dump.threads
        ],
        "tasks": [
            {
                "name": t.name,
                "age": t.age,
                "state": t.state,
                "stack": list(t.frames),
                "awaiting": t.awaiting,
            }
            for t in dump.tasks
        ],
    }


def dump_to_log() -> None:
    """Log the stacks (containerd's 'goroutine stack dump') and keep them in a file under the
    temporary directory, as containerd does, in case the log cuts long lines."""
    try:
        text = render(snapshot())
    except Exception:
        log.exception("stack_dump_failed")
        return
    log.info("stack_dump", stacks=f"=== BEGIN stack dump ===\n{text}=== END stack dump ===")
    path = os.path.join(tempfile.gettempdir(), f"ctrd.{os.getpid()}.stacks.log")
    try:
        with open(path, "w") as f:
            f.write(text)
    except OSError as e:
        log.warning("stack_dump_not_written", path=path, error=str(e))
        return
    log.info("stack_dump_written", path=path)
