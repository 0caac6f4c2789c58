"""Times as ctrctl reads and writes them, in docker's forms.

Durations are Go's (`90s`, `1h30m`, `1.5h`; a bare number is seconds). A TIME (`--since`,
`--until`) is what docker takes: RFC 3339 (a date alone is midnight UTC, a time without a zone
is UTC, up to nanoseconds), Unix seconds with an optional fraction, or a duration meaning that
long before now. Written times are RFC 3339 with nanoseconds, as docker's `logs -t` prints them.
"""

from __future__ import annotations

import datetime as dt
import re
import time

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_NUMBER = re.compile(r"\d+(\.\d+)?")


class BadTime(ValueError):
    pass


def _go_duration(text: str) -> float | None:
    """Seconds in a Go duration, or None if `text` is not one."""
    pos, total = 0, 0.0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    return total if text and pos == len(text) else None


def parse_duration(text: str) -> float:
    """Seconds in a Go duration (`90s`, `1h30m`); a bare number is seconds."""
    text = text.strip()
    if _NUMBER.fullmatch(text):
        return float(text)
    seconds = _go_duration(text)
    if seconds is None:
        raise ValueError(f'"{text}" is not a duration: use 30m, 24h, 1h30m')
    return seconds


def parse_rfc3339(text: str) -> dt.datetime:
    """An RFC 3339 time, its fraction cut to microseconds (Go writes nine digits); UTC if it
    names no zone. ValueError if it is none."""
    text = re.sub(r"(\.\d{6})\d+", r"\1", text.strip()).replace("Z", "+00:00")
    parsed = dt.datetime.fromisoformat(text)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def parse_time(text: str, now: float | None = None) -> int:
    """Nanoseconds since the epoch for a docker-style TIME."""
    now = time.time() if now is None else now
    text = text.strip()
    if _NUMBER.fullmatch(text):
        seconds, _, fraction = text.partition(".")
        return int(seconds) * 10**9 + int((fraction + "0" * 9)[:9])
    before = _go_duration(text)
    if before is not None:
        return int((now - before) * 1e9)
    try:
        parsed = parse_rfc3339(text)
    except ValueError:
        raise BadTime(
            f'"{text}" is not a time: use RFC 3339, Unix seconds or a duration like 10m'
        ) from None
    return int(parsed.timestamp()) * 10**9 + parsed.microsecond * 1000


def rfc3339_nano(ns: int) -> str:
    """`2026-11-28T04:10:00.123456789Z`: docker's `logs -t` form."""
    seconds, fraction = divmod(ns, 10**9)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:09d}Z"
