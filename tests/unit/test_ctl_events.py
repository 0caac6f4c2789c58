"""`ctrctl events` options: docker's time formats and filters."""

from __future__ import annotations

import pytest

from ctl.events import BadTime, build_filters, parse_time


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-28", 1795824000 * 10**9),
        ("2026-11-28T10:00:00Z", (1795824000 + 36000) * 10**9),
        ("2026-11-28T10:00:00+01:00", (1795824000 + 32400) * 10**9),
        ("2026-11-28T10:00:00.5Z", (1795824000 + 36000) * 10**9 + 500_000_000),
        ("1795830000", 1795830000 * 10**9),
        ("1795830000.000000001", 1795830000 * 10**9 + 1),
        ("10m", (10_000 - 600) * 10**9),
        ("1h30m", (10_000 - 5400) * 10**9),
        ("1.5s", int((10_000 - 1.5) * 10**9)),
    ],
)
def test_times_as_docker_takes_them(text, expected):
    assert parse_time(text, now=10_000.0) == expected


@pytest.mark.parametrize("text", ["yesterday", "10x", "", "1h30"])
def test_what_is_not_a_time_is_refused(text):
    with pytest.raises(BadTime):
        parse_time(text)


def test_filters_and_keys_or_values():
    assert build_filters(["container=a", "container=b", "type=/tasks/exit"], "ns") == [
        'event.container_id=="a",namespace=="ns",topic=="/tasks/exit"',
        'event.container_id=="b",namespace=="ns",topic=="/tasks/exit"',
    ]
    assert build_filters([], None) == []
    assert build_filters(["topic~=/tasks/"], None) == ["topic~=/tasks/"]
    assert build_filters(["topic~=/tasks/"], "ns") == ['namespace=="ns",topic~=/tasks/']
    with pytest.raises(ValueError, match="key=value"):
        build_filters(["nonsense"], None)
