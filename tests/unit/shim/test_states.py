"""The shim refuses what containerd's shim refuses, in its words (pkg/process state tables)."""

from __future__ import annotations

import pytest

from shim.states import CREATED, PAUSED, RUNNING, STOPPED, refusal


@pytest.mark.parametrize(
    ("status", "operation", "words"),
    [
        (CREATED, "pause", "cannot pause task in created state"),
        (CREATED, "resume", "cannot resume task in created state"),
        (RUNNING, "resume", "cannot resume a running process"),
        (RUNNING, "start", "cannot start a running process"),
        (RUNNING, "delete", "cannot delete a running process"),
        (PAUSED, "pause", "cannot pause a paused container"),
        (PAUSED, "exec", "cannot exec in a paused state"),
        (PAUSED, "delete", "cannot delete a paused process"),
        (STOPPED, "pause", "cannot pause a stopped container"),
        (STOPPED, "resume", "cannot resume a stopped container"),
        (STOPPED, "update", "cannot update a stopped container"),
        (STOPPED, "start", "cannot start a stopped process"),
        (STOPPED, "exec", "cannot exec in a stopped state"),
    ],
)
def test_an_init_refuses_in_containerds_words(status: str, operation: str, words: str) -> None:
    assert refusal(True, status, operation) == words


@pytest.mark.parametrize(
    ("status", "operation"),
    [
        (CREATED, "start"), (CREATED, "delete"), (CREATED, "exec"), (CREATED, "update"),
        (RUNNING, "pause"), (RUNNING, "exec"), (RUNNING, "update"), (PAUSED, "resume"),
        (STOPPED, "delete"), (RUNNING, "resize"), (STOPPED, "resize"),
    ],
)  # fmt: skip
def test_an_init_allows_what_its_state_allows(status: str, operation: str) -> None:
    assert refusal(True, status, operation) is None


def test_an_exec_that_has_exited_refuses_a_resize() -> None:
    assert refusal(False, STOPPED, "resize") == "cannot resize a stopped container"


def test_an_exec_not_started_yet_takes_a_resize_and_a_delete() -> None:
    assert refusal(False, CREATED, "resize") is None
    assert refusal(False, CREATED, "delete") is None


def test_an_exec_refuses_a_second_start_and_deleting_while_it_runs() -> None:
    assert refusal(False, RUNNING, "start") == "cannot start a running process"
    assert refusal(False, STOPPED, "start") == "cannot start a stopped process"
    assert refusal(False, RUNNING, "delete") == "cannot delete a running process"
