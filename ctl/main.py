"""`ctrctl`: the command line, docker-like: containers, images (pull), events, version.

Global options come before the command, as with docker: `ctrctl --address SOCK version`.
Imports of gRPC happen inside commands, and only the given command's parser is built
(`parse_args`), so ctrctl starts quickly; `ctrctl --help` and errors get the whole tree.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import os
import sys
from typing import Any, NoReturn

DEFAULT_ADDRESS = "/run/ctrd/ctrd.sock"
# Modules that declare more commands: each has `add_parsers(commands)`, only argparse at its
# top (ctrctl must start quickly), and gives every parser a `handler` default, "module:function",
# the function taking the parsed arguments and returning the exit status. A handler whose
# function takes (client, args) is marked "module:function+client" and gets a connected Client.
COMMAND_MODULES: tuple[str, ...] = (
    "ctl.images",
    "ctl.stats",
    "ctl.system",
    "ctl.groups",
    "ctl.update",
    "ctl.networks",
    "ctl.completion",
    "ctl.push",
    "ctl.archive",
    "ctl.volumes",
    "ctl.cp",
)
EXIT_CLIENT_ERROR = 125  # docker's code for an error of the client itself


# Where each command is declared (its aliases too): ctrctl builds the parser of the command it
# is given alone, not the ~35 of the whole tree (~25 ms). The tree itself is built for
# `ctrctl --help`, a command it does not know, and anything else the quick path cannot parse.
COMMAND_HOMES: dict[str, str] = {
    **dict.fromkeys(
        ("version", "events", "pull", "run", "create", "start", "pause", "unpause", "inspect",
         "ps", "port", "logs", "wait", "stop", "restart", "kill", "rm", "exec", "container"),
        "ctl.main",
    ),
    **dict.fromkeys(("images", "rmi", "tag", "image"), "ctl.images"),
    **dict.fromkeys(("top", "stats"), "ctl.stats"),
    "system": "ctl.system",
    "update": "ctl.update",
    **dict.fromkeys(
        ("content", "snapshots", "snapshot", "leases", "namespaces", "namespace", "ns"),
        "ctl.groups",
    ),
    "network": "ctl.networks",
    **dict.fromkeys(("completion", "__names"), "ctl.completion"),
    "push": "ctl.push",
    **dict.fromkeys(("load", "save"), "ctl.archive"),
    "volume": "ctl.volumes",
    "cp": "ctl.cp",
}  # fmt: skip
GLOBAL_OPTIONS_WITH_VALUES = frozenset(("--address", "-a", "--namespace", "-n"))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line, parsed by the parser of its command alone when that parses it; else
    (help, errors, a command line the quick path does not read) by the whole tree, whose
    output and exit status are the ones the user sees."""
    given = sys.argv[1:] if argv is None else argv
    command = _command_of(given)
    if command in COMMAND_HOMES:
        with contextlib.suppress(_NotQuick):
            return build_parser(only=command).parse_args(given)
    return build_parser().parse_args(given)


def _command_of(argv: list[str]) -> str | None:
    """The command word, when only global options (exactly as spelled by `build_parser`) and
    their values come before it; None for anything else (`-h`, an abbreviated option...)."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in GLOBAL_OPTIONS_WITH_VALUES:
            skip = True
        elif not arg.startswith("-"):
            return arg
        elif not _global_option_with_its_value(arg) and arg != "--debug":
            return None
    return None


def _global_option_with_its_value(arg: str) -> bool:
    """`--address=SOCK`, `-aSOCK`, `--namespace=NS`, `-nNS`."""
    return arg.startswith(("--address=", "--namespace=")) or (
        len(arg) > 2 and arg[:2] in ("-a", "-n")
    )


class _NotQuick(Exception):
    """The quick parser could not parse the command line: the whole tree will, or say why."""


class _QuickParser(argparse.ArgumentParser):
    """A parser (and its subparsers) that raises `_NotQuick` where argparse would print an
    error and exit: the whole tree parses the command line again and says it as always."""

    _building = False

    def error(self, message: str) -> NoReturn:
        raise _NotQuick(message)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        return self._build(super().add_argument, *args, **kwargs)  # type: ignore[no-any-return]

    def add_subparsers(self, **kwargs: Any) -> Any:
        return self._build(super().add_subparsers, **kwargs)

    def _build(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        self._building = True
        try:
            return method(*args, **kwargs)
        finally:
            self._building = False

    def _get_formatter(self) -> argparse.HelpFormatter:
        """While the parser is built, argparse makes a formatter for each argument (to check
        its metavar) and for each group of subcommands (their prog, `ctrctl run`): one of a
        fixed width does there (a formatter measures the terminal, which imports shutil, ~90
        times for `run`). Help and usage get a formatter as always."""
        if self._building:
            return argparse.HelpFormatter(prog=self.prog, width=80)
        return super()._get_formatter()


class _OneCommand:
    """The subcommands object when only command `name` is wanted: its parser is built, every
    other command's declaration goes to a sink that takes any call and keeps nothing."""

    def __init__(self, commands: Any, name: str) -> None:
        self._commands = commands
        self._name = name

    def add_parser(self, name: str, **kwargs: Any) -> Any:
        if self._name == name or self._name in kwargs.get("aliases", ()):
            return self._commands.add_parser(name, **kwargs)
        return _SINK


