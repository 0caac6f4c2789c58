"""One run of a container's check: an exec in the container through its shim, as
`Tasks.Exec` runs one (create, start, wait, delete), with docker's rules for the result.

The probe runs with the container's process settings (user, working directory, environment,
capabilities: its spec's `process`), the check's argv and no terminal. Its stdout and stderr
both go to one FIFO the daemon reads as they come, keeping the first OUTPUT_LIMIT bytes and
discarding the rest, so a probe that writes without end neither blocks nor fills a disk.

A probe still running when the check's timeout has passed since it started is killed
(SIGKILL) and waited for, and its result is dockerd's: exit code -1, output `Health check
exceeded timeout (1s)` (with `: ` and what it wrote, when it wrote something). A probe that
cannot start (no such command, say) is a failure with exit code -1 and the runtime's words.
Whatever happens, its process is deleted from the shim and its FIFO removed before `run`
returns, even when the run is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import structlog

from supervisor import errors
from supervisor.health.config import HealthConfig, go_duration
from supervisor.health.state import OUTPUT_LIMIT, Result, cut
from supervisor.runtime import execs
from supervisor.runtime.execs import exec_process
from supervisor.runtime.manager import Task

log = structlog.get_logger("ctrd.health")

CLEANUP_TIMEOUT = 5.0  # seconds to kill and delete a probe once it is given up
EXEC_PREFIX = "health-"  # the exec ids of probes: `ps`-like listings can tell them apart


def exec_spec(process: dict[str, Any], argv: tuple[str, ...]) -> dict[str, Any]:
    """The probe's process: the container's own (user, cwd, env, capabilities...) running
    `argv` without a terminal, as every exec the daemon runs (`runtime.execs`)."""
    return exec_process(process, list(argv))


async def run(
    task: Task, config: HealthConfig, process: dict[str, Any], exec_id: str, fifo_dir: Path
) -> Result:
    """Run the check once in `task`'s container; its result."""
    start = time.time_ns()
    output = execs.Capture(fifo_dir / f"{exec_id}.out", OUTPUT_LIMIT)
    created = False
    try:
        await task.call_seen(
            "exec",
            {
                "exec_id": exec_id,
                "spec": exec_spec(process, config.argv),
                "stdin": "",
                "stdout": str(output.path),
                "stderr": str(output.path),
                "terminal": False,
            },
        )
        created = True
        try:
            await task.call_seen("start", {"exec_id": exec_id})
        except errors.CtrdError as e:
            task.start_failed(exec_id)
            return Result(start, time.time_ns(), -1, e.detail or str(e))
        try:
            exit_ = await asyncio.wait_for(task.wait(exec_id), config.timeout / 1e9)
        except TimeoutError:
            await execs.kill(task, exec_id, CLEANUP_TIMEOUT)
            return _timed_out(start, config, _text(output))
        await execs.delete(task, exec_id)  # waits for the output to drain
        created = False
        return Result(start, time.time_ns(), exit_.status, _text(output))
    except errors.CtrdError as e:
        return Result(start, time.time_ns(), -1, e.detail or str(e))
    finally:
        if created:
            with contextlib.suppress(Exception):
                await asyncio.shield(_cleanup(task, exec_id))
        output.close()


def _text(output: execs.Capture) -> str:
    """What the probe wrote, as docker keeps it (the first OUTPUT_LIMIT bytes, cut)."""
    data = output.bytes()
    return cut(data, output.dropped > 0)


def _timed_out(start: int, config: HealthConfig, written: str) -> Result:
    message = f"Health check exceeded timeout ({go_duration(config.timeout)})"
    return Result(start, time.time_ns(), -1, f"{message}: {written}" if written else message)


async def _cleanup(task: Task, exec_id: str) -> None:
    """A probe given up (timed out, failed, or its run cancelled): killed if it still runs,
    then deleted from the shim (`execs.abandon`, within CLEANUP_TIMEOUT)."""
    await execs.abandon(
        task, exec_id, CLEANUP_TIMEOUT, CLEANUP_TIMEOUT, event="health_probe_not_deleted"
    )
