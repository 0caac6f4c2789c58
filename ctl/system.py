"""`ctrctl system info|df|prune`: the daemon and the disk it uses, as docker shows them.

`info` asks ctrd what it knows (version, namespaces, containers and images of the current
namespace, its plugins: runtimes and snapshotters) and reads the host's facts (kernel, OS,
CPUs, memory, cgroups) locally: ctrctl reaches ctrd through a unix socket, so both run on
the same machine.

`df` counts five kinds of things in the current namespace:

- Images: SIZE is what they hold on disk, each blob and snapshot counted once however many
  images share it (their content blobs and their layers' unpacked snapshots); ACTIVE images
  are used by a container; RECLAIMABLE is what removing the unused ones would free.
- Containers: SIZE is their writable layers (snapshot usage); ACTIVE ones have a running or
  paused task; RECLAIMABLE is the size of the others.
- Local Volumes: docker's row; ACTIVE volumes are named by a container (running or not);
  RECLAIMABLE is what the others hold (a volume with driver options has no size, as in docker).
- Content: every blob of the content store; ACTIVE blobs belong to an image; RECLAIMABLE is
  what no image holds (the garbage collector takes it unless a lease or label keeps it).
- Snapshots: every snapshot of the default snapshotter; ACTIVE ones belong to an image or a
  container; RECLAIMABLE is the size of the others.

`df -v` shows docker's three tables: each image (SIZE, SHARED SIZE: what of it another image
holds too, UNIQUE SIZE, CONTAINERS using it), each container (LOCAL VOLUMES, the SIZE of its
writable layer, STATUS as `ps`) and each volume (LINKS: the containers naming it, SIZE, `N/A`
when unknown). No build cache: ctrd has no builder.

`prune` removes stopped containers (created or exited: without a running or paused task),
then images as `image prune` does, and reports the space freed on disk (content plus
snapshots, measured before and after).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ctl.client import Client

SYSTEM_PRUNE_WARNING = "WARNING! This will remove:\n  - all stopped containers\n  - {images}\n"


def add_parsers(commands: Any) -> None:
    group = commands.add_parser(
        "system", help="manage ctrd", description="The daemon and its disk: info, df, prune."
    )
    sub = group.add_subparsers(dest="system_command", required=True, metavar="COMMAND")
    info = sub.add_parser(
        "info",
        help="show system-wide information",
        description="The daemon (version, namespaces, containers, images, runtimes,"
        " snapshotters) and the host it runs on.",
    )
    info.add_argument("--format", choices=["text", "json"], default="text")
    info.set_defaults(handler="ctl.system:info+client")
    df = sub.add_parser(
        "df",
        help="show disk usage",
        description="TYPE TOTAL ACTIVE SIZE RECLAIMABLE for images, containers, content and"
        " snapshots of the current namespace (each blob and snapshot counted once).",
    )
    df.add_argument("--format", choices=["table", "json"], default="table")
    df.add_argument(
        "-v", "--verbose", action="store_true",
        help="each image, container and volume, as docker's -v shows them",
    )  # fmt: skip
    df.set_defaults(handler="ctl.system:df+client")
    prune = sub.add_parser(
        "prune",
        help="remove stopped containers and unused images",
        description="Remove stopped containers, then dangling images (with -a: every image"
        " no container uses); print the space freed.",
    )
    prune.add_argument("-a", "--all", action="store_true", help="every image no container uses")
    prune.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation")
    prune.set_defaults(handler="ctl.system:prune+client")


# --- disk usage ---------------------------------------------------------------------------------


def list_content(client: Client) -> list[Any]:
    from supervisor.api.containerd.services.content.v1 import content_pb2 as pb

    request = pb.ListContentRequest()
    return [info for r in client.content.List(request, metadata=client.md) for info in r.info]


def list_snapshots(client: Client, snapshotter: str) -> list[Any]:
    from supervisor.api.containerd.services.snapshots.v1 import snapshots_pb2 as spb

    request = spb.ListSnapshotsRequest(snapshotter=snapshotter)
    return [info for r in client.snapshots.List(request, metadata=client.md) for info in r.info]


def snapshot_usage(client: Client, snapshotter: str, key: str) -> int:
    import grpc

    from supervisor.api.containerd.services.snapshots.v1 import snapshots_pb2 as spb

    try:
        return int(
            client.snapshots.Usage(
                spb.UsageRequest(snapshotter=snapshotter, key=key), metadata=client.md
            ).size
        )
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return 0  # removed since it was listed


def disk_total(client: Client) -> int:
    """Bytes of the namespace's content and default snapshots (what prune frees comes off)."""
    from ctl.client import SNAPSHOTTER

    content = sum(info.size for info in list_content(client))
    snapshots = sum(
        snapshot_usage(client, SNAPSHOTTER, info.name)
        for info in list_snapshots(client, SNAPSHOTTER)
    )
    return int(content + snapshots)


