"""Restart policies as values, and docker's decisions on them (pure: no I/O).

`parse` takes docker's `--restart` text with docker's rules and words (its CLI's format
check, then its daemon's validation); `should_restart` and `next_delay` are moby's
`RestartManager.ShouldRestart`, the part that decides and the part that times.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

LABEL = "ctrd.io/restart"
STOPPED_LABEL = "ctrd.io/restart.manually-stopped"
NAMES = ("no", "always", "on-failure", "unless-stopped")
FIRST_DELAY = 0.1  # seconds, moby's defaultTimeout
MAX_DELAY = 60.0  # moby's maxRestartTimeout
GOOD_RUN = 10.0  # a task that ran this long starts the back-off again
_INTEGER = re.compile(r"[+-]?[0-9]+")  # what Go's strconv.Atoi takes


class InvalidPolicy(ValueError):
    """A `--restart` value docker refuses, in docker's words."""


class Policy(NamedTuple):  # not a frozen dataclass: ctrctl imports it, ~0.5 ms less
    name: str = "no"
    maximum_retry_count: int = 0

    def __str__(self) -> str:
        """The label's text: `on-failure:3`, `always`..."""
        if self.maximum_retry_count:
            return f"{self.name}:{self.maximum_retry_count}"
        return self.name

    @property
    def none(self) -> bool:
        return self.name == "no"


def parse(text: str) -> Policy:
    """docker's `--restart` value; "" is `no`. Raises InvalidPolicy with docker's words."""
    if not text:
        return Policy()
    parts = text.split(":")
    if len(parts) > 2:
        raise InvalidPolicy("invalid restart policy format")
    count = 0
    if len(parts) == 2:
        if not _INTEGER.fullmatch(parts[1]):
            raise InvalidPolicy("maximum retry count must be an integer")
        count = int(parts[1])
    name = parts[0]
    if name in ("no", "always", "unless-stopped"):
        if count != 0:
            raise InvalidPolicy(f"maximum retry count cannot be used with restart policy '{name}'")
    elif name == "on-failure":
        if count < 0:
            raise InvalidPolicy("maximum retry count cannot be negative")
    elif name == "":
        return Policy()  # docker takes an empty name (":3") as no policy
    else:
        raise InvalidPolicy(f"invalid restart policy '{name}'")
    return Policy(name, count)


def of(labels: Mapping[str, str]) -> Policy:
    """A container's policy from its labels; one that does not parse is `no`."""
    try:
        return parse(labels.get(LABEL, ""))
    except InvalidPolicy:
        return Policy()


def manually_stopped(labels: Mapping[str, str]) -> bool:
    return bool(labels.get(STOPPED_LABEL))


def should_restart(policy: Policy, exit_status: int, stopped_by_user: bool, count: int) -> bool:
    """Whether docker restarts a container after this exit (its `ShouldRestart`, whose
    answer at a daemon's start is this one; a live exit after a user's stop is never
    restarted: the caller checks that first, as docker's cancelled restart manager does)."""
    if policy.name == "always":
        return True
    if policy.name == "unless-stopped":
        return not stopped_by_user
    if policy.name == "on-failure":
        retries = policy.maximum_retry_count
        return (retries == 0 or count < retries) and exit_status != 0
    return False


def next_delay(previous: float, ran_for: float) -> float:
    """The wait before the next restart, given the last one's (0: none yet) and how long the
    task ran (seconds): 100 ms, doubled each time, at most a minute; back to 100 ms after a
    task that ran 10 s."""
    if ran_for >= GOOD_RUN or previous <= 0:
        return FIRST_DELAY
    return min(previous * 2, MAX_DELAY)
