"""`ctrctl volume create|ls|inspect|rm|prune`, and the volume calls of `run`, `rm` and `inspect`,
in docker's words and shapes.

Talks to ctrd's own `ctrd.services.volumes.v1.Volumes` service. `ls` prints docker's columns
(DRIVER, VOLUME NAME), names in natural order, or with `--format json` one JSON object per line
(docker's `{{json .}}`); `inspect` prints docker's JSON array; `rm` and `inspect` go on past a
missing volume and exit 1 at the end, as docker's; `prune` removes the unused anonymous volumes
(with `-a` every unused one: docker 23's rule, API 1.42) and says what it reclaimed.

For `run/create` (ctl.volopts checks the flags): `inherited` reads what `--volumes-from` brings,
`make` makes the volumes a new container names before it exists (anonymous ones with label
`ctrd.io/anonymous=true`, named ones when missing) and `unmake` removes them again when the
container could not be made; `remove_anonymous` is `rm -v`'s and `run --rm`'s (docker's rule:
the anonymous volumes, never named ones, and none another container still uses). `mounts_view`
and `host_config` are `inspect`'s `Mounts` and HostConfig parts. Only `argparse` is imported
at the top (ctrctl starts fast).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ctl.client import Client
    from ctl.volopts import BindMount, Storage, TmpfsMount, VolumeMount

SCOPE = "local"
PRUNE_ANONYMOUS = (
    "WARNING! This will remove anonymous local volumes not used by at least one container."
)
PRUNE_ALL = "WARNING! This will remove all local volumes not used by at least one container."
PRUNE_CONFLICT = "conflicting options: cannot specify both --all and --filter all=1"
NAME_CONFLICT = "conflicting options: either specify --name or provide positional arg, not both"


def _handler(parser: argparse.ArgumentParser, function: str) -> None:
    parser.set_defaults(handler=f"ctl.volumes:{function}+client")


def add_parsers(commands: Any) -> None:
    group = commands.add_parser(
        "volume", help="manage volumes", description="Manage volumes (the local driver's)."
    )
    sub = group.add_subparsers(dest="volume_command", required=True, metavar="COMMAND")
    create = sub.add_parser("create", help="create a volume; prints its name")
    create.add_argument("-d", "--driver", default="local", help="default %(default)s")
    create.add_argument(
        "-o", "--opt", action="append", default=[], metavar="KEY=VALUE",
        help="the local driver's options: type, device, o (e.g. type=tmpfs,device=tmpfs,"
        "o=size=64m)",
    )  # fmt: skip
    create.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    create.add_argument("--name", default="", help=argparse.SUPPRESS)
    create.add_argument("volume_name", nargs="?", default="", metavar="VOLUME")
    _handler(create, "create")
    ls = sub.add_parser("ls", aliases=["list"], help="list volumes")
    ls.add_argument("-q", "--quiet", action="store_true", help="only names")
    ls.add_argument("--format", choices=["table", "json"], default="table")
    ls.add_argument(
        "-f", "--filter", action="append", default=[], metavar="KEY=VALUE",
        help="dangling=true|false, name=SUBSTRING, label=KEY[=VALUE], driver=NAME",
    )  # fmt: skip
    _handler(ls, "ls")
    inspect = sub.add_parser("inspect", help="show volumes as JSON")
    inspect.add_argument("volumes", nargs="+", metavar="VOLUME")
    _handler(inspect, "inspect")
    rm = sub.add_parser("rm", aliases=["remove"], help="remove volumes (none in use)")
    rm.add_argument("-f", "--force", action="store_true", help="a missing volume is no error")
    rm.add_argument("volumes", nargs="+", metavar="VOLUME")
    _handler(rm, "rm")
    prune = sub.add_parser("prune", help="remove the unused anonymous volumes")
    prune.add_argument(
        "-a", "--all", action="store_true", help="every unused volume, not only anonymous ones"
    )
    prune.add_argument("-f", "--force", action="store_true", help="do not ask")
    prune.add_argument(
        "--filter", action="append", default=[], metavar="KEY=VALUE",
        help="label=KEY[=VALUE], label!=KEY[=VALUE]",
    )  # fmt: skip
    _handler(prune, "prune")


# --- the service ----------------------------------------------------------------------------------


def _stub(client: Client) -> Any:
    from ctl.client import stub
    from supervisor.api.ctrd.services.volumes.v1 import volumes_pb2

    return stub(client.channel, volumes_pb2, "Volumes")


def _pb() -> Any:
    from supervisor.api.ctrd.services.volumes.v1 import volumes_pb2

    return volumes_pb2


def _code(e: Exception) -> Any:
    import grpc

    return e.code() if isinstance(e, grpc.Call) else None


def _details(e: Exception) -> str:
    import grpc

    if not isinstance(e, grpc.Call):
        raise e
    details = str(e.details() or "")
    for kind in ("not found", "already exists", "invalid argument", "failed precondition"):
        details = details.removesuffix(f": {kind}")  # containerd's kinds, which docker lacks
    return details


def _not_found(e: Exception) -> bool:
    import grpc

    return bool(_code(e) == grpc.StatusCode.NOT_FOUND)


def get(client: Client, name: str) -> Any | None:
    """Volume `name`, or None when there is none."""
    try:
        return _stub(client).Get(_pb().GetVolumeRequest(name=name), metadata=client.md).volume
    except Exception as e:
        if _not_found(e):
            return None
        raise


def list_volumes(client: Client, filters: Sequence[str] = (), usage: bool = False) -> list[Any]:
    request = _pb().ListVolumesRequest(filters=list(filters), with_usage=usage)
    return list(_stub(client).List(request, metadata=client.md).volumes)


def list_names(client: Client) -> list[str]:
    """The names of the namespace's volumes (shell completion)."""
    return [v.name for v in list_volumes(client)]


