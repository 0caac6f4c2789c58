"""`ctrctl events`: the daemon's events, live or replayed from its log, with docker's options.

`--since` and `--until` take what `docker events` takes: RFC 3339 times (a date alone is
midnight UTC; a time without a zone is UTC), Unix seconds with an optional fraction, or a Go
duration (`90s`, `10m`, `1h30m`) meaning that long before now. Without `--since` only new
events show; with `--until` the command stops once the log is read up to then.

`--filter type=` takes docker's object types (container, image, network, volume: the topics
of their events) or a topic; `container=` a container's id.

Each event is a line: time, namespace, topic and the event as JSON (supervisor.anys): Anys
inside it decoded with their `"@type"`, and an event or Any of a type no message of ours has
shown raw, `{"type_url": ..., "value": base64}`, as ctr shows an Any it does not decode
(ctr itself skips such events; ctrctl never drops or dies on one).
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import time
from typing import Any

from ctl.times import BadTime, parse_time

__all__ = ["BadTime", "build_filters", "format_event", "parse_time", "run"]

_ALIASES = {"container": "event.container_id", "type": "topic"}
# docker's `--filter type=...`: its object types, as the topics of their events
_TYPES = {
    "container": "^/(containers|tasks)/",
    "image": "^/images/",
    "network": "^/networks/",
    "volume": "^/volumes/",
}


def build_filters(given: list[str], namespace: str | None) -> list[str]:
    """containerd filters (ORed) for docker-style ones: keys ANDed, a key's values ORed.
    `type=` takes docker's object types (container, image, network, volume) or a topic."""
    raw = [f for f in given if any(op in f for op in ("==", "!=", "~="))]
    by_key: dict[str, list[str]] = {}
    for item in given:
        if item in raw:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f'filter "{item}" is not key=value')
        if key == "type" and value in _TYPES:
            clause = f'topic~="{_TYPES[value]}"'
        else:
            clause = f'{_ALIASES.get(key, key)}=="{value}"'
        by_key.setdefault(_ALIASES.get(key, key), []).append(clause)
    if namespace:
        by_key.setdefault("namespace", [f'namespace=="{namespace}"'])
    keys = sorted(by_key)
    combos = [",".join(clauses) for clauses in itertools.product(*(by_key[k] for k in keys))]
    if not raw:
        return [c for c in combos if c]
    if not combos or combos == [""]:
        return raw
    return [f"{c},{r}" for c in combos for r in raw]


def format_event(envelope: Any) -> str:
    """One event as a line: time, namespace, topic, and the event as JSON. An event whose
    type no message of ours has (or whose bytes do not parse) is shown raw, never dropped."""
    from supervisor import anys

    when = _when(envelope.timestamp)
    body = json.dumps(anys.content(envelope.event), separators=(",", ":"), sort_keys=True)
    return f"{when} {envelope.namespace} {envelope.topic} {body}"


def _when(timestamp: Any) -> str:
    """RFC 3339 with nanoseconds; seconds since the epoch for a time Python cannot show."""
    try:
        stamp: dt.datetime = timestamp.ToDatetime(tzinfo=dt.UTC)
    except (ValueError, OverflowError):
        return f"{timestamp.seconds}.{timestamp.nanos:09d}"  # e.g. year 10000 and later
    nanos: int = timestamp.nanos
    return stamp.strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"


def run(args: argparse.Namespace) -> int:
    import grpc

    from supervisor.api.ctrd.services.events.v1 import log_pb2, log_pb2_grpc

    request = log_pb2.ReplayRequest(
        filters=build_filters(args.filter, None if args.all_namespaces else args.namespace),
        follow=True,
    )
    if args.since:
        request.since.FromNanoseconds(parse_time(args.since))
    if args.until:
        request.until.FromNanoseconds(parse_time(args.until))
    if not args.since:
        # Only what happens from now on: the log's events from this very moment.
        request.since.FromNanoseconds(time.time_ns())
    with grpc.insecure_channel(f"unix:{args.address}") as channel:
        stream = log_pb2_grpc.EventLogStub(channel).Replay(request)
        try:
            for logged in stream:
                print(format_event(logged.envelope), flush=True)
        except KeyboardInterrupt:
            stream.cancel()
    return 0
