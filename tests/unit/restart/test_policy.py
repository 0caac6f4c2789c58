"""supervisor.restart.policy: docker's --restart rules and words, its decisions and back-off."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.restart import policy
from supervisor.restart.policy import InvalidPolicy, Policy


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("", Policy("no")),
        ("no", Policy("no")),
        ("always", Policy("always")),
        ("unless-stopped", Policy("unless-stopped")),
        ("on-failure", Policy("on-failure")),
        ("on-failure:3", Policy("on-failure", 3)),
        ("on-failure:+3", Policy("on-failure", 3)),  # Go's Atoi takes a sign
        ("no:0", Policy("no")),
        (":3", Policy("no")),  # docker takes an empty name as none
    ],
)
def test_docker_values_parse(text, parsed):
    assert policy.parse(text) == parsed


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("sometimes", "invalid restart policy 'sometimes'"),
        ("a:b:c", "invalid restart policy format"),
        ("on-failure:x", "maximum retry count must be an integer"),
        ("on-failure: 3", "maximum retry count must be an integer"),
        ("on-failure:-1", "maximum retry count cannot be negative"),
        ("always:1", "maximum retry count cannot be used with restart policy 'always'"),
        ("no:2", "maximum retry count cannot be used with restart policy 'no'"),
    ],
)
def test_values_docker_refuses_are_refused_in_its_words(text, words):
    with pytest.raises(InvalidPolicy, match=f"^{words}$"):
        policy.parse(text)


def test_the_label_text_round_trips():
    for text in ("no", "always", "unless-stopped", "on-failure", "on-failure:5"):
        assert str(policy.parse(text)) == text


def test_a_label_that_does_not_parse_is_no_policy():
    assert policy.of({policy.LABEL: "sometimes"}).none
    assert policy.of({}).none


def test_the_back_off_starts_at_100ms_doubles_to_a_minute_and_resets_after_10s():
    delays, delay = [], 0.0
    for _ in range(12):
        delay = policy.next_delay(delay, ran_for=0.2)
        delays.append(delay)
    assert delays[:5] == [0.1, 0.2, 0.4, 0.8, 1.6]
    assert delays[-1] == 60.0
    assert policy.next_delay(60.0, ran_for=10.0) == 0.1
    assert policy.next_delay(0.8, ran_for=9.9) == 1.6


@pytest.mark.parametrize(
    ("name", "retries", "status", "by_user", "count", "restart"),
    [
        ("always", 0, 0, True, 100, True),  # at a daemon's start, even after a user's stop
        ("unless-stopped", 0, 0, False, 0, True),
        ("unless-stopped", 0, 1, True, 0, False),
        ("on-failure", 0, 0, False, 0, False),  # a clean exit is no failure
        ("on-failure", 0, 1, False, 1000, True),  # no limit
        ("on-failure", 3, 1, False, 2, True),
        ("on-failure", 3, 1, False, 3, False),  # gave up after 3
        ("on-failure", 3, 1, True, 0, True),  # docker ignores a user's stop here
        ("no", 0, 1, False, 0, False),
    ],
)
def test_should_restart_is_dockers(name, retries, status, by_user, count, restart):
    assert policy.should_restart(Policy(name, retries), status, by_user, count) is restart


@given(st.text(max_size=20))
def test_parse_raises_nothing_but_its_error(text):
    try:
        parsed = policy.parse(text)
    except InvalidPolicy:
        return
    assert parsed.name in policy.NAMES
