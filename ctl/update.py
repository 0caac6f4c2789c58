"""`ctrctl update`: docker's `update` for what ctrctl runs with: the restart policy
(`--restart`, the `ctrd.io/restart` label, ctl.restartopts) and the limits `run` takes
(`--memory`, `--cpus`, `--pids-limit`), written into the container's spec for its next task
and applied to a running (or paused) one through Tasks.Update, as dockerd does both. Each
container named is printed once updated; an error is docker's words, exit 125.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ctl.client import Client

RESTART_LABEL = "ctrd.io/restart"  # supervisor.restart.policy.LABEL
RESOURCES_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"


def add_parsers(commands: Any) -> None:
    update = commands.add_parser(
        "update",
        help="update containers' configuration (restart policy, memory, CPUs, pids)",
        description="Update the configuration of containers, as docker's `update`: the"
        " restart policy (taken at the container's next exit) and resource limits (applied"
        " to a running container at once, and to its later tasks).",
    )
    update.add_argument("--restart", metavar="POLICY", help="no, always, unless-stopped,"
                        " on-failure[:N]")  # fmt: skip
    update.add_argument("--memory", "-m", metavar="BYTES", help="memory limit (k, m, g)")
    update.add_argument("--cpus", type=float, help="number of CPUs")
    update.add_argument("--pids-limit", type=int, help="pids limit (-1: unlimited)")
    update.add_argument("containers", nargs="+", metavar="CONTAINER")
    update.set_defaults(handler="ctl.update:cmd_update+client")


def resources(args: argparse.Namespace) -> dict[str, Any]:
    """The OCI LinuxResources the flags ask for, as `run` writes them (ctl.spec)."""
    from ctl import spec as oci
    from ctl.commands import _memory

    out: dict[str, Any] = {}
    if args.cpus is not None:
        if args.cpus < 0:
            raise ValueError("invalid argument: range of CPUs is from 0.01 to the number of CPUs")
        out["cpu"] = {"quota": int(args.cpus * oci.CPU_PERIOD), "period": oci.CPU_PERIOD}
    if args.pids_limit is not None:
        out["pids"] = {"limit": args.pids_limit}
    if args.memory:
        out["memory"] = {"limit": _memory(args.memory)}
    return out


def _merged(spec: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any]:
    current = spec.setdefault("linux", {}).setdefault("resources", {})
    for key, values in wanted.items():
        current.setdefault(key, {}).update(values)
    return spec


def cmd_update(client: Client, args: argparse.Namespace) -> int:
    from ctl import restartopts

    wanted = resources(args)
    if args.restart is None and not wanted:
        raise ValueError("you must provide one or more flags when using this command")
    label = restartopts.checked(argparse.Namespace(restart=args.restart)) if args.restart else ""
    for name in args.containers:
        cid = client.resolve(name)
        if args.restart is not None:
            client.update_labels(cid, {RESTART_LABEL: label or "no"})
        if wanted:
            _update_resources(client, cid, wanted)
        print(name)
    return 0


def _update_resources(client: Client, cid: str, wanted: dict[str, Any]) -> None:
    from google.protobuf import any_pb2, field_mask_pb2

    from ctl.commands import _get, _spec
    from supervisor.api.containerd.services.containers.v1 import containers_pb2 as cpb
    from supervisor.api.containerd.services.tasks.v1 import tasks_pb2 as tpb
    from supervisor.api.containerd.types.task import task_pb2 as task_types

    container = client.containers.Get(_get(cid), metadata=client.md).container
    spec = _merged(_spec(container), wanted)
    container.spec.value = json.dumps(spec).encode()
    client.containers.Update(
        cpb.UpdateContainerRequest(
            container=container, update_mask=field_mask_pb2.FieldMask(paths=["spec"])
        ),
        metadata=client.md,
    )
    task = client.task(cid)
    if task is not None and task.status in (task_types.RUNNING, task_types.PAUSED):
        packed = any_pb2.Any(
            type_url=RESOURCES_TYPE_URL, value=json.dumps(spec["linux"]["resources"]).encode()
        )
        client.tasks.Update(
            tpb.UpdateTaskRequest(container_id=cid, resources=packed), metadata=client.md
        )
