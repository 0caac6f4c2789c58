"""ctrctl's command line: the quick path (the parser of the given command alone) parses, and
prints, as the whole tree does."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import subprocess
import sys

import pytest

from ctl import main


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (commands,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(commands.choices)


def command_names(parser: argparse.ArgumentParser) -> set[str]:
    return set(subcommands(parser))


def declared_by(module: str) -> set[str]:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers()
    if module == "ctl.main":
        main._own_commands(commands)
    else:
        importlib.import_module(module).add_parsers(commands)
    return set(commands.choices)


def test_every_command_has_its_home_and_only_its_home_declares_it():
    assert set(main.COMMAND_HOMES) == command_names(main.build_parser())
    for module in ("ctl.main", *main.COMMAND_MODULES):
        homed = {name for name, home in main.COMMAND_HOMES.items() if home == module}
        assert declared_by(module) == homed, module


def test_the_quick_path_builds_the_given_command_alone():
    assert command_names(main.build_parser(only="run")) == {"run"}
    assert command_names(main.build_parser(only="ns")) == {"namespaces", "namespace", "ns"}


def test_parsing_a_run_command_line_builds_two_parsers(monkeypatch):
    """ctrctl's and run's, not the ~35 of the whole tree (~25 ms of a `ctrctl run`)."""
    built = []
    init = argparse.ArgumentParser.__init__

    def counting_init(self, *args, **kwargs):
        built.append(kwargs.get("prog"))
        init(self, *args, **kwargs)

    monkeypatch.setattr(argparse.ArgumentParser, "__init__", counting_init)
    main.parse_args(["-a", "/s.sock", "run", "-d", "--network", "none", "img", "sleep", "9"])
    assert built == ["ctrctl", "ctrctl run"]


def output_of(parse, argv: list[str]) -> tuple[object, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            result: object = vars(parse(argv))
        except SystemExit as e:
            result = e.code
    return result, out.getvalue(), err.getvalue()


def every_command_line_with_help() -> list[list[str]]:
    lines = []
    for name, parser in subcommands(main.build_parser()).items():
        lines.append([name, "--help"])
        with contextlib.suppress(ValueError):
            lines += [[name, inner, "--help"] for inner in subcommands(parser)]
    return lines


@pytest.mark.parametrize("argv", every_command_line_with_help(), ids=" ".join)
def test_each_commands_help_is_the_whole_trees(argv, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    assert output_of(main.parse_args, argv) == output_of(main.build_parser().parse_args, argv)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--help"],
        ["-h", "run"],
        ["frobnicate"],
        ["run"],
        ["--addr", "x", "ps", "run"],
        ["--deb", "ps", "--bogus"],
        ["run", "-d", "--pull", "sometimes", "img"],
        ["ps", "-n", "x"],
        ["image"],
        ["image", "frob"],
        ["container"],
        ["--", "ps"],
        ["-nfoo", "rm"],
        ["stop", "-t", "abc", "c"],
        ["version", "extra"],
    ],
    ids=" ".join,
)
def test_errors_and_help_are_the_whole_trees(argv, monkeypatch):
    """Told by the whole tree: every command in the lists of choices and the top help."""
    monkeypatch.setenv("COLUMNS", "100")
    assert output_of(main.parse_args, argv) == output_of(main.build_parser().parse_args, argv)


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["run", "--rm", "img"], "run"),
        (["-a", "/s.sock", "-n", "ns", "--debug", "ps", "-a"], "ps"),
        (["--address=/s.sock", "images"], "images"),
        (["--namespace", "run", "ps"], "ps"),  # "run" is the namespace here
        (["--debug"], None),
        (["-nns", "--address=/s.sock", "rm", "x"], "rm"),
        (["-h", "run"], None),  # the top help: the whole tree's
        (["--addr", "/s.sock", "run"], None),  # abbreviations: left to the whole tree
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


TEARDOWN_PROBE = """
import atexit, sys
from ctl.main import main

class Teardown:
    def __del__(self):
        print("teardown ran", flush=True)

probe = Teardown()  # a global of __main__: deleted by the interpreter's teardown
atexit.register(lambda: print("atexit ran"))
sys.argv = ["ctrctl", *sys.argv[1:]]
sys.exit(main())
"""


@pytest.mark.parametrize(("argv", "status"), [(["completion", "bash"], 0), (["pull", ""], 125)])
def test_the_command_line_ends_without_the_interpreters_teardown(argv, status):
    """The teardown costs every ctrctl 20-30 ms; output and atexit functions are not lost."""
    ran = subprocess.run(
        [sys.executable, "-c", TEARDOWN_PROBE, "--address", "/nonexistent.sock", *argv],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ran.returncode == status, ran.stderr
    whole = subprocess.run(
        [sys.executable, "-m", "ctl", "--address", "/nonexistent.sock", *argv],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ran.stdout == whole.stdout + "atexit ran\n"
    assert ran.stderr == whole.stderr


def test_a_profiled_ctrctl_exits_normally_and_writes_its_figures(tmp_path):
    figures = tmp_path / "ctrctl.prof"
    ran = subprocess.run(
        [sys.executable, "-m", "cProfile", "-o", str(figures), "-m", "ctl",
         "--address", "/nonexistent.sock", "completion", "bash"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert figures.stat().st_size > 0
