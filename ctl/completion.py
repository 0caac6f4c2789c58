"""`ctrctl completion bash|zsh`: a shell completion script, generated from ctrctl's own parser.

The script is made by shtab (imported only here) from the argparse tree, so every command,
subcommand and option completes without a hand-kept list. Arguments that name containers or
images complete with the names ctrd has, through the unlisted `ctrctl __names` command
(it honours CTRD_ADDRESS and CTRD_NAMESPACE); those naming networks with the namespace's
networks, those naming volumes (`volume inspect|rm`) with its volumes, `--volumes-from` with
its containers.

    source <(ctrctl completion bash)
    ctrctl completion bash > /etc/bash_completion.d/ctrctl
    ctrctl completion zsh > "${fpath[1]}/_ctrctl"
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ctl.client import Client

CONTAINER_ARGS = frozenset({"container", "containers"})
IMAGE_ARGS = frozenset({"image", "images", "source"})
NETWORK_ARGS = frozenset({"network", "networks"})
VOLUME_ARGS = frozenset({"volumes"})  # positionals only: `rm -v` is a flag of that name

BASH_PREAMBLE = """
_ctrctl_containers() { compgen -W "$(ctrctl __names containers 2>/dev/null)" -- "$1"; }
_ctrctl_images() { compgen -W "$(ctrctl __names images 2>/dev/null)" -- "$1"; }
_ctrctl_networks() { compgen -W "$(ctrctl __names networks 2>/dev/null)" -- "$1"; }
_ctrctl_volumes() { compgen -W "$(ctrctl __names volumes 2>/dev/null)" -- "$1"; }
"""
ZSH_PREAMBLE = """
_ctrctl_containers() { compadd -- ${(f)"$(ctrctl __names containers 2>/dev/null)"}; }
_ctrctl_images() { compadd -- ${(f)"$(ctrctl __names images 2>/dev/null)"}; }
_ctrctl_networks() { compadd -- ${(f)"$(ctrctl __names networks 2>/dev/null)"}; }
_ctrctl_volumes() { compadd -- ${(f)"$(ctrctl __names volumes 2>/dev/null)"}; }
"""


def add_parsers(commands: Any) -> None:
    completion = commands.add_parser(
        "completion",
        help="print a shell completion script",
        description="Print a completion script for bash or zsh, e.g."
        " `source <(ctrctl completion bash)`.",
    )
    completion.add_argument("shell", choices=["bash", "zsh"])
    completion.set_defaults(handler="ctl.completion:run")
    names = commands.add_parser("__names")  # no help: unlisted, for the scripts only
    names.add_argument("kind", choices=["containers", "images", "networks", "volumes"])
    names.set_defaults(handler="ctl.completion:names+client")


def script(shell: str) -> str:
    import shtab

    from ctl.main import build_parser

    parser = build_parser()
    _mark(parser)
    preamble = {"bash": BASH_PREAMBLE, "zsh": ZSH_PREAMBLE}[shell]
    return str(shtab.complete(parser, shell=shell, preamble=preamble))


def _mark(parser: argparse.ArgumentParser) -> None:
    """Tell shtab which positionals name containers or images (it reads `.complete`)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                _mark(sub)
        elif action.dest == "volumes_from" or (
            not action.option_strings and action.dest in CONTAINER_ARGS
        ):
            action.complete = {"bash": "_ctrctl_containers", "zsh": "_ctrctl_containers"}  # type: ignore[attr-defined]
        elif not action.option_strings and action.dest in IMAGE_ARGS:
            action.complete = {"bash": "_ctrctl_images", "zsh": "_ctrctl_images"}  # type: ignore[attr-defined]
        elif not action.option_strings and action.dest in VOLUME_ARGS:
            action.complete = {"bash": "_ctrctl_volumes", "zsh": "_ctrctl_volumes"}  # type: ignore[attr-defined]
        elif action.dest in NETWORK_ARGS:  # `network connect NETWORK` and `run --network`
            action.complete = {"bash": "_ctrctl_networks", "zsh": "_ctrctl_networks"}  # type: ignore[attr-defined]


def run(args: argparse.Namespace) -> int:
    print(script(args.shell), end="")
    return 0


def names(client: Client, args: argparse.Namespace) -> int:
    if args.kind == "containers":
        found = [c.id for c in client.list_containers()]
    elif args.kind == "networks":
        from ctl.networks import list_names

        found = list_names(client)
    elif args.kind == "volumes":
        from ctl.volumes import list_names as volume_names

        found = volume_names(client)
    else:
        from ctl.images import familiar

        found = [familiar(i.name) for i in client.list_images()]
    for name in found:
        print(name)
    return 0
