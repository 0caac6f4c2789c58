"""ctrctl's presentation: the table printer fits a width, sizes and ages read as docker's;
the completion scripts are generated from the parser and are valid shell."""

from __future__ import annotations

import io
import shutil
import subprocess

from ctl.table import bytes_size, cut, fit, human_duration, human_size, render, table

HEADER = ["CONTAINER ID", "IMAGE", "COMMAND", "STATUS"]
ROWS = [
    ["abc123def456", "docker.io/library/busybox:latest", "sh -c 'while true; do sleep 1; done'",
     "running"],
    ["web", "nginx:1.25", "nginx -g 'daemon off;'", "exited (0)"],
]  # fmt: skip


def test_without_a_width_the_table_is_full_width():
    lines = render(HEADER, ROWS)
    assert lines[1].split("   ")[2] == ROWS[0][2]
    assert lines[0].startswith("CONTAINER ID   IMAGE")
    assert all(not line.endswith(" ") for line in lines)


def test_a_narrow_width_cuts_the_widest_columns_with_an_ellipsis():
    natural = max(len(line) for line in render(HEADER, ROWS))
    lines = render(HEADER, ROWS, width=70)
    assert natural > 70
    assert max(len(line) for line in lines) <= 70
    assert "…" in lines[1]
    assert lines[1].startswith("abc123def456   ")  # ids (narrow) are left whole
    assert lines[1].endswith("running")  # the narrow STATUS is left whole


def test_only_shrinkable_columns_are_cut_and_never_below_their_header():
    lines = render(HEADER, ROWS, width=50, shrink=(2,))
    assert ROWS[0][1] in lines[1]  # IMAGE may not shrink
    command = lines[1].split("   ")[2]
    assert command.endswith("…")
    assert len(command) >= len("COMMAND")
    tiny = render(HEADER, ROWS, width=5)
    assert all(len(cell) >= 4 for cell in tiny[1].split("   "))  # gave up before nothing


def test_fit_leaves_a_table_that_fits_alone():
    assert fit(["A", "B"], [["xx", "yyyy"]], width=80) == [2, 4]
    assert cut("abcdef", 4) == "abc…"
    assert cut("abc", 4) == "abc"


def test_a_pipe_gets_the_full_table():
    out = io.StringIO()
    table(HEADER, ROWS, out=out)
    assert ROWS[0][2] in out.getvalue()


def test_sizes_and_durations_read_as_dockers():
    assert human_size(0) == "0B"
    assert human_size(999) == "999B"
    assert human_size(1234) == "1.234kB"
    assert human_size(2_035_712, 3) == "2.04MB"
    assert bytes_size(512 * 1024) == "512KiB"
    assert bytes_size(1.5 * 1024**2) == "1.5MiB"
    assert human_duration(0.4) == "Less than a second"
    assert human_duration(1) == "1 second"
    assert human_duration(59) == "59 seconds"
    assert human_duration(90) == "About a minute"
    assert human_duration(45 * 60) == "45 minutes"
    assert human_duration(3600) == "About an hour"
    assert human_duration(5 * 3600) == "5 hours"
    assert human_duration(3 * 86400) == "3 days"
    assert human_duration(20 * 86400) == "2 weeks"
    assert human_duration(100 * 86400) == "3 months"
    assert human_duration(800 * 86400) == "2 years"


def test_completion_scripts_cover_the_commands_and_parse():
    from ctl.completion import script

    bash = script("bash")
    for command in ("rmi", "stats", "snapshots", "leases", "namespaces", "system", "restart"):
        assert command in bash
    assert "_ctrctl_containers" in bash
    assert "_ctrctl_images" in bash
    checked = subprocess.run(
        [shutil.which("bash") or "bash", "-n"], input=bash, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stderr
    assert script("zsh").startswith("#compdef ctrctl")
