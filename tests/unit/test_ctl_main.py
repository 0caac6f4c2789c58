"""ctrctl's command line: the quick path for its own commands parses as the whole tree does."""

from __future__ import annotations

import argparse

import pytest

from ctl import main


def command_names(parser: argparse.ArgumentParser) -> set[str]:
    (commands,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(commands.choices)


def test_own_commands_are_exactly_those_main_declares():
    own = command_names(main.build_parser(only_own=True))
    assert own == main.OWN_COMMANDS
    assert own < command_names(main.build_parser())  # the modules add the rest


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["run", "--rm", "img"], "run"),
        (["-a", "/s.sock", "-n", "ns", "--debug", "ps", "-a"], "ps"),
        (["--address=/s.sock", "images"], "images"),
        (["--namespace", "run", "ps"], "ps"),  # "run" is the namespace here
        (["--debug"], None),
    ],
)
def test_the_command_word_skips_global_options_and_their_values(argv, command):
    assert main._command_of(argv) == command


@pytest.mark.parametrize(
    "argv",
    [
        ["-a", "/s.sock", "run", "--rm", "-e", "A=b", "img", "sh", "-c", "exit 3"],
        ["-n", "other", "exec", "-it", "web", "sh"],
        ["stop", "-t", "1", "web", "db"],
        ["system", "df"],
        ["image", "ls", "--format", "json"],
    ],
)
def test_parsing_is_the_same_on_the_quick_path(argv):
    assert main.parse_args(argv) == main.build_parser().parse_args(argv)


GROUPED = [
    ("container ls -a", "ps -a", "ctl.commands:cmd_ps+client"),
    ("container ps -q", "ps -q", "ctl.commands:cmd_ps+client"),
    ("container rm -f web", "rm -f web", "ctl.commands:cmd_rm+client"),
    ("container run --rm img true", "run --rm img true", "ctl.commands:cmd_run+client"),
    ("image pull busybox", "pull busybox", "ctl.pull:run"),
    ("image push busybox", "push busybox", "ctl.push:run"),
    ("image save -o f.tar busybox", "save -o f.tar busybox", "ctl.save:run+client"),
    ("image load -i f.tar", "load -i f.tar", "ctl.load:run+client"),
    ("image ls -q", "images -q", "ctl.images:ls+client"),
]


@pytest.mark.parametrize(("grouped", "flat", "handler"), GROUPED)
def test_dockers_groups_name_the_same_commands(grouped, flat, handler):
    """`ctrctl container ls` is `ctrctl ps`, `ctrctl image pull` is `ctrctl pull`..."""
    in_group = vars(main.parse_args(grouped.split()))
    at_top = vars(main.parse_args(flat.split()))
    assert in_group.pop("handler") == at_top.pop("handler") == handler
    for key in ("command", "container_command", "image_command"):
        in_group.pop(key, None)
        at_top.pop(key, None)
    assert in_group == at_top
