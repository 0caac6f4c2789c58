"""`ctrctl`: the command line: `version` and `events` so far; the docker-like commands follow.

Global options come before the command, as with docker: `ctrctl --address SOCK version`.
Imports of gRPC happen inside commands, so `ctrctl --help` starts instantly.
"""

from __future__ import annotations

import argparse
import os
import sys

DEFAULT_ADDRESS = "/run/ctrd/ctrd.sock"
EXIT_CLIENT_ERROR = 125  # docker's code for an error of the client itself


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ctrctl", description="ctrctl: the ctrd client")
    parser.add_argument(
        "--address",
        "-a",
        default=os.environ.get("CTRD_ADDRESS", DEFAULT_ADDRESS),
        help="ctrd's socket (env CTRD_ADDRESS, default %(default)s)",
    )
    parser.add_argument(
        "--namespace",
        "-n",
        default=os.environ.get("CTRD_NAMESPACE", "default"),
        help="namespace (env CTRD_NAMESPACE, default %(default)s)",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("version", help="show the client and server versions")
    events = commands.add_parser(
        "events",
        help="show events as they happen, or those of a past period (ctrd keeps a log)",
        description=(
            "Without --since, new events as they happen. With --since, the logged events from"
            " then on, and then new ones; with --until, stop there. TIME is RFC 3339"
            " (2026-11-28T10:00:00Z, 2026-11-28), Unix seconds (1795830000.5) or a duration"
            " before now (10m, 1h30m), as docker takes it."
        ),
    )
    events.add_argument("--since", metavar="TIME", help="show events from this time on")
    events.add_argument("--until", metavar="TIME", help="show events until this time, then stop")
    events.add_argument(
        "--filter",
        "-f",
        action="append",
        default=[],
        metavar="FILTER",
        help="key=value (namespace, topic, container, or any event.<field>; the same key"
        " repeated: either value), or containerd's syntax (topic~=/tasks/)",
    )
    events.add_argument("--all-namespaces", "-A", action="store_true", help="not only --namespace")
    return parser.parse_args(argv)


def version(args: argparse.Namespace) -> int:
    import grpc
    from google.protobuf import empty_pb2

    from supervisor.api.containerd.services.introspection.v1 import introspection_pb2_grpc
    from supervisor.api.containerd.services.version.v1 import version_pb2_grpc
    from supervisor.services.version import version as client_version

    print("Client:")
    print(f"  Version:  {client_version()}")
    with grpc.insecure_channel(f"unix:{args.address}") as channel:
        answer = version_pb2_grpc.VersionStub(channel).Version(empty_pb2.Empty(), timeout=10)
        server = introspection_pb2_grpc.IntrospectionStub(channel).Server(
            empty_pb2.Empty(), timeout=10
        )
    print("Server:")
    print(f"  Version:  {answer.version}")
    print(f"  Revision: {answer.revision}")
    print(f"  UUID:     {server.uuid}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "events":
            from ctl import events

            return events.run(args)
        return version(args)
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        if args.debug:
            raise
        import grpc

        if isinstance(e, grpc.RpcError) and isinstance(e, grpc.Call):
            message = e.details() or e.code().name
            if e.code() == grpc.StatusCode.UNAVAILABLE:
                message = f"cannot reach ctrd at {args.address}: is it running? ({message})"
        else:
            message = str(e)
        print(f"ctrctl: {message}", file=sys.stderr)
        return EXIT_CLIENT_ERROR


if __name__ == "__main__":
    sys.exit(main())