class _Sink:
    """Stands for an argparse parser nobody will use: every method does nothing and returns it."""

    def __getattr__(self, name: str) -> Any:
        return self._ignore

    def _ignore(self, *args: Any, **kwargs: Any) -> _Sink:
        return self


_SINK = _Sink()


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command tree (shell completion generates its scripts from it), or with
    `only` the global options and command `only` (a key of COMMAND_HOMES) alone, by a parser
    that raises `_NotQuick` instead of printing errors."""
    parser_class = argparse.ArgumentParser if only is None else _QuickParser
    parser = parser_class(prog="ctrctl", description="ctrctl: the ctrd client")
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
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = subparsers if only is None else _OneCommand(subparsers, only)
    if only is None or COMMAND_HOMES[only] == "ctl.main":
        _own_commands(commands)
    for module in COMMAND_MODULES:
        if only is None or COMMAND_HOMES[only] == module:
            importlib.import_module(module).add_parsers(commands)
    if "image" in subparsers.choices:
        # docker's `image pull|push|save|load`: the same commands within the image group
        images = _subcommands(subparsers.choices["image"])
        _pull_command(images)
        for module in ("ctl.push", "ctl.archive"):
            importlib.import_module(module).add_parsers(images)
    return parser


def _own_commands(commands: Any) -> None:
    commands.add_parser("version", help="show the client and server versions").set_defaults(
        handler="ctl.main:version"
    )
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
    events.set_defaults(handler="ctl.events:run")
    _pull_command(commands)
    _container_commands(commands)
    container = commands.add_parser(
        "container", help="manage containers", description="Manage containers (as docker's"
        " `container` group: ls, run, exec, stop, rm...)."
    )  # fmt: skip
    group = container.add_subparsers(dest="container_command", required=True, metavar="COMMAND")
    _container_commands(group, grouped=True)


def _subcommands(parser: argparse.ArgumentParser) -> Any:
    """The subcommands object of a command group."""
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def _pull_command(commands: Any) -> None:
    pull = commands.add_parser("pull", help="pull an image from a registry (ctrd fetches it)")
    pull.add_argument("--platform", help="os/arch[/variant] (default: the daemon's)")
    pull.add_argument("image")
    pull.set_defaults(handler="ctl.pull:run")


def _run_options(command: argparse.ArgumentParser) -> None:
    add = command.add_argument
    add("--name", help="the container's name (and id)")
    add("-e", "--env", action="append", default=[], metavar="KEY=VALUE")
    add("--env-file", action="append", default=[], metavar="FILE")
    from ctl import volopts  # -v --mount --tmpfs --volumes-from

    volopts.add_flags(add)
    add("-w", "--workdir")
    add("-u", "--user")
    add("--entrypoint", help='replaces the image\'s ENTRYPOINT and CMD ("": neither)')
    add("--hostname")
    add("--memory", "-m", metavar="BYTES", help="memory limit (k, m, g suffixes)")
    add("--cpus", type=float)
    add("--pids-limit", type=int)
    add("--read-only", action="store_true")
    add(
        "--network",
        "--net",
        default="default",
        metavar="NETWORK",
        help="bridge (the default network), host, none, container:NAME, or the name of a ctrd"
        " network (`ctrctl network create`)",
    )
    add(
        "-p",
        "--publish",
        action="append",
        default=[],
        metavar="[IP:][HOSTPORT:]PORT[/PROTO]",
        help="publish a container's port(s) to the host (ranges: 8000-8010:80-90)",
    )
    add(
        "-P",
        "--publish-all",
        action="store_true",
        help="publish every exposed port to a free host port",
    )
    add(
        "--expose",
        action="append",
        default=[],
        metavar="PORT[/PROTO]",
        help="expose a port or a range of ports (published by -P)",
    )
    add("--ip", metavar="IPV4", help="the container's address on its network")
    add(
        "--network-alias",
        "--net-alias",
        action="append",
        default=[],
        metavar="NAME",
        help="another name the container answers to on its network",
    )
    add("--dns", action="append", default=[], metavar="IP", help="a DNS server")
    add("--dns-search", action="append", default=[], metavar="DOMAIN", help="a DNS search domain")
    add(
        "--dns-option",
        "--dns-opt",
        action="append",
        default=[],
        metavar="OPTION",
        help="a resolv.conf option",
    )
    add("--add-host", action="append", default=[], metavar="HOST:IP", help="a line for /etc/hosts")
    add("--privileged", action="store_true")
    add("--runtime", help="runc (default) or crun, or a path")
    # The health flags (ctl.healthopts reads them, imported only when one is given)
    add("--health-cmd", metavar="COMMAND", help="command to run to check health")
    add(
        "--health-interval",
        metavar="DURATION",
        help="time between running the check (ms|s|m|h) (default 0s)",
    )
    add(
        "--health-timeout",
        metavar="DURATION",
        help="maximum time to allow one check to run (ms|s|m|h) (default 0s)",
    )
    add(
        "--health-start-period",
        metavar="DURATION",
        help="start period for the container to initialize before starting health-retries"
        " countdown (ms|s|m|h) (default 0s)",
    )
    add("--health-retries", metavar="N", help="consecutive failures needed to report unhealthy")
    add("--no-healthcheck", action="store_true", help="disable any container-specified HEALTHCHECK")
    add(
        "--stop-signal",
        metavar="SIGNAL",
        help="what `stop` sends first (default: the image's StopSignal, else SIGTERM)",
    )
    add(
        "--stop-timeout",
        type=int,
        metavar="SECONDS",
        help="how long `stop` waits before SIGKILL (default 10; -1: forever)",
    )
    add(
        "--restart",
        default="no",
        metavar="POLICY",
        help="no, always, unless-stopped, on-failure[:N]: ctrd starts the container again"
        " when it exits (docker's rules)",
    )
    add(
        "--pull",
        choices=["missing", "always", "never"],
        default="missing",
        help="pull the image before creating the container (default: when it is missing)",
    )
    from ctl import secopts  # --security-opt --cap-add --cap-drop --device --ulimit --init ...

    secopts.add_flags(add)
    add("-i", "--interactive", action="store_true", help="keep stdin open")
    add("-t", "--tty", action="store_true", help="allocate a terminal")
    add("image")
    add("cmd", nargs=argparse.REMAINDER, metavar="COMMAND")


def _container_commands(commands: Any, grouped: bool = False) -> None:
    """The container commands, at the top (`ctrctl ps`) or in the container group, where
    `ps` is `ls` (`ctrctl container ls`), as docker has them."""

    def add(name: str, key: str = "", **kwargs: Any) -> Any:
        parser = commands.add_parser(name, **kwargs)
        function = CONTAINER_COMMANDS[key or name]
        parser.set_defaults(handler=f"ctl.commands:{function}+client")
        return parser

    run = add("run", help="create and start a container")
    run.add_argument("-d", "--detach", action="store_true", help="run in the background")
    run.add_argument("--rm", action="store_true", help="remove the container when it exits")
    _run_options(run)
    _run_options(add("create", help="create a container"))
    for name, text in (
        ("start", "start containers"),
        ("pause", "pause containers"),
        ("unpause", "unpause containers"),
        ("inspect", "show containers (or images) as JSON"),
    ):
        add(name, help=text).add_argument("containers", nargs="+")
    ps = add(
        "ls" if grouped else "ps", "ps", aliases=["ps", "list"] if grouped else [],
        help="list containers",
    )  # fmt: skip
    ps.add_argument("-a", "--all", action="store_true", help="also stopped ones")
    ps.add_argument("-q", "--quiet", action="store_true", help="ids only")
    ps.add_argument("--format", choices=["table", "json"], default="table")
    ps.add_argument(
        "-f", "--filter", action="append", default=[], metavar="KEY=VALUE",
        help="id, name, label (KEY or KEY=VALUE), status (created, running, paused, exited),"
        " exited (a code), ancestor (an image); a key repeated: either value",
    )  # fmt: skip
    ps.add_argument("-n", "--last", type=int, default=0, metavar="N",
                    help="the N last created (in any state)")  # fmt: skip
    ps.add_argument("-l", "--latest", action="store_true", help="the last created")
    ps.add_argument("--no-trunc", action="store_true", help="do not shorten ids and commands")
    port = add("port", help="list a container's published ports, or where one of its ports is")
    port.add_argument("container")
    port.add_argument("port", nargs="?", metavar="PRIVATE_PORT[/PROTO]")
    logs = add("logs", help="a detached container's output")
    logs.add_argument("-f", "--follow", action="store_true")
    logs.add_argument("--tail", default="all", help="lines from the end (default all)")
    logs.add_argument("--since", metavar="TIME", help="from this time on (as `events`)")
    logs.add_argument("--until", metavar="TIME", help="before this time")
    logs.add_argument("-t", "--timestamps", action="store_true", help="show each entry's time")
    logs.add_argument("container")
    wait = add("wait", help="wait until containers stop, then print their exit codes")
    wait.add_argument("containers", nargs="+")
    for name, text in (
        ("stop", "stop containers (their stop signal, then SIGKILL)"),
        ("restart", "restart containers (stop, then start again, output to their log)"),
    ):
        stop = add(name, help=text, description=text)
        stop.add_argument(
            "-t", "--time", type=float, default=None,
            help="seconds before SIGKILL (default: the container's --stop-timeout, else 10)",
        )  # fmt: skip
        stop.add_argument("containers", nargs="+")
    kill = add("kill", help="signal containers")
    kill.add_argument("-s", "--signal", default="KILL")
    kill.add_argument("containers", nargs="+")
    rm = add("rm", help="remove containers")
    rm.add_argument("-f", "--force", action="store_true", help="kill a running one first")
    rm.add_argument("-v", "--volumes", action="store_true", help="remove its anonymous volumes too")
    rm.add_argument("containers", nargs="+")
    exec_ = add("exec", help="run a command in a running container")
    exec_.add_argument("-i", "--interactive", action="store_true")
    exec_.add_argument("-t", "--tty", action="store_true")
    exec_.add_argument("-e", "--env", action="append", default=[])
    exec_.add_argument("-w", "--workdir")
    exec_.add_argument("-u", "--user")
    exec_.add_argument("container")
    exec_.add_argument("cmd", nargs=argparse.REMAINDER, metavar="COMMAND")


CONTAINER_COMMANDS = {
    "run": "cmd_run", "create": "cmd_create", "start": "cmd_start", "ps": "cmd_ps",
    "logs": "cmd_logs", "stop": "cmd_stop", "restart": "cmd_restart", "kill": "cmd_kill",
    "rm": "cmd_rm", "pause": "cmd_pause", "unpause": "cmd_pause", "exec": "cmd_exec",
    "inspect": "cmd_inspect", "wait": "cmd_wait", "port": "cmd_port",
}  # fmt: skip


def dispatch(args: argparse.Namespace) -> int:
    """Import the command's module only now, and run it (with a Client if it asks for one)."""
    target, _, wants = args.handler.partition("+")
    module, _, function = target.partition(":")
    handler = getattr(importlib.import_module(module), function)
    if wants != "client":
        return int(handler(args))
    from ctl.client import Client

    client = Client(args.address, args.namespace)
    try:
        return int(handler(client, args))
    finally:
        client.close()


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
    """Run the command line (`argv`, else the process's); its exit status. From the process's
    own command line, the process ends here (`exit_now`)."""
    status = _run(argv)
    if argv is None:
        exit_now(status)
    return status


