"""ctrctl's health flags: Go durations, docker's checks and words, dockerd's merge."""

from __future__ import annotations

import json
import re

import pytest

from ctl import healthopts
from ctl.healthopts import HealthFlags, merge, parse_duration, user_config

MS = 1_000_000
S = 1000 * MS
IMAGE = {"Test": ["CMD", "probe"], "Interval": 5 * S, "Timeout": 2 * S, "Retries": 7}


@pytest.mark.parametrize(
    ("text", "ns"),
    [("0", 0), ("1s", S), ("1.5s", 1500 * MS), (".5s", 500 * MS), ("1m30s", 90 * S),
     ("300ms", 300 * MS), ("2us", 2000), ("2µs", 2000), ("1h", 3600 * S), ("-1s", -S),
     ("+2s", 2 * S), ("1.s", S)],
)  # fmt: skip
def test_durations_parse_as_gos(text, ns):
    assert parse_duration(text) == ns


@pytest.mark.parametrize(
    ("text", "words"),
    [("", 'time: invalid duration ""'), ("abc", 'time: invalid duration "abc"'),
     ("1", 'time: missing unit in duration "1"'), (".s", 'time: invalid duration ".s"'),
     ("1x", 'time: unknown unit "x" in duration "1x"')],
)  # fmt: skip
def test_bad_durations_are_refused_in_gos_words(text, words):
    with pytest.raises(ValueError, match="^" + re.escape(words) + "$"):
        parse_duration(text)


def test_no_flags_ask_for_nothing_and_the_image_decides():
    assert user_config(HealthFlags()) is None
    assert merge(None, IMAGE) == IMAGE
    assert merge(None, None) is None
    labels = healthopts.labels(None, {"Healthcheck": IMAGE})
    assert json.loads(labels["ctrd.io/healthcheck"]) == {
        "test": ["CMD", "probe"], "interval": 5 * S, "timeout": 2 * S, "start_period": 0,
        "retries": 7,
    }  # fmt: skip
    assert healthopts.labels(None, {}) == {}


def test_flags_override_the_image_field_by_field():
    user = user_config(HealthFlags(cmd="exit 1", interval="1s"))
    assert merge(user, IMAGE) == {
        "Test": ["CMD-SHELL", "exit 1"], "Interval": S, "Timeout": 2 * S, "StartPeriod": 0,
        "Retries": 7,
    }  # fmt: skip
    timing_only = merge(user_config(HealthFlags(retries="2")), IMAGE)
    assert timing_only is not None
    assert (timing_only["Test"], timing_only["Retries"]) == (["CMD", "probe"], 2)


def test_no_healthcheck_is_none_and_conflicts_with_the_other_flags():
    assert user_config(HealthFlags(no_healthcheck=True)) == {"Test": ["NONE"]}
    for flags in (HealthFlags(cmd="x"), HealthFlags(interval="1s"), HealthFlags(retries="1")):
        given = flags._replace(no_healthcheck=True)
        with pytest.raises(ValueError, match=r"^--no-healthcheck conflicts with --health-\*"):
            user_config(given)


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (HealthFlags(interval="-1s"), "--health-interval cannot be negative"),
        (HealthFlags(timeout="-1s"), "--health-timeout cannot be negative"),
        (HealthFlags(retries="-1"), "--health-retries cannot be negative"),
        (HealthFlags(start_period="-1s"), "--health-start-period cannot be negative"),
        (HealthFlags(interval="999us"), "Interval in Healthcheck cannot be less than 1ms"),
        (HealthFlags(timeout="1ns"), "Timeout in Healthcheck cannot be less than 1ms"),
        (HealthFlags(start_period="5us"), "StartPeriod in Healthcheck cannot be less than 1ms"),
        (
            HealthFlags(timeout="2"),
            'invalid argument "2" for "--health-timeout" flag: time: missing unit in duration "2"',
        ),
        (
            HealthFlags(retries="three"),
            'invalid argument "three" for "--health-retries" flag: strconv.ParseInt: parsing'
            ' "three": invalid syntax',
        ),
    ],
)
def test_bad_values_are_refused_in_dockers_words(flags, words):
    with pytest.raises(ValueError, match=re.escape(words)) as refused:
        user_config(flags)
    assert str(refused.value) == words


def test_inspect_shows_the_labels_config_without_zero_fields():
    labels = healthopts.labels(user_config(HealthFlags(cmd="true")), {})
    assert healthopts.config_of(labels) == {"Test": ["CMD-SHELL", "true"]}
    assert healthopts.config_of({}) is None