def _pairs(words: Iterable[str], flag: str) -> dict[str, str]:
    found = {}
    for word in words:
        key, sep, value = word.partition("=")
        if flag == "--label" and not sep:  # opts.ValidateLabel
            raise ValueError(
                f'invalid argument "{word}" for "{flag}" flag: bad attribute format: {word}'
            )
        found[key] = value
    return found


def _created_at(timestamp: Any) -> str:
    """RFC 3339 in seconds, as dockerd writes a volume's CreatedAt (UTC here)."""
    import datetime as dt

    return dt.datetime.fromtimestamp(timestamp.seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def inspected(volume: Any) -> dict[str, Any]:
    """docker's `volume inspect` object."""
    return {
        "CreatedAt": _created_at(volume.created_at),
        "Driver": volume.driver or "local",
        "Labels": dict(sorted(volume.labels.items())),  # Go's JSON sorts a map's keys
        "Mountpoint": volume.mountpoint,
        "Name": volume.name,
        "Options": dict(sorted(volume.options.items())),
        "Scope": volume.scope or SCOPE,
    }


def natural(name: str) -> list[Any]:
    """sortorder.NaturalLess's order: runs of digits compare as numbers."""
    return [int(chunk) if i % 2 else chunk for i, chunk in enumerate(re.split(r"([0-9]+)", name))]


# --- the commands -----------------------------------------------------------------------------


def _daemon_error(e: Exception) -> int:
    print(f"Error response from daemon: {_details(e)}", file=sys.stderr)
    return 1


def create(client: Client, args: argparse.Namespace) -> int:
    if args.volume_name and args.name:
        print(NAME_CONFLICT, file=sys.stderr)
        return 1
    request = _pb().CreateVolumeRequest(
        name=args.volume_name or args.name,
        driver=args.driver,
        driver_opts=_pairs(args.opt, "--opt"),
        labels=_pairs(args.label, "--label"),
    )
    try:
        volume = _stub(client).Create(request, metadata=client.md).volume
    except Exception as e:
        return _daemon_error(e)
    print(volume.name)
    return 0


def ls(client: Client, args: argparse.Namespace) -> int:
    try:
        volumes = sorted(list_volumes(client, args.filter), key=lambda v: natural(v.name))
    except Exception as e:
        return _daemon_error(e)
    if args.quiet:
        for v in volumes:
            print(v.name)
    elif args.format == "json":
        for v in volumes:
            labels = ",".join(f"{k}={value}" for k, value in sorted(v.labels.items()))
            row = {
                "Driver": v.driver or "local", "Labels": labels, "Links": "N/A",
                "Mountpoint": v.mountpoint, "Name": v.name, "Scope": v.scope or SCOPE,
                "Size": "N/A",
            }  # fmt: skip
            print(json.dumps(row, separators=(",", ":")))
    else:
        rows = [("DRIVER", "VOLUME NAME"), *((v.driver or "local", v.name) for v in volumes)]
        # docker's tabwriter: cells at least 10 wide, 3 spaces of padding
        width = max(10, *(len(driver) + 3 for driver, _ in rows))
        for driver, name in rows:
            print(f"{driver:<{width}}{name}")
    return 0


def inspect(client: Client, args: argparse.Namespace) -> int:
    found, errors = [], []
    for name in args.volumes:
        volume = get(client, name)
        if volume is None:
            errors.append(f"Error: No such volume: {name}")
        else:
            found.append(inspected(volume))
    print(json.dumps(found, indent=4))
    for error in errors:
        print(error, file=sys.stderr)
    return 1 if errors else 0


def rm(client: Client, args: argparse.Namespace) -> int:
    errors = []
    for name in args.volumes:
        request = _pb().RemoveVolumeRequest(name=name, force=args.force)
        try:
            _stub(client).Remove(request, metadata=client.md)
        except Exception as e:
            if _not_found(e):
                errors.append(f"Error: No such volume: {name}")
            else:
                errors.append(f"Error response from daemon: {_details(e)}")
            continue
        print(name)
    for error in errors:
        print(error, file=sys.stderr)
    return 1 if errors else 0


def prune(client: Client, args: argparse.Namespace) -> int:
    from ctl.images import confirm
    from ctl.table import human_size

    filters = list(args.filter)
    if args.all:
        if any(f.partition("=")[0] == "all" for f in filters):
            print(PRUNE_CONFLICT, file=sys.stderr)
            return 1
        filters.append("all=true")
    if not confirm(PRUNE_ALL if args.all else PRUNE_ANONYMOUS, args.force):
        print("Total reclaimed space: 0B")
        return 0
    try:
        report = _stub(client).Prune(_pb().PruneVolumesRequest(filters=filters), metadata=client.md)
    except Exception as e:
        return _daemon_error(e)
    reclaimed = 0
    if report.volumes_deleted:
        print("Deleted Volumes:")
        for name in report.volumes_deleted:
            print(name)
        print()
        reclaimed = report.space_reclaimed
    print(f"Total reclaimed space: {human_size(reclaimed)}")
    return 0


# --- for run/create, rm and inspect ---------------------------------------------------------


def inherited(client: Client, storage: Storage) -> Storage:
    """`storage` with what its `--volumes-from` containers bring (a later one's mount on the
    same path over an earlier one's, as dockerd's); their names are resolved as everywhere
    (`No such container: X`)."""
    from ctl import volopts
    from ctl.commands import _get, _spec

    brought: dict[str, VolumeMount | BindMount | TmpfsMount] = {}
    for spec in storage.volumes_from:
        name, mode = volopts.parse_volumes_from(spec)
        cid = client.resolve(name)
        container = client.containers.Get(_get(cid), metadata=client.md).container
        mounts = _spec(container).get("mounts")
        mounts = [m for m in mounts if isinstance(m, dict)] if isinstance(mounts, list) else []
        for mount in volopts.inherit(volopts.points_of(container.labels), mounts, mode):
            brought[mount.target] = mount
    return storage._replace(inherited=tuple(brought.values()))


def make(client: Client, storage: Storage) -> list[str]:
    """Make what a new container's storage needs before the container exists: its anonymous
    volumes, its named volumes that are missing (with `--mount`'s volume-opt and
    volume-label), the missing host directories of its `-v` binds (as dockerd makes them).
    The names of the volumes made, for `unmake`."""
    import os

    from ctl.volopts import ANONYMOUS_LABEL

    made: list[str] = []
    try:
        for volume in storage.volumes:
            if not volume.anonymous and get(client, volume.name) is not None:
                continue
            labels = {ANONYMOUS_LABEL: "true"} if volume.anonymous else dict(volume.labels)
            request = _pb().CreateVolumeRequest(
                name=volume.name, driver="local", driver_opts=dict(volume.driver_opts),
                labels=labels,
            )  # fmt: skip
            _stub(client).Create(request, metadata=client.md)
            made.append(volume.name)
        for bind in storage.binds:
            if bind.make_source and not os.path.lexists(bind.source):
                os.makedirs(bind.source, 0o755, exist_ok=True)
    except BaseException:
        unmake(client, made)
        raise
    return made


def unmake(client: Client, names: Iterable[str]) -> None:
    """Remove the volumes `make` made (a container that could not be made leaves none)."""
    import contextlib

    for name in names:
        with contextlib.suppress(Exception):
            request = _pb().RemoveVolumeRequest(name=name, force=True)
            _stub(client).Remove(request, metadata=client.md)


def remove_anonymous(client: Client, labels: Mapping[str, str]) -> None:
    """`rm -v` and `run --rm`: the anonymous volumes of a container just removed (whatever
    made them: ctrctl, or a `ctr` label), unless another container still uses one, which is
    no error (dockerd's removeMountPoints)."""
    import grpc

    from ctl.volopts import ANONYMOUS_LABEL, label_volumes

    for wanted in label_volumes(labels):
        volume = get(client, wanted["name"])
        if volume is None or volume.labels.get(ANONYMOUS_LABEL) != "true":
            continue
        try:
            request = _pb().RemoveVolumeRequest(name=volume.name)
            _stub(client).Remove(request, metadata=client.md)
        except grpc.RpcError as e:
            if _code(e) not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
                raise


def mounts_view(client: Client, labels: Mapping[str, str]) -> list[dict[str, Any]]:
    """docker's `Mounts` of a container: Type, Name, Source, Destination, Driver, Mode, RW,
    Propagation (Name and Driver for volumes only); a volume's Source is its mountpoint ("" if
    the volume is gone)."""
    from ctl.volopts import points_of

    shown = []
    for point in points_of(labels):
        view: dict[str, Any] = {"Type": point.get("Type", "")}
        if point.get("Type") == "volume":
            volume = get(client, str(point.get("Name", "")))
            view["Name"] = point.get("Name", "")
            view["Source"] = volume.mountpoint if volume is not None else ""
        else:
            view["Source"] = point.get("Source", "")
        view["Destination"] = point.get("Destination", "")
        if point.get("Type") == "volume":
            view["Driver"] = point.get("Driver") or "local"
        view["Mode"] = point.get("Mode", "")
        view["RW"] = bool(point.get("RW", True))
        view["Propagation"] = point.get("Propagation", "")
        shown.append(view)
    return shown


def host_config(labels: Mapping[str, str]) -> dict[str, Any]:
    """The storage part of docker's HostConfig: Binds and VolumesFrom (null when none), Mounts
    and Tmpfs (left out when none), as `run` was given them."""
    from ctl.volopts import kept

    saved = kept(labels)
    shown: dict[str, Any] = {"Binds": saved.get("Binds"), "VolumesFrom": saved.get("VolumesFrom")}
    for key in ("Mounts", "Tmpfs"):
        if saved.get(key):
            shown[key] = saved[key]
    return shown


def usage_row(client: Client) -> dict[str, Any]:
    """docker's `system df` row "Local Volumes": how many, how many in use (a container names
    them), their size and what the unused ones take (sizes unknown, -1, left out)."""
    volumes = list_volumes(client, usage=True)
    sizes = [(v.usage.size, v.usage.ref_count) for v in volumes if v.usage.size >= 0]
    return {
        "type": "Local Volumes",
        "total": len(volumes),
        "active": sum(1 for v in volumes if v.usage.ref_count > 0),
        "size": sum(size for size, _ in sizes),
        "reclaimable": sum(size for size, refs in sizes if refs == 0),
    }
