"""The health check a container asks for: the `ctrd.io/healthcheck` label, its whole contract.

The label's value is JSON, written by ctrctl from the image's HEALTHCHECK merged with the
`--health-*` flags (docker's rules), or by anyone with `ctr run --label`:

    {"test": ["CMD-SHELL", "curl -f http://localhost/ || exit 1"],
     "interval": 30000000000, "timeout": 30000000000, "start_period": 0, "retries": 3}

- `test`: docker's form. `["CMD", argv...]` runs argv as it is, `["CMD-SHELL", "command"]`
  runs it through `/bin/sh -c`, `["NONE"]` (or nothing) asks for no check; any other first
  word asks for none either (dockerd warns and runs none).
- `interval`, `timeout`, `start_period`: nanoseconds; absent or 0 means docker's default
  (30 s, 30 s, 0). `retries`: consecutive failures that make the container unhealthy;
  absent or 0 means 3.

A label that is not such JSON asks for no check (the daemon logs why): the container runs
as any other. Checks run while the container's task runs and is not paused.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from supervisor.health import LABEL

__all__ = ["LABEL", "BadHealthcheck", "HealthConfig", "command", "from_labels", "go_duration"]

SECOND = 1_000_000_000
DEFAULT_INTERVAL = 30 * SECOND
DEFAULT_TIMEOUT = 30 * SECOND
DEFAULT_START_PERIOD = 0
DEFAULT_RETRIES = 3
SHELL = ("/bin/sh", "-c")


class BadHealthcheck(ValueError):
    """The label is not the contract's JSON."""


@dataclass(frozen=True)
class HealthConfig:
    """A check to run: the command's argv and docker's timings, defaults applied (ns)."""

    argv: tuple[str, ...]
    interval: int = DEFAULT_INTERVAL
    timeout: int = DEFAULT_TIMEOUT
    start_period: int = DEFAULT_START_PERIOD
    retries: int = DEFAULT_RETRIES


def from_labels(labels: Mapping[str, str]) -> HealthConfig | None:
    """The check a container's labels ask for; None when they ask for none. BadHealthcheck
    when the label is there and broken."""
    text = labels.get(LABEL)
    if not text:
        return None
    try:
        record = json.loads(text)
    except ValueError as e:
        raise BadHealthcheck(f"{LABEL} is not JSON: {e}") from None
    if not isinstance(record, dict):
        raise BadHealthcheck(f"{LABEL} must be a JSON object")
    argv = command(record.get("test") or [])
    if argv is None:
        return None
    return HealthConfig(
        argv,
        _duration(record, "interval") or DEFAULT_INTERVAL,
        _duration(record, "timeout") or DEFAULT_TIMEOUT,
        _duration(record, "start_period") or DEFAULT_START_PERIOD,
        _duration(record, "retries") or DEFAULT_RETRIES,
    )


def command(test: Sequence[object]) -> tuple[str, ...] | None:
    """The argv docker's `test` runs, or None for no check."""
    if not isinstance(test, list) or not all(isinstance(word, str) for word in test):
        raise BadHealthcheck(f"{LABEL}: test must be a list of strings")
    if not test:
        return None
    kind, rest = test[0], [str(word) for word in test[1:]]
    if kind == "CMD" and rest:
        return tuple(rest)
    if kind == "CMD-SHELL" and rest:
        return (*SHELL, *rest)  # as dockerd: the shell, then every word after CMD-SHELL
    return None  # NONE, or a kind dockerd does not know either


def _duration(record: Mapping[str, object], key: str) -> int:
    value = record.get(key, 0)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadHealthcheck(f"{LABEL}: {key} must be a non-negative integer")
    return value


def go_duration(ns: int) -> str:
    """A duration as Go's time.Duration prints it (docker's messages quote it): 1s, 1.5s,
    500ms, 2m30s, 1h0m0s, 0s."""
    if ns == 0:
        return "0s"
    sign, ns = ("-", -ns) if ns < 0 else ("", ns)
    if ns < SECOND:
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if ns >= size:
                return sign + _fraction(ns, size) + unit
    hours, rest = divmod(ns, 3600 * SECOND)
    minutes, rest = divmod(rest, 60 * SECOND)
    seconds = _fraction(rest, SECOND) + "s"
    if hours:
        return f"{sign}{hours}h{minutes}m{seconds}"
    if minutes:
        return f"{sign}{minutes}m{seconds}"
    return sign + seconds


def _fraction(value: int, unit: int) -> str:
    whole, part = divmod(value, unit)
    if not part:
        return str(whole)
    digits = len(str(unit)) - 1
    return f"{whole}.{part:0{digits}d}".rstrip("0")