@dataclass
class _Usage:
    """What `df` reads from the daemon, once."""

    images: list[Any]  # ctl.images.ImageInfo
    used: dict[str, list[str]]  # container ids by image target digest
    containers: list[Any]
    tasks: dict[str, Any]
    blobs: dict[str, int]  # content digest -> size
    snapshots: dict[str, int]  # snapshot key -> usage


def _gather(client: Client) -> _Usage:
    from ctl.client import SNAPSHOTTER
    from ctl.images import all_images, users

    images = all_images(client)
    return _Usage(
        images=images,
        used=users(client, images),
        containers=client.list_containers(),
        tasks=client.all_tasks(),
        blobs={info.digest: int(info.size) for info in list_content(client)},
        snapshots={
            info.name: snapshot_usage(client, SNAPSHOTTER, info.name)
            for info in list_snapshots(client, SNAPSHOTTER)
        },
    )


def usage_report(client: Client, found: _Usage | None = None) -> list[dict[str, Any]]:
    from supervisor.api.containerd.types.task import task_pb2 as task_types

    found = found or _gather(client)
    images, used, containers = found.images, found.used, found.containers
    blobs, snapshots = found.blobs, found.snapshots

    def held(selected: list[Any]) -> tuple[set[str], set[str]]:
        return (
            {d for i in selected for d in i.blobs if d in blobs},
            {c for i in selected for c in i.chain if c in snapshots},
        )

    def size(held_blobs: set[str], held_snapshots: set[str]) -> int:
        return sum(blobs[d] for d in held_blobs) + sum(snapshots[s] for s in held_snapshots)

    all_blobs, all_chains = held(images)
    active_images = [i for i in images if i.target["digest"] in used]
    active_blobs, active_chains = held(active_images)
    images_size = size(all_blobs, all_chains)

    running = {task_types.RUNNING, task_types.PAUSED}
    container_rows = []
    for container in containers:
        task = found.tasks.get(container.id)
        key_size = snapshots.get(container.snapshot_key, 0)
        container_rows.append((task is not None and task.status in running, key_size))
    containers_size = sum(s for _, s in container_rows)

    container_keys = {c.snapshot_key for c in containers}
    snapshot_active = {k for k in snapshots if k in container_keys or k in all_chains}
    snapshots_size = sum(snapshots.values())
    content_size = sum(blobs.values())
    return [
        _row(
            "Images",
            len(images),
            len(active_images),
            images_size,
            images_size - size(active_blobs, active_chains),
        ),
        _row(
            "Containers",
            len(containers),
            sum(1 for active, _ in container_rows if active),
            containers_size,
            sum(s for active, s in container_rows if not active),
        ),
        _volumes_row(client),
        _row(
            "Content",
            len(blobs),
            len(all_blobs),
            content_size,
            sum(s for d, s in blobs.items() if d not in all_blobs),
        ),
        _row(
            "Snapshots",
            len(snapshots),
            len(snapshot_active),
            snapshots_size,
            sum(s for k, s in snapshots.items() if k not in snapshot_active),
        ),
    ]


