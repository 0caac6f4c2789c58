"""`ctrctl run/create`'s health flags, checked as docker checks them and merged with the
image's HEALTHCHECK into the `ctrd.io/healthcheck` label (the daemon's contract:
supervisor/health/config.py).

Pure (no gRPC, no I/O). It owns:

- parsing: durations as Go's time.ParseDuration reads them (`1s`, `1m30s`, `500ms`) and
  `--health-retries` as an integer, a bad value refused in the words of docker's flag parser
  (`invalid argument "1x" for "--health-interval" flag: time: unknown unit "x" in duration
  "1x"`);
- docker's CLI checks: `--no-healthcheck` with any other health flag is refused
  (`--no-healthcheck conflicts with --health-* options`), negative values are refused
  (`--health-interval cannot be negative`); then dockerd's (a duration set below 1 ms:
  `Interval in Healthcheck cannot be less than 1ms`);
- the merge (dockerd's daemon/commit.go): without health flags the image's Healthcheck is
  the container's; with some, each field not given (empty test, zero duration or retries)
  is the image's; `--no-healthcheck` is `{"Test": ["NONE"]}`, which runs no check.

The label carries the merged config in the contract's form (`test`, `interval`, `timeout`,
`start_period` in ns, `retries`); there is no label when neither the image nor the flags ask
for anything.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from supervisor.health import LABEL  # the package alone: no dataclass to define

MINIMUM_DURATION = 1_000_000  # ns: dockerd's container.MinimumDuration (1ms)
CONFLICT = "--no-healthcheck conflicts with --health-* options"
_UNITS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,  # U+00B5
    "μs": 1_000,  # U+03BC
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
# Compiled at the first duration given (re caches them), not at every ctrctl's import.
_NUMBER = r"([0-9]*)(\.([0-9]*))?"
_UNIT = r"[^0-9.]*"
# docker's JSON names of the config's fields, and the contract's.
_FIELDS = (
    ("Interval", "interval"),
    ("Timeout", "timeout"),
    ("StartPeriod", "start_period"),
    ("Retries", "retries"),
)


class HealthFlags(NamedTuple):
    """The health flags of `run/create` as given (None: not given). A NamedTuple: a frozen
    dataclass costs every ctrctl its definition at import."""

    cmd: str | None = None
    interval: str | None = None
    timeout: str | None = None
    start_period: str | None = None
    retries: str | None = None
    no_healthcheck: bool = False


def parse_duration(text: str) -> int:
    """Go's time.ParseDuration, in nanoseconds; ValueError in Go's words."""
    quoted = json.dumps(text, ensure_ascii=False)
    rest, negative = text, False
    if rest[:1] in ("-", "+"):
        negative, rest = rest[0] == "-", rest[1:]
    if rest == "0":
        return 0
    if not rest:
        raise ValueError(f"time: invalid duration {quoted}")
    total = 0
    while rest:
        number = re.match(_NUMBER, rest)
        assert number is not None  # it matches the empty string
        whole, fraction = number.group(1), number.group(3) or ""
        if not whole and not fraction:
            raise ValueError(f"time: invalid duration {quoted}")
        rest = rest[number.end() :]
        unit = re.match(_UNIT, rest).group(0)  # type: ignore[union-attr]
        if not unit:
            raise ValueError(f"time: missing unit in duration {quoted}")
        if unit not in _UNITS:
            raise ValueError(f"time: unknown unit {json.dumps(unit)} in duration {quoted}")
        rest = rest[len(unit) :]
        size = _UNITS[unit]
        total += int(whole or "0") * size
        if fraction:
            total += int(fraction) * size // 10 ** len(fraction)
    return -total if negative else total


def _flag_duration(value: str | None, flag: str) -> int:
    if value is None:
        return 0
    try:
        return parse_duration(value)
    except ValueError as e:
        raise ValueError(f'invalid argument "{value}" for "{flag}" flag: {e}') from None


def _flag_int(value: str | None, flag: str) -> int:
    if value is None:
        return 0
    try:
        return int(value, 10)
    except ValueError:
        reason = f'strconv.ParseInt: parsing "{value}": invalid syntax'
        raise ValueError(f'invalid argument "{value}" for "{flag}" flag: {reason}') from None


def user_config(flags: HealthFlags) -> dict[str, Any] | None:
    """The container's own Healthcheck from the flags (docker's JSON form), None when no
    flag asks for anything; ValueError with docker's words for a bad value or conflict."""
    interval = _flag_duration(flags.interval, "--health-interval")
    timeout = _flag_duration(flags.timeout, "--health-timeout")
    start_period = _flag_duration(flags.start_period, "--health-start-period")
    retries = _flag_int(flags.retries, "--health-retries")
    given = bool(flags.cmd) or any((interval, timeout, start_period, retries))
    if flags.no_healthcheck:
        if given:
            raise ValueError(CONFLICT)
        return {"Test": ["NONE"]}
    if not given:
        return None
    for value, flag in (
        (interval, "--health-interval"),
        (timeout, "--health-timeout"),
        (retries, "--health-retries"),
        (start_period, "--health-start-period"),
    ):
        if value < 0:
            raise ValueError(f"{flag} cannot be negative")
    config: dict[str, Any] = {"Test": ["CMD-SHELL", flags.cmd] if flags.cmd else []}
    config.update(Interval=interval, Timeout=timeout, StartPeriod=start_period, Retries=retries)
    _check_minimums(config)
    return config


