"""The lower-level groups, as ctr has them, in docker's presentation: `content`, `snapshots`,
`leases`, `namespaces`.

Each mirrors ctr's subcommands and columns (`ctr content ls` is DIGEST SIZE AGE LABELS, and
so on), prints through the shared table printer, takes `--format json` where it lists and
`-q` (the first column only) where a docker listing would. Labels are `key=value` words; an
empty value (`key=`) removes the label, as with ctr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ctl.client import Client

SNAPSHOTTER = "overlayfs"  # ctl.client's default (not imported here: it brings grpc)
EXPIRE_LABEL = "containerd.io/gc.expire"  # what the garbage collector reads on a lease


def _handler(parser: argparse.ArgumentParser, function: str) -> None:
    parser.set_defaults(handler=f"ctl.groups:{function}+client")


def _list_options(parser: argparse.ArgumentParser, quiet: str) -> None:
    parser.add_argument("-q", "--quiet", action="store_true", help=quiet)
    parser.add_argument("--format", choices=["table", "json"], default="table")


def add_parsers(commands: Any) -> None:
    _content(commands)
    _snapshots(commands)
    _leases(commands)
    _namespaces(commands)


def _content(commands: Any) -> None:
    group = commands.add_parser(
        "content", help="manage content (blobs)", description="The content store's blobs."
    )
    sub = group.add_subparsers(dest="content_command", required=True, metavar="COMMAND")
    ls = sub.add_parser("ls", aliases=["list"], help="list blobs: DIGEST SIZE AGE LABELS")
    _list_options(ls, "digests only")
    _handler(ls, "content_ls")
    get = sub.add_parser("get", help="write a blob to stdout")
    get.add_argument("digest", metavar="DIGEST")
    _handler(get, "content_get")
    rm = sub.add_parser("rm", aliases=["delete", "del", "remove"], help="remove blobs")
    rm.add_argument("digests", nargs="+", metavar="DIGEST")
    _handler(rm, "content_rm")
    label = sub.add_parser(
        "label", help="set (key=value) or remove (key=) a blob's labels; none: show them"
    )
    label.add_argument("digest", metavar="DIGEST")
    label.add_argument("labels", nargs="*", metavar="KEY=VALUE")
    _handler(label, "content_label")
    active = sub.add_parser("active", help="uploads in progress: REF SIZE AGE")
    _list_options(active, "refs only")
    _handler(active, "content_active")


def _snapshots(commands: Any) -> None:
    group = commands.add_parser(
        "snapshots",
        aliases=["snapshot"],
        help="manage snapshots",
        description=f"A snapshotter's snapshots (default {SNAPSHOTTER}).",
    )
    group.add_argument("--snapshotter", default=SNAPSHOTTER, help="default %(default)s")
    sub = group.add_subparsers(dest="snapshots_command", required=True, metavar="COMMAND")
    ls = sub.add_parser("ls", aliases=["list"], help="list snapshots: KEY PARENT KIND")
    _list_options(ls, "keys only")
    _handler(ls, "snapshots_ls")
    info = sub.add_parser("info", help="show a snapshot as JSON")
    info.add_argument("key", metavar="KEY")
    _handler(info, "snapshots_info")
    usage = sub.add_parser("usage", help="disk usage: KEY SIZE INODES (all, or those named)")
    usage.add_argument("keys", nargs="*", metavar="KEY")
    usage.add_argument("--format", choices=["table", "json"], default="table")
    _handler(usage, "snapshots_usage")
    rm = sub.add_parser("rm", aliases=["delete", "del", "remove"], help="remove snapshots")
    rm.add_argument("keys", nargs="+", metavar="KEY")
    _handler(rm, "snapshots_rm")
    tree = sub.add_parser("tree", help="show snapshots as a tree of parents and children")
    _handler(tree, "snapshots_tree")


def _leases(commands: Any) -> None:
    group = commands.add_parser(
        "leases", help="manage leases", description="Leases keep resources from the garbage"
        " collector while they live."
    )  # fmt: skip
    sub = group.add_subparsers(dest="leases_command", required=True, metavar="COMMAND")
    ls = sub.add_parser("ls", aliases=["list"], help="list leases: ID CREATED AT LABELS")
    _list_options(ls, "ids only")
    _handler(ls, "leases_ls")
    create = sub.add_parser("create", help="create a lease; prints its id")
    create.add_argument("--id", default="", help="the lease's id (default: a random one)")
    create.add_argument(
        "--expires",
        "-x",
        default="24h",
        metavar="DURATION",
        help="expire after this long (Go duration: 30m, 24h; 0: never; default %(default)s)",
    )
    create.add_argument(
        "--label", "-l", action="append", default=[], metavar="KEY=VALUE", help="a label"
    )
    _handler(create, "leases_create")
    rm = sub.add_parser("rm", aliases=["delete", "remove"], help="remove leases")
    rm.add_argument("--sync", action="store_true", help="collect garbage before returning")
    rm.add_argument("ids", nargs="+", metavar="ID")
    _handler(rm, "leases_rm")


def _namespaces(commands: Any) -> None:
    group = commands.add_parser(
        "namespaces", aliases=["namespace", "ns"], help="manage namespaces",
        description="Namespaces isolate images, containers, content and snapshots.",
    )  # fmt: skip
    sub = group.add_subparsers(dest="namespaces_command", required=True, metavar="COMMAND")
    ls = sub.add_parser("ls", aliases=["list"], help="list namespaces: NAME LABELS")
    _list_options(ls, "names only")
    _handler(ls, "namespaces_ls")
    create = sub.add_parser("create", help="create a namespace")
    create.add_argument("name", metavar="NAME")
    create.add_argument("labels", nargs="*", metavar="KEY=VALUE")
    _handler(create, "namespaces_create")
    rm = sub.add_parser("rm", aliases=["delete", "remove"], help="remove empty namespaces")
    rm.add_argument("names", nargs="+", metavar="NAME")
    _handler(rm, "namespaces_rm")
    label = sub.add_parser(
        "label", help="set (key=value) or remove (key=) a namespace's labels; none: show them"
    )
    label.add_argument("name", metavar="NAME")
    label.add_argument("labels", nargs="*", metavar="KEY=VALUE")
    _handler(label, "namespaces_label")


# --- shared -------------------------------------------------------------------------------------


def parse_labels(words: Iterable[str]) -> dict[str, str]:
    labels = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not key or not sep:
            raise ValueError(f'label "{word}": give key=value (key= removes it)')
        labels[key] = value
    return labels


def format_labels(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"


def _seconds(timestamp: Any) -> float:
    return float(timestamp.seconds + timestamp.nanos / 1e9)


def _rfc3339(timestamp: Any) -> str:
    return str(timestamp.ToJsonString()) if timestamp.seconds else ""


def _rfc3339_seconds(timestamp: Any) -> str:
    """As ctr's tables: to the second."""
    import datetime as dt

    when = dt.datetime.fromtimestamp(timestamp.seconds, dt.UTC)
    return when.isoformat().replace("+00:00", "Z") if timestamp.seconds else ""


