"""How `ctrctl ps` and `inspect` show containers' health, as the daemon keeps it
(`ctrd.services.health.v1`) and as docker shows it:

- `ps`: the STATUS of a running container whose check has a state ends in
  ` (health: starting)`, ` (healthy)` or ` (unhealthy)` (docker's State.String);
- `inspect`: `State.Health` {Status, FailingStreak, Log: [{Start, End, ExitCode, Output}]},
  times in RFC 3339 with nanoseconds as Go writes them, and `Config.Healthcheck` from the
  container's label (ctl.healthopts.config_of).

Only containers whose label asks for a check (`ctrd.io/healthcheck`) cost a call; a daemon
without the service (UNIMPLEMENTED) shows no health.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

import grpc

from ctl.client import Client, stub
from supervisor.health import LABEL  # the package alone: no dataclass to define

STARTING = "starting"


def wanted(labels: Mapping[str, str]) -> bool:
    return bool(labels.get(LABEL))


def _stub(client: Client) -> Any:
    from supervisor.api.ctrd.services.health.v1 import health_pb2

    return stub(client.channel, health_pb2, "Health")


def _unavailable(error: grpc.RpcError) -> bool:
    codes = (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.NOT_FOUND)
    return isinstance(error, grpc.Call) and error.code() in codes


def all_health(client: Client, containers: Iterable[Any]) -> dict[str, Any]:
    """The health of the namespace's containers by id (one call, only when one of
    `containers` asks for checks)."""
    if not any(wanted(c.labels) for c in containers):
        return {}
    from supervisor.api.ctrd.services.health.v1 import health_pb2

    try:
        listed = _stub(client).List(health_pb2.ListHealthRequest(), metadata=client.md).health
    except grpc.RpcError as e:
        if _unavailable(e):
            return {}
        raise
    return {h.container_id: h for h in listed}


def health_of(client: Client, cid: str) -> Any | None:
    from supervisor.api.ctrd.services.health.v1 import health_pb2

    request = health_pb2.GetHealthRequest(container_id=cid)
    try:
        return _stub(client).Get(request, metadata=client.md).health
    except grpc.RpcError as e:
        if _unavailable(e):
            return None
        raise


def status_suffix(health: Any | None) -> str:
    """What docker's STATUS adds after `Up 5 minutes` for a running container."""
    if health is None or not health.status:
        return ""
    return f" (health: {STARTING})" if health.status == STARTING else f" ({health.status})"


def go_time(timestamp: Any) -> str:
    """A timestamp as Go's time.Time marshals to JSON (RFC 3339, nanoseconds without their
    trailing zeros, UTC as Z)."""
    stamp = dt.datetime.fromtimestamp(timestamp.seconds, dt.UTC)
    fraction = f"{timestamp.nanos:09d}".rstrip("0")
    return stamp.strftime("%Y-%m-%dT%H:%M:%S") + (f".{fraction}" if fraction else "") + "Z"


def state_health(health: Any) -> dict[str, Any]:
    """docker's `State.Health`."""
    return {
        "Status": health.status,
        "FailingStreak": health.failing_streak,
        "Log": [
            {
                "Start": go_time(r.start),
                "End": go_time(r.end),
                "ExitCode": r.exit_code,
                "Output": r.output,
            }
            for r in health.log
        ],
    }


def inspect_fields(
    client: Client, cid: str, labels: Mapping[str, str], info: dict[str, Any]
) -> None:
    """Add docker's `Config.Healthcheck` and `State.Health` to a container's inspect output,
    when its label asks for a check (each key of `info` kept and added to)."""
    if not wanted(labels):
        return
    from ctl.healthopts import config_of

    config = config_of(labels)
    if config is not None:
        info.setdefault("Config", {})["Healthcheck"] = config
    found = health_of(client, cid)
    if found is not None:
        info.setdefault("State", {})["Health"] = state_health(found)


HEALTH_FILTERS = (STARTING, "healthy", "unhealthy", "none")  # docker's `ps --filter health=`


def check_filter(values: Iterable[str]) -> None:
    """docker's check of `ps --filter health=VALUE`, in dockerd's words."""
    for value in values:
        if value not in HEALTH_FILTERS:
            raise ValueError(f"Unrecognised filter value for health: {value}")


def filter_status(health: Any | None) -> str:
    """What `ps --filter health=` compares: the kept status, `none` without one."""
    return str(health.status) if health is not None and health.status else "none"
