"""ExecSync's pure parts: the answer's output fitted into one message, Go's durations, the
exec's process taken from the container's."""

from __future__ import annotations

import pytest

from supervisor.cri.execsync import fit, go_seconds
from supervisor.runtime.execs import exec_process


def test_output_that_fits_is_kept_whole():
    assert fit(b"out", b"err", 6) == (b"out", b"err")


def test_output_too_large_for_a_message_is_cut_keeping_the_shorter_stream_whole():
    assert fit(b"o" * 10, b"ee", 8) == (b"o" * 6, b"ee")
    assert fit(b"oo", b"e" * 10, 8) == (b"oo", b"e" * 6)
    assert fit(b"o" * 10, b"e" * 10, 8) == (b"o" * 4, b"e" * 4)


@pytest.mark.parametrize(
    ("seconds", "text"), [(1, "1s"), (59, "59s"), (90, "1m30s"), (3600, "1h0m0s"), (3661, "1h1m1s")]
)
def test_timeouts_read_as_go_durations(seconds, text):
    assert go_seconds(seconds) == text


def test_an_exec_runs_with_the_containers_process_settings_without_a_terminal():
    container = {
        "args": ["nginx"], "terminal": True, "consoleSize": {"height": 1, "width": 2},
        "user": {"uid": 101, "gid": 101, "additionalGids": [5]}, "cwd": "/srv",
        "env": ["A=1"], "capabilities": {"bounding": ["CAP_CHOWN"]}, "noNewPrivileges": True,
    }  # fmt: skip
    process = exec_process(container, ["cat", "/etc/hostname"])
    assert process == {
        "args": ["cat", "/etc/hostname"], "terminal": False,
        "user": {"uid": 101, "gid": 101, "additionalGids": [5]}, "cwd": "/srv",
        "env": ["A=1"], "capabilities": {"bounding": ["CAP_CHOWN"]}, "noNewPrivileges": True,
    }  # fmt: skip
    assert container["args"] == ["nginx"]  # the container's own is left alone