def _show(
    args: argparse.Namespace,
    header: list[str],
    items: list[Any],
    cells: Callable[[Any], list[str]],
    as_json: Callable[[Any], dict[str, Any]],
    shrink: tuple[int, ...] = (),
) -> int:
    from ctl.table import table

    if getattr(args, "quiet", False):
        for item in items:
            print(cells(item)[0])
    elif args.format == "json":
        print(json.dumps([as_json(i) for i in items], indent=2))
    else:
        table(header, [cells(i) for i in items], shrink=shrink)
    return 0


def _update_mask(labels: dict[str, str]) -> Any:
    from google.protobuf import field_mask_pb2

    return field_mask_pb2.FieldMask(paths=[f"labels.{k}" for k in labels])


# --- content ------------------------------------------------------------------------------------


def content_ls(client: Client, args: argparse.Namespace) -> int:
    from ctl.system import list_content
    from ctl.table import human_duration, human_size

    now = time.time()
    infos = sorted(list_content(client), key=lambda i: i.digest)
    return _show(
        args,
        ["DIGEST", "SIZE", "AGE", "LABELS"],
        infos,
        lambda i: [i.digest, human_size(i.size), human_duration(now - _seconds(i.created_at)),
                   format_labels(dict(i.labels))],
        lambda i: {"digest": i.digest, "size": i.size, "createdAt": _rfc3339(i.created_at),
                   "updatedAt": _rfc3339(i.updated_at), "labels": dict(i.labels)},
        shrink=(3,),
    )  # fmt: skip


def content_get(client: Client, args: argparse.Namespace) -> int:
    from supervisor.api.containerd.services.content.v1 import content_pb2 as pb

    request = pb.ReadContentRequest(digest=args.digest)
    for chunk in client.content.Read(request, metadata=client.md):
        sys.stdout.buffer.write(chunk.data)
    sys.stdout.buffer.flush()
    return 0