def _volumes_row(client: Client) -> dict[str, Any]:
    """docker's "Local Volumes" row (ctl.volumes)."""
    from ctl.volumes import usage_row

    return usage_row(client)


def _row(kind: str, total: int, active: int, size: int, reclaimable: int) -> dict[str, Any]:
    return {
        "type": kind,
        "total": total,
        "active": active,
        "size": size,
        "reclaimable": reclaimable,
    }


def verbose_report(client: Client, found: _Usage | None = None) -> dict[str, list[Any]]:
    """docker's `system df -v`: each image (its size, what of it other images share, how many
    containers use it), each container (its writable layer, its volumes) and each volume."""
    from ctl.client import NAME_LABEL
    from ctl.commands import STATUS, _process, _status
    from ctl.volopts import points_of
    from ctl.volumes import list_volumes

    found = found or _gather(client)
    now = time.time()
    holders: dict[str, set[str]] = {}  # a blob or snapshot -> the images (by id) holding it
    for image in found.images:
        for item in _items(image, found):
            holders.setdefault(item, set()).add(image.target["digest"])
    images = []
    for image in sorted(found.images, key=lambda i: (-i.created, i.name)):
        items = _items(image, found)
        size = sum(items.values())
        shared = sum(n for item, n in items.items() if len(holders[item]) > 1)
        images.append({
            "name": image.name, "id": image.id, "created": image.created,
            "size": size, "sharedSize": shared, "uniqueSize": size - shared,
            "containers": len(found.used.get(image.target["digest"], ())),
        })  # fmt: skip
    containers = []
    ordered = sorted(
        found.containers, key=lambda c: (c.created_at.seconds, c.created_at.nanos), reverse=True
    )
    for container in ordered:
        task = found.tasks.get(container.id)
        volumes = [p for p in points_of(container.labels) if p.get("Type") == "volume"]
        containers.append({
            "id": container.id, "image": container.image,
            "command": " ".join(map(str, _process(container).get("args", []))),
            "localVolumes": len(volumes),
            "size": found.snapshots.get(container.snapshot_key, 0),
            "created": container.created_at.seconds,
            "state": STATUS.get(task.status, "unknown") if task is not None else "created",
            "status": _status(task, now), "name": container.labels.get(NAME_LABEL, ""),
        })  # fmt: skip
    volumes = [
        {"name": v.name, "links": int(v.usage.ref_count), "size": int(v.usage.size)}
        for v in sorted(list_volumes(client, usage=True), key=lambda v: v.name)
    ]
    return {"images": images, "containers": containers, "volumes": volumes}


def _items(image: Any, found: _Usage) -> dict[str, int]:
    """The blobs and unpacked layers an image holds, with their sizes."""
    items = {d: found.blobs[d] for d in image.blobs if d in found.blobs}
    items.update((c, found.snapshots[c]) for c in image.chain if c in found.snapshots)
    return items


def df(client: Client, args: argparse.Namespace) -> int:
    from ctl.table import human_size, table

    found = _gather(client)
    rows = usage_report(client, found)
    verbose = verbose_report(client, found) if args.verbose else None
    if args.format == "json":
        print(json.dumps(rows if verbose is None else {"summary": rows, **verbose}, indent=2))
        return 0
    if verbose is not None:
        _print_verbose(verbose)
        return 0
    cells = []
    for row in rows:
        reclaimable = human_size(row["reclaimable"])
        if row["size"]:
            reclaimable += f" ({row['reclaimable'] * 100 // row['size']}%)"
        cells.append(
            [row["type"], str(row["total"]), str(row["active"]), human_size(row["size"]),
             reclaimable]
        )  # fmt: skip
    table(["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"], cells)
    return 0