def exit_now(status: int) -> None:
    """End the process with `status`, skipping the interpreter's teardown: after a command, it
    frees grpc's, asyncio's and protobuf's modules object by object, 20-30 ms of every ctrctl
    for a process that ends anyway. What a normal exit does for others is done first: stdout
    and stderr flushed, the atexit functions run. Returns (the normal exit follows) when that
    cannot be done so: another non-daemon thread still runs (its end is waited for), a flush
    fails (a closed pipe: the exit reports it as always), or a profiler or tracer watches
    (`python -m cProfile -m ctl ...` writes its figures at the normal exit)."""
    if sys.getprofile() is not None or sys.gettrace() is not None:
        return
    threading = sys.modules.get("threading")  # not imported: no thread was started
    main_thread = threading.main_thread() if threading else None
    if threading and any(not t.daemon for t in threading.enumerate() if t is not main_thread):
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:
        return
    atexit._run_exitfuncs()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(status)


def _run(argv: list[str] | None) -> int:
    args = parse_args(argv)
    try:
        return dispatch(args)
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        if args.debug:
            raise
        import grpc

        if isinstance(e, grpc.RpcError) and isinstance(e, grpc.Call):
            message = e.details() or e.code().name
            # UNAVAILABLE is also ctrd's own word (a registry it cannot reach, a ref another
            # writer holds): then its message ends with containerd's ": unavailable" suffix,
            # and ctrd itself is fine. gRPC's own words mean ctrd did not answer.
            from_ctrd = message.endswith(": unavailable")
            if e.code() == grpc.StatusCode.UNAVAILABLE and not from_ctrd:
                message = f"cannot reach ctrd at {args.address}: is it running? ({message})"
        else:
            message = str(e)
        print(f"ctrctl: {message}", file=sys.stderr)
        return EXIT_CLIENT_ERROR


if __name__ == "__main__":
    sys.exit(main())