def content_rm(client: Client, args: argparse.Namespace) -> int:
    from supervisor.api.containerd.services.content.v1 import content_pb2 as pb

    for digest in args.digests:
        client.content.Delete(pb.DeleteContentRequest(digest=digest), metadata=client.md)
        print(digest)
    return 0


def content_label(client: Client, args: argparse.Namespace) -> int:
    from supervisor.api.containerd.services.content.v1 import content_pb2 as pb

    labels = parse_labels(args.labels)
    if labels:
        request = pb.UpdateRequest(
            info=pb.Info(digest=args.digest, labels={k: v for k, v in labels.items() if v}),
            update_mask=_update_mask(labels),
        )
        info = client.content.Update(request, metadata=client.md).info
    else:
        info = client.content.Info(pb.InfoRequest(digest=args.digest), metadata=client.md).info
    print(format_labels(dict(info.labels)))
    return 0


def content_active(client: Client, args: argparse.Namespace) -> int:
    from ctl.table import human_duration, human_size
    from supervisor.api.containerd.services.content.v1 import content_pb2 as pb

    now = time.time()
    statuses = client.content.ListStatuses(pb.ListStatusesRequest(), metadata=client.md).statuses
    return _show(
        args,
        ["REF", "SIZE", "AGE"],
        sorted(statuses, key=lambda s: s.ref),
        lambda s: [s.ref, f"{human_size(s.offset)}/{human_size(s.total)}" if s.total
                   else human_size(s.offset), human_duration(now - _seconds(s.started_at))],
        lambda s: {"ref": s.ref, "offset": s.offset, "total": s.total, "expected": s.expected,
                   "startedAt": _rfc3339(s.started_at), "updatedAt": _rfc3339(s.updated_at)},
    )  # fmt: skip


# --- snapshots ----------------------------------------------------------------------------------

KINDS = {0: "Unknown", 1: "View", 2: "Active", 3: "Committed"}


def _snapshot_json(info: Any) -> dict[str, Any]:
    return {
        "name": info.name,
        "parent": info.parent,
        "kind": KINDS.get(info.kind, str(info.kind)),
        "createdAt": _rfc3339(info.created_at),
        "updatedAt": _rfc3339(info.updated_at),
        "labels": dict(info.labels),
    }


def snapshots_ls(client: Client, args: argparse.Namespace) -> int:
    from ctl.system import list_snapshots

    infos = sorted(list_snapshots(client, args.snapshotter), key=lambda i: i.name)
    return _show(
        args,
        ["KEY", "PARENT", "KIND"],
        infos,
        lambda i: [i.name, i.parent, KINDS.get(i.kind, str(i.kind))],
        _snapshot_json,
        shrink=(0, 1),
    )


def snapshots_info(client: Client, args: argparse.Namespace) -> int:
    from supervisor.api.containerd.services.snapshots.v1 import snapshots_pb2 as spb

    info = client.snapshots.Stat(
        spb.StatSnapshotRequest(snapshotter=args.snapshotter, key=args.key), metadata=client.md
    ).info
    print(json.dumps(_snapshot_json(info), indent=2))
    return 0


def snapshots_usage(client: Client, args: argparse.Namespace) -> int:
    from ctl.system import list_snapshots
    from ctl.table import human_size, table
    from supervisor.api.containerd.services.snapshots.v1 import snapshots_pb2 as spb

    keys = args.keys or sorted(i.name for i in list_snapshots(client, args.snapshotter))
    usages = []
    for key in keys:
        usage = client.snapshots.Usage(
            spb.UsageRequest(snapshotter=args.snapshotter, key=key), metadata=client.md
        )
        usages.append({"key": key, "size": usage.size, "inodes": usage.inodes})
    if args.format == "json":
        print(json.dumps(usages, indent=2))
        return 0
    table(
        ["KEY", "SIZE", "INODES"],
        [[u["key"], human_size(u["size"]), str(u["inodes"])] for u in usages],
        shrink=(0,),
    )
    return 0


def snapshots_rm(client: Client, args: argparse.Namespace) -> int:
    from supervisor.api.containerd.services.snapshots.v1 import snapshots_pb2 as spb

    for key in args.keys:
        client.snapshots.Remove(
            spb.RemoveSnapshotRequest(snapshotter=args.snapshotter, key=key), metadata=client.md
        )
        print(key)
    return 0


def snapshots_tree(client: Client, args: argparse.Namespace) -> int:
    from ctl.system import list_snapshots

    infos = list_snapshots(client, args.snapshotter)
    names = {i.name for i in infos}
    children: dict[str, list[str]] = {}
    for info in infos:
        parent = info.parent if info.parent in names else ""
        children.setdefault(parent, []).append(info.name)
    for line in tree_lines(children):
        print(line)
    return 0


