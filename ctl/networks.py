"""`ctrctl network create|ls|inspect|rm|prune|connect|disconnect`: ctrd's networks, in docker's
words and shapes.

Talks to ctrd's own `ctrd.services.networks.v1.Networks` service. `ls` prints docker's columns
(NETWORK ID, NAME, DRIVER, SCOPE) or, with `--format json`, one JSON object per line as docker
does; `inspect` prints docker's JSON array (IPAM, Containers by id with their names, ...);
`connect` and `disconnect` take a container by name, id or id prefix. docker's `--filter key=value`
becomes containerd's filter language for the service: one key given several times matches any
of its values, different keys must all match (so the service gets every combination, ORed).
Only `argparse` is imported at the top (ctrctl starts fast).
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ctl.client import Client

SCOPE = "local"
SHORT_ID = 12
PRUNE_WARNING = "WARNING! This will remove all custom networks not used by at least one container."


def _handler(parser: argparse.ArgumentParser, function: str) -> None:
    parser.set_defaults(handler=f"ctl.networks:{function}+client")


def add_parsers(commands: Any) -> None:
    group = commands.add_parser(
        "network", help="manage networks", description="Manage networks (bridge networks)."
    )
    sub = group.add_subparsers(dest="network_command", required=True, metavar="COMMAND")
    create = sub.add_parser("create", help="create a network; prints its id")
    create.add_argument("-d", "--driver", default="bridge", help="default %(default)s")
    create.add_argument("--subnet", default="", help="CIDR (default: a free one is picked)")
    create.add_argument("--gateway", default="", help="the gateway's address in the subnet")
    create.add_argument("--ip-range", default="", help="containers' addresses from this CIDR")
    create.add_argument("--internal", action="store_true", help="no route out of the network")
    create.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    create.add_argument("-o", "--opt", action="append", default=[], metavar="KEY=VALUE")
    create.add_argument("name", metavar="NETWORK")
    _handler(create, "create")
    ls = sub.add_parser("ls", aliases=["list"], help="list networks")
    ls.add_argument("-q", "--quiet", action="store_true", help="only ids")
    ls.add_argument("--no-trunc", action="store_true", help="whole ids")
    ls.add_argument("--format", choices=["table", "json"], default="table")
    _filter_option(ls, "name, id, driver, label, scope, type", "-f")
    _handler(ls, "ls")
    inspect = sub.add_parser("inspect", help="show networks as JSON")
    inspect.add_argument("networks", nargs="+", metavar="NETWORK")
    _handler(inspect, "inspect")
    rm = sub.add_parser("rm", aliases=["remove"], help="remove networks")
    rm.add_argument("networks", nargs="+", metavar="NETWORK")
    _handler(rm, "rm")
    connect = sub.add_parser("connect", help="connect a container to a network")
    connect.add_argument(
        "--alias",
        action="append",
        default=[],
        metavar="NAME",
        help="another name the container answers to on the network",
    )
    connect.add_argument("--ip", default="", metavar="IPV4", help="the container's address")
    connect.add_argument("network", metavar="NETWORK")
    connect.add_argument("container", metavar="CONTAINER")
    _handler(connect, "connect")
    disconnect = sub.add_parser("disconnect", help="disconnect a container from a network")
    disconnect.add_argument(
        "-f", "--force", action="store_true", help="force the container to disconnect"
    )
    disconnect.add_argument("network", metavar="NETWORK")
    disconnect.add_argument("container", metavar="CONTAINER")
    _handler(disconnect, "disconnect")
    prune = sub.add_parser("prune", help="remove the networks no container uses")
    prune.add_argument("-f", "--force", action="store_true", help="do not ask")
    _filter_option(prune, "label")
    _handler(prune, "prune")


def _filter_option(parser: argparse.ArgumentParser, keys: str, *flags: str) -> None:
    parser.add_argument(
        *flags,
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"docker's filters ({keys})",
    )


# --- filters ------------------------------------------------------------------------------------


def _quote(text: str) -> str:
    return json.dumps(text)  # a Go-quoted string for plain text


def _selector(key: str, value: str) -> str | None:
    """One docker filter as a containerd selector; "" matches all, None matches none."""
    if key == "name":
        return f"name~={_quote(re.escape(value))}"  # docker: a substring of the name
    if key == "id":
        return f"id~={_quote('^' + re.escape(value))}"  # docker: a prefix of the id
    if key == "driver":
        return f"driver=={_quote(value)}"
    if key == "label":
        label, sep, wanted = value.partition("=")
        path = f"labels.{_quote(label)}"
        return f"{path}=={_quote(wanted)}" if sep else path
    if key == "scope":
        return "" if value == SCOPE else None
    if key == "type":
        return "" if value == "custom" else None  # ctrd has no predefined networks
    raise ValueError(f"invalid filter '{key}'")


def to_filters(words: Iterable[str], keys: Iterable[str]) -> list[str] | None:
    """docker's `key=value` filters as containerd's (ORed); None: nothing can match."""
    allowed = set(keys)
    by_key: dict[str, list[str]] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep:
            raise ValueError(f'bad format of filter (expected name=value): "{word}"')
        if key not in allowed:
            raise ValueError(f"invalid filter '{key}'")
        selector = _selector(key, value)
        if selector is not None:
            by_key.setdefault(key, []).append(selector)
        else:
            by_key.setdefault(key, [])
    if any(not choices for choices in by_key.values()):
        return None
    combos = itertools.product(*by_key.values())
    return [",".join(s for s in combo if s) for combo in combos] if by_key else []


# --- the service ----------------------------------------------------------------------------------


def _stub(client: Client) -> Any:
    from supervisor.api.ctrd.services.networks.v1 import networks_pb2_grpc

    return networks_pb2_grpc.NetworksStub(client.channel)


def _not_found(e: Exception) -> bool:
    import grpc

    return isinstance(e, grpc.Call) and e.code() == grpc.StatusCode.NOT_FOUND


def _details(e: Exception) -> str:
    import grpc

    return str(e.details()) if isinstance(e, grpc.Call) else str(e)


def _pairs(words: Iterable[str], what: str) -> dict[str, str]:
    found = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not key or not sep:
            raise ValueError(f'{what} "{word}": give key=value')
        found[key] = value
    return found


def create(client: Client, args: argparse.Namespace) -> int:
    from supervisor.api.ctrd.services.networks.v1 import networks_pb2 as pb

    request = pb.CreateNetworkRequest(
        name=args.name,
        driver=args.driver,
        subnet=args.subnet,
        gateway=args.gateway,
        ip_range=args.ip_range,
        internal=args.internal,
        labels=_pairs(args.label, "label"),
        options=_pairs(args.opt, "option"),
    )
    print(_stub(client).Create(request, metadata=client.md).network.id)
    return 0


def _list(client: Client, filter_words: Iterable[str], keys: Iterable[str]) -> list[Any]:
    from supervisor.api.ctrd.services.networks.v1 import networks_pb2 as pb

    filters = to_filters(filter_words, keys)
    if filters is None:
        return []
    request = pb.ListNetworksRequest(filters=filters)
    return list(_stub(client).List(request, metadata=client.md).networks)


def list_names(client: Client) -> list[str]:
    """The names of the namespace's networks (shell completion)."""
    return [n.name for n in _list(client, (), ())]


