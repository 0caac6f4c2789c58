"""A container's health and docker's rules for it (dockerd's daemon/health.go), as pure
functions: no clock, no I/O.

- A task that starts makes its container `starting`, with no failure counted; the results of
  earlier runs stay in the log.
- A probe that exits 0 makes it `healthy` and clears the failing streak.
- Any other result (a non-zero exit, a timeout, a probe that could not run) is a failure. It
  is not counted while the container is still `starting` and the probe began within the start
  period; otherwise it adds one to the streak, and `retries` consecutive ones make the
  container `unhealthy`.
- The log keeps the last LOG_SIZE results; a result's output is kept to OUTPUT_LIMIT bytes.

A change of status is what `transition` reports: the daemon publishes it as an event.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from supervisor.health.config import HealthConfig

STARTING = "starting"
HEALTHY = "healthy"
UNHEALTHY = "unhealthy"
LOG_SIZE = 5  # dockerd's maxLogEntries
OUTPUT_LIMIT = 4096  # dockerd's maxOutputLen
TRUNCATED = "..."  # what dockerd appends to output it cut


@dataclass(frozen=True)
class Result:
    """One run of the check: when it began and ended (ns since the epoch), its exit code
    (-1: timed out or could not run), its output."""

    start: int
    end: int
    exit_code: int
    output: str


@dataclass(frozen=True)
class Health:
    status: str = STARTING
    failing_streak: int = 0
    log: tuple[Result, ...] = ()
    started_at: int = 0  # when the task whose checks these are started (ns since the epoch)


def started(previous: Health | None, at: int) -> Health:
    """The health of a task that just started: starting, no failure, the old log kept."""
    return Health(STARTING, 0, previous.log if previous is not None else (), at)


def record(health: Health, result: Result, config: HealthConfig) -> Health:
    """The health after one more result."""
    log = (*health.log, result)[-LOG_SIZE:]
    if result.exit_code == 0:
        return replace(health, status=HEALTHY, failing_streak=0, log=log)
    in_start_period = result.start - health.started_at < config.start_period
    if health.status == STARTING and in_start_period:
        return replace(health, log=log)
    streak = health.failing_streak + 1
    status = UNHEALTHY if streak >= config.retries else health.status
    return replace(health, status=status, failing_streak=streak, log=log)


def transition(before: Health, after: Health) -> str | None:
    """The new status when a result changed it (an event to publish), else None."""
    return after.status if after.status != before.status else None


def cut(output: bytes, truncated: bool = False) -> str:
    """A probe's output as kept: its first OUTPUT_LIMIT bytes, then "..." when there were
    more (as text; bytes that are not UTF-8 replaced)."""
    more = truncated or len(output) > OUTPUT_LIMIT
    text = output[:OUTPUT_LIMIT].decode(errors="replace")
    return text + TRUNCATED if more else text