def tree_lines(children: dict[str, list[str]]) -> list[str]:
    """ctr's tree: roots flush left, each child two spaces deeper under `\\_ `."""
    lines: list[str] = []
    stack = [(name, 0) for name in sorted(children.get("", []), reverse=True)]
    while stack:
        name, depth = stack.pop()
        lines.append(name if depth == 0 else "  " * depth + "\\_ " + name)
        stack.extend((c, depth + 1) for c in sorted(children.get(name, []), reverse=True))
    return lines


# --- leases -------------------------------------------------------------------------------------


def leases_ls(client: Client, args: argparse.Namespace) -> int:
    from supervisor.api.containerd.services.leases.v1 import leases_pb2 as lpb

    leases = client.leases.List(lpb.ListRequest(), metadata=client.md).leases
    return _show(
        args,
        ["ID", "CREATED AT", "LABELS"],
        sorted(leases, key=lambda lease: lease.id),
        lambda x: [x.id, _rfc3339_seconds(x.created_at), format_labels(dict(x.labels))],
        lambda x: {"id": x.id, "createdAt": _rfc3339(x.created_at), "labels": dict(x.labels)},
        shrink=(2,),
    )


def leases_create(client: Client, args: argparse.Namespace) -> int:
    import datetime as dt
    import secrets

    from supervisor.api.containerd.services.leases.v1 import leases_pb2 as lpb

    labels = parse_labels(args.label)
    from ctl.times import parse_duration

    expires = parse_duration(args.expires)
    if expires > 0:
        when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=expires)
        labels[EXPIRE_LABEL] = when.replace(microsecond=0).isoformat().replace("+00:00", "Z")
    lease_id = args.id or secrets.token_hex(8)
    lease = client.leases.Create(
        lpb.CreateRequest(id=lease_id, labels=labels), metadata=client.md
    ).lease
    print(lease.id)
    return 0


def leases_rm(client: Client, args: argparse.Namespace) -> int:
    from supervisor.api.containerd.services.leases.v1 import leases_pb2 as lpb

    for lease_id in args.ids:
        client.leases.Delete(lpb.DeleteRequest(id=lease_id, sync=args.sync), metadata=client.md)
        print(lease_id)
    return 0


# --- namespaces ---------------------------------------------------------------------------------


def _namespaces_stub(client: Client) -> Any:
    from supervisor.api.containerd.services.namespaces.v1 import namespaces_pb2_grpc

    return namespaces_pb2_grpc.NamespacesStub(client.channel)


def namespaces_ls(client: Client, args: argparse.Namespace) -> int:
    from supervisor.api.containerd.services.namespaces.v1 import namespaces_pb2 as npb

    listed = _namespaces_stub(client).List(npb.ListNamespacesRequest()).namespaces
    return _show(
        args,
        ["NAME", "LABELS"],
        sorted(listed, key=lambda n: n.name),
        lambda n: [n.name, format_labels(dict(n.labels))],
        lambda n: {"name": n.name, "labels": dict(n.labels)},
        shrink=(1,),
    )


def namespaces_create(client: Client, args: argparse.Namespace) -> int:
    from supervisor.api.containerd.services.namespaces.v1 import namespaces_pb2 as npb

    labels = parse_labels(args.labels)
    namespace = npb.Namespace(name=args.name, labels={k: v for k, v in labels.items() if v})
    _namespaces_stub(client).Create(npb.CreateNamespaceRequest(namespace=namespace))
    print(args.name)
    return 0


def namespaces_rm(client: Client, args: argparse.Namespace) -> int:
    from supervisor.api.containerd.services.namespaces.v1 import namespaces_pb2 as npb

    for name in args.names:
        _namespaces_stub(client).Delete(npb.DeleteNamespaceRequest(name=name))
        print(name)
    return 0


def namespaces_label(client: Client, args: argparse.Namespace) -> int:
    from supervisor.api.containerd.services.namespaces.v1 import namespaces_pb2 as npb

    labels = parse_labels(args.labels)
    stub = _namespaces_stub(client)
    if labels:
        namespace = npb.Namespace(name=args.name, labels={k: v for k, v in labels.items() if v})
        request = npb.UpdateNamespaceRequest(namespace=namespace, update_mask=_update_mask(labels))
        result = stub.Update(request).namespace
    else:
        result = stub.Get(npb.GetNamespaceRequest(name=args.name)).namespace
    print(format_labels(dict(result.labels)))
    return 0