def _go_time(timestamp: Any) -> str:
    """Go's time.String() in UTC, as `docker network ls --format json` shows CreatedAt."""
    import datetime as dt

    when = dt.datetime.fromtimestamp(timestamp.seconds, dt.UTC)
    return f"{when:%Y-%m-%d %H:%M:%S}.{timestamp.nanos:09d} +0000 UTC"


def ls(client: Client, args: argparse.Namespace) -> int:
    networks = _list(client, args.filter, ("name", "id", "driver", "label", "scope", "type"))
    width = None if args.no_trunc else SHORT_ID
    if args.quiet:
        for n in networks:
            print(n.id[:width])
    elif args.format == "json":
        for n in networks:
            labels = ",".join(f"{k}={v}" for k, v in sorted(n.labels.items()))
            row = {
                "CreatedAt": _go_time(n.created_at),
                "Driver": n.driver,
                "ID": n.id[:width],
                "IPv6": "false",
                "Internal": str(n.internal).lower(),
                "Labels": labels,
                "Name": n.name,
                "Scope": SCOPE,
            }
            print(json.dumps(row))
    else:
        from ctl.table import table

        rows = [[n.id[:width], n.name, n.driver, SCOPE] for n in networks]
        table(["NETWORK ID", "NAME", "DRIVER", "SCOPE"], rows)
    return 0


def inspected(n: Any, names: dict[str, str] | None = None) -> dict[str, Any]:
    """docker's `network inspect` object for one network; `names` maps container ids to
    their names (a container without one shows its id)."""
    names = names or {}
    config: dict[str, str] = {"Subnet": n.subnet, "Gateway": n.gateway}
    if n.ip_range:
        config["IPRange"] = n.ip_range
    containers = {
        e.container_id: {
            "Name": names.get(e.container_id) or e.container_id,
            "EndpointID": "",
            "MacAddress": e.mac,
            "IPv4Address": e.address,
            "IPv6Address": "",
        }
        for e in n.endpoints
    }
    return {
        "Name": n.name,
        "Id": n.id,
        "Created": n.created_at.ToJsonString(),
        "Scope": SCOPE,
        "Driver": n.driver,
        "EnableIPv6": False,
        "IPAM": {"Driver": "default", "Options": {}, "Config": [config]},
        "Internal": n.internal,
        "Attachable": False,
        "Ingress": False,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": False,
        "Containers": containers,
        "Options": dict(n.options),
        "Labels": dict(n.labels),
    }


