"""Restart policies in ctrctl: `--restart` for run/create (and `update`, ctl.update), and what
a user's stop and start tell the daemon; the count and "Restarting" for `ps` and `inspect`.

The contract with the daemon is `supervisor.restart`'s: the policy is the container's label
`ctrd.io/restart` (docker's values, checked here with docker's rules and words, exit 125);
`stop`, `kill` (SIGKILL or the stop signal) and `rm -f` set `ctrd.io/restart.manually-stopped`
before they signal, so that the daemon does not undo them, and `start`/`restart` remove it
before they start. Only containers with a policy get either write. The daemon's state (the
count, a pending restart, the last exit) comes from `ctrd.services.restarts.v1`.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from supervisor.restart import policy

if TYPE_CHECKING:
    from ctl.client import Client

CONFLICT_WITH_RM = "Conflicting options: --restart and --rm"  # docker 20.10's words


def checked(args: argparse.Namespace) -> str:
    """The label's value for run/create's `--restart` ("" for none); ValueError with docker's
    words for a value docker refuses, or one given with `--rm`."""
    try:
        chosen = policy.parse(args.restart or "")
    except policy.InvalidPolicy as e:
        raise ValueError(str(e)) from None
    if getattr(args, "rm", False) and not chosen.none:
        raise ValueError(CONFLICT_WITH_RM)
    return "" if chosen.none else str(chosen)


def has_policy(labels: Any) -> bool:
    return not policy.of(labels).none


def mark_stopped(client: Client, container: Any) -> None:
    """A user's stop, told to the daemon before the signal (containers with a policy)."""
    if has_policy(container.labels) and not policy.manually_stopped(container.labels):
        client.update_labels(container.id, {policy.STOPPED_LABEL: "true"})


def clear_stopped(client: Client, cid: str) -> None:
    """A user's start: the daemon restarts the container again after it exits."""
    from ctl.commands import _get

    container = client.containers.Get(_get(cid), metadata=client.md).container
    if policy.manually_stopped(container.labels):
        client.update_labels(cid, {policy.STOPPED_LABEL: ""})


def states(client: Client, cid: str = "") -> dict[str, Any]:
    """The daemon's restart state by container id (all, or `cid`'s); none from a daemon
    without the service."""
    import grpc

    from ctl.client import stub
    from supervisor.api.ctrd.services.restarts.v1 import restarts_pb2 as pb

    restarts = stub(client.channel, pb, "Restarts")
    try:
        answer = restarts.List(pb.ListRestartsRequest(container_id=cid), metadata=client.md)
    except grpc.RpcError as e:
        if isinstance(e, grpc.Call) and e.code() == grpc.StatusCode.UNIMPLEMENTED:
            return {}
        raise
    return {state.container_id: state for state in answer.restarts}


def _seconds(ts: Any) -> float:
    return float(ts.seconds + ts.nanos / 1e9)


def status(state: Any | None, task: Any | None, now: float) -> tuple[str, str] | None:
    """docker's (State, STATUS) where the restart state decides them: `restarting` and
    "Restarting (1) 2 seconds ago" while a restart is pending; `exited` and its last exit
    when a container with a policy has no task left (a restart called off, or not made at
    a daemon's start). None: the task says."""
    from ctl.table import ago

    if state is None:
        return None
    if state.restarting:
        return (
            "restarting",
            f"Restarting ({state.exit_status}) {ago(_seconds(state.exited_at), now)}",
        )
    if task is None and state.exited:
        return "exited", f"Exited ({state.exit_status}) {ago(_seconds(state.exited_at), now)}"
    return None


def inspect_fields(labels: Any, state: Any | None, info: dict[str, Any]) -> None:
    """docker's `RestartCount` and `HostConfig.RestartPolicy` into `info`; `state.status`
    `restarting` (and `restarting: true`) while a restart is pending."""
    chosen = policy.of(labels)
    info["RestartCount"] = state.restart_count if state is not None else 0
    host_config = info.setdefault("HostConfig", {})
    host_config["RestartPolicy"] = {
        "Name": chosen.name,
        "MaximumRetryCount": chosen.maximum_retry_count,
    }
    if state is not None and state.restarting:
        shown = info.setdefault("state", {})
        shown.update(status="restarting", restarting=True, exitCode=state.exit_status)


def call_off(client: Client, container: Any, timeout: float = 5.0) -> None:
    """`rm -f`: the user's stop told, then, while the daemon has a restart pending, wait
    until it has called it off (and deleted the task it made), so that the container's task
    and record can go."""
    import time

    if not has_policy(container.labels):
        return
    mark_stopped(client, container)
    deadline = time.monotonic() + timeout
    while (state := states(client, container.id).get(container.id)) is not None:
        if not state.restarting or time.monotonic() > deadline:
            return
        time.sleep(0.02)