def _check_minimums(config: Mapping[str, Any]) -> None:
    """dockerd's validateHealthCheck."""
    for name in ("Interval", "Timeout", "StartPeriod"):
        value = int(config.get(name) or 0)
        if value and value < MINIMUM_DURATION:
            raise ValueError(f"{name} in Healthcheck cannot be less than 1ms")
    if int(config.get("Retries") or 0) < 0:
        raise ValueError("Retries in Healthcheck cannot be negative")


def merge(user: Mapping[str, Any] | None, image: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """dockerd's merge of the container's Healthcheck over the image's."""
    if not image:
        return dict(user) if user is not None else None
    if user is None:
        return dict(image)
    merged = dict(user)
    if not merged.get("Test"):
        merged["Test"] = image.get("Test") or []
    for name, _ in _FIELDS:
        if not merged.get(name):
            merged[name] = image.get(name) or 0
    return merged


def labels(user: Mapping[str, Any] | None, image_config: Mapping[str, Any]) -> dict[str, str]:
    """The label asking the daemon for the merged check; none when nothing asks for one."""
    image = image_config.get("Healthcheck")
    merged = merge(user, image if isinstance(image, Mapping) else None)
    if merged is None:
        return {}
    record: dict[str, Any] = {"test": list(merged.get("Test") or [])}
    for name, key in _FIELDS:
        record[key] = int(merged.get(name) or 0)
    return {LABEL: json.dumps(record, separators=(",", ":"))}


def config_of(labels: Mapping[str, str]) -> dict[str, Any] | None:
    """docker's `Config.Healthcheck` for `inspect`, from the label (zero fields left out, as
    docker's JSON omits them); None without one."""
    text = labels.get(LABEL)
    if not text:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    shown: dict[str, Any] = {}
    if record.get("test"):
        shown["Test"] = record["test"]
    for name, key in _FIELDS:
        if record.get(key):
            shown[name] = record[key]
    return shown


def from_args(args: Any) -> dict[str, Any] | None:
    """The container's own Healthcheck from parsed `run/create` arguments (`user_config`)."""
    return user_config(
        HealthFlags(
            cmd=args.health_cmd,
            interval=args.health_interval,
            timeout=args.health_timeout,
            start_period=args.health_start_period,
            retries=args.health_retries,
            no_healthcheck=args.no_healthcheck,
        )
    )