def _print_verbose(report: dict[str, list[Any]]) -> None:
    """The three tables of `docker system df -v`, each under its title."""
    from ctl.client import short
    from ctl.commands import _quoted
    from ctl.images import _short, repository_and_tag
    from ctl.table import ago, human_size, table

    now = time.time()
    print("Images space usage:\n")
    rows = []
    for i in report["images"]:
        repository, tag = repository_and_tag(i["name"])
        rows.append([
            repository, tag, _short(i["id"]), ago(i["created"], now), human_size(i["size"], 3),
            human_size(i["sharedSize"], 3), human_size(i["uniqueSize"], 3), str(i["containers"]),
        ])  # fmt: skip
    table(["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE", "SHARED SIZE", "UNIQUE SIZE",
           "CONTAINERS"], rows, shrink=(0, 1))  # fmt: skip
    print("\nContainers space usage:\n")
    table(
        ["CONTAINER ID", "IMAGE", "COMMAND", "LOCAL VOLUMES", "SIZE", "CREATED", "STATUS",
         "NAMES"],
        [[short(c["id"]), c["image"], _quoted(c["command"]), str(c["localVolumes"]),
          human_size(c["size"], 3), ago(c["created"], now), c["status"], c["name"]]
         for c in report["containers"]],
        shrink=(1, 2),
    )  # fmt: skip
    print("\nLocal Volumes space usage:\n")
    table(
        ["VOLUME NAME", "LINKS", "SIZE"],
        [[v["name"], str(v["links"]), human_size(v["size"], 3) if v["size"] >= 0 else "N/A"]
         for v in report["volumes"]],
    )  # fmt: skip


# --- prune --------------------------------------------------------------------------------------


def prune(client: Client, args: argparse.Namespace) -> int:
    from ctl.images import confirm, prune_and_report
    from supervisor.api.containerd.types.task import task_pb2 as task_types

    images = (
        "all images without at least one container associated to them"
        if args.all
        else "all dangling images"
    )
    if not confirm(SYSTEM_PRUNE_WARNING.format(images=images), args.force):
        return 0
    before = disk_total(client)
    removed = []
    for container in client.list_containers():
        task = client.task(container.id)
        if task is None or task.status == task_types.STOPPED:
            client.remove(container.id)
            removed.append(container.id)
    if removed:
        print("Deleted Containers:")
        for cid in removed:
            print(cid)
        print()
    prune_and_report(client, args.all, before)
    return 0


# --- info ---------------------------------------------------------------------------------------


def gather(client: Client) -> dict[str, Any]:
    from google.protobuf import empty_pb2

    from ctl.commands import STATUS
    from supervisor.api.containerd.services.introspection.v1 import introspection_pb2 as ipb
    from supervisor.api.containerd.services.introspection.v1 import introspection_pb2_grpc
    from supervisor.api.containerd.services.namespaces.v1 import namespaces_pb2 as npb
    from supervisor.api.containerd.services.namespaces.v1 import namespaces_pb2_grpc
    from supervisor.api.containerd.services.version.v1 import version_pb2_grpc

    version = version_pb2_grpc.VersionStub(client.channel).Version(empty_pb2.Empty(), timeout=10)
    introspection = introspection_pb2_grpc.IntrospectionStub(client.channel)
    server = introspection.Server(empty_pb2.Empty(), timeout=10)
    plugins = introspection.Plugins(ipb.PluginsRequest(), timeout=10).plugins
    namespaces = namespaces_pb2_grpc.NamespacesStub(client.channel).List(
        npb.ListNamespacesRequest(), timeout=10
    )
    states = {"running": 0, "paused": 0, "stopped": 0}
    containers = client.list_containers()
    for container in containers:
        task = client.task(container.id)
        state = STATUS.get(task.status, "") if task is not None else ""
        states[state if state in ("running", "paused") else "stopped"] += 1

    def of_type(kind: str) -> list[Any]:
        return [p for p in plugins if p.type == kind]

    snapshotters = [p.id for p in of_type("io.containerd.snapshotter.v1")]
    runtime = next(iter(of_type("io.containerd.runtime.v2")), None)
    dirs = {
        key: runtime.exports[key] for key in ("root", "state") if runtime and key in runtime.exports
    }
    from ctl.client import RUNTIME, SNAPSHOTTER

    info: dict[str, Any] = {
        "serverVersion": version.version,
        "revision": version.revision,
        "uuid": server.uuid,
        "namespace": client.namespace,
        "namespaces": sorted(n.name for n in namespaces.namespaces),
        "containers": len(containers),
        "containersRunning": states["running"],
        "containersPaused": states["paused"],
        "containersStopped": states["stopped"],
        "images": len(client.list_images()),
        "runtimes": [RUNTIME] if of_type("io.containerd.runtime.v2") else [],
        "ociRuntimes": _oci_runtimes(),
        "defaultRuntime": "runc",
        "snapshotters": snapshotters,
        "defaultSnapshotter": SNAPSHOTTER,
        **({"rootDir": dirs["root"]} if "root" in dirs else {}),
        **({"stateDir": dirs["state"]} if "state" in dirs else {}),
    }
    info.update(host())
    return info


