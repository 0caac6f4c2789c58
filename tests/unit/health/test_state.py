"""docker's health rules as pure functions: results, streaks, the start period, the log."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.health import config, state
from supervisor.health.config import HealthConfig, go_duration
from supervisor.health.state import HEALTHY, STARTING, UNHEALTHY, Health, Result

S = 1_000_000_000
CHECK = HealthConfig(("true",), interval=S, timeout=S, start_period=10 * S, retries=3)


def result(start: int, code: int) -> Result:
    return Result(start, start + 1, code, "")


def test_a_success_makes_healthy_and_clears_the_streak():
    health = Health(UNHEALTHY, 7, (), 0)
    after = state.record(health, result(20 * S, 0), CHECK)
    assert (after.status, after.failing_streak) == (HEALTHY, 0)
    assert state.transition(health, after) == HEALTHY


def test_failures_in_the_start_period_are_not_counted_while_starting():
    health = state.started(None, at=100 * S)
    for second in range(101, 110):
        health = state.record(health, result(second * S, 1), CHECK)
    assert (health.status, health.failing_streak) == (STARTING, 0)
    health = state.record(health, result(110 * S, 1), CHECK)  # the period is over
    assert (health.status, health.failing_streak) == (STARTING, 1)


def test_retries_consecutive_failures_make_unhealthy_and_the_streak_goes_on():
    health = state.record(Health(HEALTHY, 0, (), 0), result(50 * S, 1), CHECK)
    health = state.record(health, result(51 * S, -1), CHECK)
    assert (health.status, health.failing_streak) == (HEALTHY, 2)
    before = health
    health = state.record(health, result(52 * S, 2), CHECK)
    assert (health.status, health.failing_streak) == (UNHEALTHY, 3)
    assert state.transition(before, health) == UNHEALTHY
    again = state.record(health, result(53 * S, 1), CHECK)
    assert (again.failing_streak, state.transition(health, again)) == (4, None)


def test_a_healthy_container_in_its_start_period_counts_failures():
    health = state.record(state.started(None, at=0), result(S, 0), CHECK)
    health = state.record(health, result(2 * S, 1), CHECK)
    assert (health.status, health.failing_streak) == (HEALTHY, 1)


@given(st.lists(st.integers(-1, 3), max_size=30))
def test_the_log_keeps_the_last_five_results_in_order(codes):
    health = state.started(None, 0)
    for i, code in enumerate(codes):
        health = state.record(health, result(i, code), CHECK)
    assert [r.start for r in health.log] == list(range(len(codes)))[-5:]


def test_a_restart_starts_again_and_keeps_the_log():
    old = Health(UNHEALTHY, 4, (result(1, 1),), 0)
    assert state.started(old, at=9) == Health(STARTING, 0, old.log, 9)


def test_output_is_cut_at_4_kib_with_dockers_ellipsis():
    assert state.cut(b"a" * 4096) == "a" * 4096
    assert state.cut(b"a" * 4097) == "a" * 4096 + "..."
    assert state.cut(b"ok", truncated=True) == "ok..."
    assert state.cut(b"\xff") == "\ufffd"


@pytest.mark.parametrize(
    ("ns", "text"),
    [(0, "0s"), (1, "1ns"), (1500, "1.5µs"), (300 * 10**6, "300ms"), (S, "1s"),
     (1500 * 10**6, "1.5s"), (90 * S, "1m30s"), (3600 * S, "1h0m0s"), (3723 * S, "1h2m3s")],
)  # fmt: skip
def test_durations_read_as_gos(ns, text):
    assert go_duration(ns) == text


def label(**record: object) -> dict[str, str]:
    return {config.LABEL: json.dumps(record)}


def test_the_label_contract_with_its_defaults():
    assert config.from_labels({}) is None
    assert config.from_labels(label(test=["NONE"])) is None
    assert config.from_labels(label(test=[])) is None
    assert config.from_labels(label(test=["WHAT", "x"])) is None
    assert config.from_labels(label(test=["CMD", "curl", "-f", "x"])) == HealthConfig(
        ("curl", "-f", "x"), 30 * S, 30 * S, 0, 3
    )
    shell = config.from_labels(
        label(test=["CMD-SHELL", "exit 1"], interval=S, timeout=2 * S, start_period=3, retries=4)
    )
    assert shell == HealthConfig(("/bin/sh", "-c", "exit 1"), S, 2 * S, 3, 4)


@pytest.mark.parametrize(
    "text", ["not json", "[1]", '{"test": "CMD true"}', '{"test": ["CMD", "x"], "interval": -1}']
)
def test_a_broken_label_is_refused(text):
    with pytest.raises(config.BadHealthcheck):
        config.from_labels({config.LABEL: text})
