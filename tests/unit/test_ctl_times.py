"""ctrctl's durations and times, in docker's forms."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ctl.times import BadTime, parse_duration, parse_rfc3339, parse_time, rfc3339_nano


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), ("90s", 90.0), ("1h30m", 5400.0), ("1.5h", 5400.0), ("250ms", 0.25)],
)
def test_go_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "h", "10 m", "10m!", "1d"])
def test_what_is_no_duration_says_so(text):
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


def test_go_rfc3339_with_nanoseconds_and_no_zone():
    assert parse_rfc3339("2026-11-28T04:10:00.123456789Z").microsecond == 123456
    assert parse_rfc3339("2026-11-28T04:10:00").utcoffset().total_seconds() == 0
    with pytest.raises(ValueError, match="Invalid isoformat"):
        parse_rfc3339("yesterday")
    with pytest.raises(BadTime):
        parse_time("yesterday")


@given(st.integers(min_value=0, max_value=4_000_000_000 * 10**9))
def test_written_times_read_back_to_the_microsecond(ns):
    written = rfc3339_nano(ns)
    assert len(written) == len("2026-11-28T04:10:00.123456789Z")
    assert parse_time(written) == ns - ns % 1000