def _oci_runtimes() -> dict[str, str]:
    """The OCI runtimes on PATH with their versions (`runc --version`'s first line)."""
    import shutil
    import subprocess

    found = {}
    for name in ("runc", "crun"):
        path = shutil.which(name)
        if path is None:
            continue
        try:
            out = subprocess.run(
                [path, "--version"], capture_output=True, text=True, timeout=5
            ).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        found[name] = (out.splitlines() or [""])[0].split(" version ")[-1].strip() or path
    return found


def host() -> dict[str, Any]:
    """The machine's facts, read locally (ctrd is on this machine: its socket is)."""
    from pathlib import Path

    uname = os.uname()
    pretty = ""
    os_release = Path("/etc/os-release")
    if os_release.exists():
        for line in os_release.read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                pretty = line.partition("=")[2].strip().strip('"')
    memory = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory = int(line.split()[1]) * 1024
    cgroup_version = "2" if Path("/sys/fs/cgroup/cgroup.controllers").exists() else "1"
    return {
        "kernelVersion": uname.release,
        "operatingSystem": pretty or uname.sysname,
        "osType": uname.sysname.lower(),
        "architecture": uname.machine,
        "cpus": os.cpu_count() or 0,
        "memory": memory,
        "name": uname.nodename,
        "cgroupDriver": "cgroupfs",  # ctrd's specs name cgroups by path (/<namespace>/<id>)
        "cgroupVersion": cgroup_version,
    }


def info(client: Client, args: argparse.Namespace) -> int:
    from ctl.table import bytes_size

    data = gather(client)
    if args.format == "json":
        print(json.dumps(data, indent=2))
        return 0
    runtimes = " ".join([*data["runtimes"], *data["ociRuntimes"]])
    lines = [
        "Server:",
        f" Containers: {data['containers']}",
        f"  Running: {data['containersRunning']}",
        f"  Paused: {data['containersPaused']}",
        f"  Stopped: {data['containersStopped']}",
        f" Images: {data['images']}",
        f" Namespace: {data['namespace']}",
        f" Namespaces: {', '.join(data['namespaces']) or '-'}",
        f" Server Version: {data['serverVersion']}",
        f" Revision: {data['revision'] or '-'}",
        f" Snapshotters: {' '.join(data['snapshotters'])}",
        f" Default Snapshotter: {data['defaultSnapshotter']}",
        f" Cgroup Driver: {data['cgroupDriver']}",
        f" Cgroup Version: {data['cgroupVersion']}",
        f" Runtimes: {runtimes}",
        f" Default Runtime: {data['defaultRuntime']}",
        *(f"  {name} version: {v}" for name, v in data["ociRuntimes"].items()),
        f" Kernel Version: {data['kernelVersion']}",
        f" Operating System: {data['operatingSystem']}",
        f" OSType: {data['osType']}",
        f" Architecture: {data['architecture']}",
        f" CPUs: {data['cpus']}",
        f" Total Memory: {bytes_size(data['memory'])}",
        f" Name: {data['name']}",
        f" ID: {data['uuid']}",
        *([f" Root Dir: {data['rootDir']}"] if "rootDir" in data else []),
        *([f" State Dir: {data['stateDir']}"] if "stateDir" in data else []),
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