def inspect(client: Client, args: argparse.Namespace) -> int:
    from supervisor.api.ctrd.services.networks.v1 import networks_pb2 as pb

    found, status = [], 0
    for name in args.networks:
        try:
            reply = _stub(client).Get(pb.GetNetworkRequest(ref=name), metadata=client.md)
        except Exception as e:
            if not _not_found(e):
                raise
            print(f"Error: No such network: {name}", file=sys.stderr)
            status = 1
            continue
        found.append(reply.network)
    names = _container_names(client) if any(n.endpoints for n in found) else {}
    print(json.dumps([inspected(n, names) for n in found], indent=4))
    return status


def _container_names(client: Client) -> dict[str, str]:
    from ctl.client import NAME_LABEL

    return {c.id: c.labels.get(NAME_LABEL, "") for c in client.list_containers()}


def _daemon_error(e: Exception, network: str, cid: str) -> int:
    """A refused connect or disconnect, in docker's words; its exit status (1)."""
    if not hasattr(e, "details"):
        raise e
    message = _plain(_details(e))
    if _not_found(e):
        message = (
            f"container {cid} is not connected to network {network}"
            if "endpoint" in message
            else f"network {network} not found"
        )
    print(f"Error response from daemon: {message}", file=sys.stderr)
    return 1


# containerd's errdefs words that its errors end with (": not found"), which docker's lack
_KINDS = ("not found", "already exists", "invalid argument", "failed precondition")


def _plain(details: str) -> str:
    """A daemon error's message without containerd's kind at its end."""
    for kind in _KINDS:
        details = details.removesuffix(f": {kind}")
    return details


def _container_id(client: Client, name: str) -> str | None:
    """The id of container `name` (a name, an id or a prefix); None, docker's error said."""
    from ctl.client import NotFound

    try:
        return client.resolve(name)
    except NotFound as e:
        print(f"Error response from daemon: {e}", file=sys.stderr)
        return None


def connect(client: Client, args: argparse.Namespace) -> int:
    """docker's `network connect`: the container gets an endpoint (at once when running)."""
    from ctl.netopts import check_ip
    from supervisor.api.ctrd.services.networks.v1 import networks_pb2 as pb

    cid = _container_id(client, args.container)
    if cid is None:
        return 1
    try:
        address = check_ip(args.ip) if args.ip else ""
    except ValueError as e:
        print(f"Error response from daemon: {e}", file=sys.stderr)
        return 1
    request = pb.ConnectRequest(
        network=args.network, container_id=cid, address=address, aliases=args.alias
    )
    try:
        _stub(client).Connect(request, metadata=client.md)
    except Exception as e:
        return _daemon_error(e, args.network, cid)
    return 0


def disconnect(client: Client, args: argparse.Namespace) -> int:
    """docker's `network disconnect` (`-f` is taken: ctrd's disconnect never needs it)."""
    from supervisor.api.ctrd.services.networks.v1 import networks_pb2 as pb

    cid = _container_id(client, args.container)
    if cid is None:
        return 1
    request = pb.DisconnectRequest(network=args.network, container_id=cid)
    try:
        _stub(client).Disconnect(request, metadata=client.md)
    except Exception as e:
        return _daemon_error(e, args.network, cid)
    return 0


def rm(client: Client, args: argparse.Namespace) -> int:
    from supervisor.api.ctrd.services.networks.v1 import networks_pb2 as pb

    status = 0
    for name in args.networks:
        try:
            _stub(client).Delete(pb.DeleteNetworkRequest(ref=name), metadata=client.md)
        except Exception as e:
            if _not_found(e):
                print(f"Error: No such network: {name}", file=sys.stderr)
            elif hasattr(e, "details"):
                print(f"Error response from daemon: {_details(e)}", file=sys.stderr)
            else:
                raise
            status = 1
            continue
        print(name)
    return status


def prune(client: Client, args: argparse.Namespace) -> int:
    from ctl.images import confirm
    from supervisor.api.ctrd.services.networks.v1 import networks_pb2 as pb

    filters = to_filters(args.filter, ("label",))
    if not confirm(PRUNE_WARNING, args.force) or filters is None:
        return 0
    request = pb.PruneNetworksRequest(filters=filters)
    deleted = list(_stub(client).Prune(request, metadata=client.md).deleted)
    if deleted:
        print("Deleted Networks:")
        for name in deleted:
            print(name)
    return 0
