"""Health checks of containers (docker's HEALTHCHECK), run by the daemon through the shims.

`config` reads what a container asks for (the `ctrd.io/healthcheck` label), `state` is the
pure state machine of docker's rules, `store` keeps each container's health in the metadata
database, `probe` runs one check as an exec in the container and `monitor` schedules checks
from the task events.

This module itself stays light: the daemon subscribes to the task events the monitor follows
(`subscribe`) before it serves, so that none is missed, and builds the monitor (importing the
rest) only once it has answered its first calls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from supervisor.events import Exchange

LABEL = "ctrd.io/healthcheck"  # what a container asks for (its contract: `config`)
FOLLOWED = ("/tasks/start", "/tasks/exit", "/tasks/delete", "/containers/delete")


def subscribe(exchange: Exchange) -> Any:
    """A subscription to the events the monitor follows (`HealthMonitor.start` reads it)."""
    from supervisor import filters

    return exchange.subscription(filters.parse_all(f'topic=="{topic}"' for topic in FOLLOWED))
