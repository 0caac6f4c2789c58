"""Leases: named holds on content, ingests and snapshots that keep them from the collector.

A lease is created by a client around work that makes objects not yet referenced by anything
else (a pull, an unpack, a container's snapshot). Calls carrying the `containerd-lease` header
record what they create under the lease (`attach`). A lease with label
`containerd.io/gc.expire` (RFC 3339) stops protecting anything once that time has passed, and is
deleted by the next collection.
"""

from __future__ import annotations

import builtins
import json
import re
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from supervisor import digests, filters, identifiers
from supervisor.errors import AlreadyExists, InvalidArgument, NotFound, Unimplemented
from supervisor.metadata.db import Database
from supervisor.metadata.namespaces import ensure, kept_labels

EXPIRE_LABEL = "containerd.io/gc.expire"
FLAT_LABEL = "containerd.io/gc.flat"


@dataclass(frozen=True)
class Lease:
    id: str
    created_at: int
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Resource:
    id: str
    type: str


def parse_time(text: str) -> int | None:
    """RFC 3339 (as Go writes it, up to nanoseconds) to ns since the epoch; None if unreadable."""
    m = re.fullmatch(r"(.*?T\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text.strip())
    if not m:
        return None
    base, fraction, zone = m.groups()
    try:
        whole = datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone))
    except ValueError:
        return None
    nanos = int((fraction or "0")[:9].ljust(9, "0"))
    return int(whole.timestamp()) * 1_000_000_000 + nanos


def expires_at(labels: Mapping[str, str]) -> int | None:
    value = labels.get(EXPIRE_LABEL)
    return parse_time(value) if value else None


def validate_resource(resource: Resource) -> None:
    if resource.type == "content":
        digests.validate(resource.id)
    elif resource.type == "ingests" or resource.type.startswith("snapshots/"):
        if not resource.id:
            raise InvalidArgument(f"resource of type {resource.type} needs an id")
    else:
        raise Unimplemented(f'resource type "{resource.type}"')


def attach(conn: sqlite3.Connection, ns: str, lease: str | None, kind: str, key: str) -> None:
    """Record `key` under the request's lease, if any; inside the caller's transaction."""
    if not lease:
        return
    if (
        conn.execute("SELECT 1 FROM leases WHERE namespace = ? AND id = ?", (ns, lease)).fetchone()
        is None
    ):
        raise NotFound(f'lease "{lease}"')
    conn.execute(
        "INSERT OR IGNORE INTO lease_resources (namespace, lease, type, id) VALUES (?, ?, ?, ?)",
        (ns, lease, kind, key),
    )


def _adaptor(lease: Lease) -> filters.Adaptor:
    return filters.label_adaptor({"id": lease.id}, dict(lease.labels))


class LeaseStore:
    """The leases of one namespace."""

    def __init__(self, db: Database, ns: str) -> None:
        self._db = db
        self._ns = ns

    async def create(self, lease_id: str, labels: Mapping[str, str]) -> Lease:
        # Not an identifier: clients make ids like "586133961-QIg-" (base64url), as containerd
        # allows any non-empty id.
        if not lease_id:
            raise InvalidArgument("lease id must be provided")
        identifiers.require_label_keys(labels)
        labels = kept_labels(labels)  # of any size: containerd checks no lease label's
        lease = Lease(lease_id, time.time_ns(), labels)

        def create(conn: sqlite3.Connection) -> Lease:
            ensure(conn, self._ns)
            try:
                conn.execute(
                    "INSERT INTO leases (namespace, id, labels, created_at) VALUES (?, ?, ?, ?)",
                    (self._ns, lease_id, json.dumps(labels, sort_keys=True), lease.created_at),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(f'lease "{lease_id}"') from None
            return lease

        return await self._db.write(create)

    async def delete(self, lease_id: str) -> None:
        def delete(conn: sqlite3.Connection) -> None:
            cur = conn.execute(
                "DELETE FROM leases WHERE namespace = ? AND id = ?", (self._ns, lease_id)
            )
            if cur.rowcount == 0:
                raise NotFound(f'lease "{lease_id}"')

        await self._db.write(delete)

    async def list(self, filter_texts: Sequence[str] = ()) -> builtins.list[Lease]:
        selected = filters.parse_all_wrapped(filter_texts)

        def list_(conn: sqlite3.Connection) -> builtins.list[Lease]:
            rows = conn.execute(
                "SELECT id, created_at, labels FROM leases WHERE namespace = ? ORDER BY id",
                (self._ns,),
            )
            return [Lease(i, c, json.loads(labels)) for i, c, labels in rows]

        return [lease for lease in await self._db.read(list_) if selected.matches(_adaptor(lease))]

    async def add_resource(self, lease_id: str, resource: Resource) -> None:
        validate_resource(resource)
        await self._db.write(
            lambda conn: attach(conn, self._ns, lease_id, resource.type, resource.id)
        )

    async def delete_resource(self, lease_id: str, resource: Resource) -> None:
        validate_resource(resource)

        def delete(conn: sqlite3.Connection) -> None:
            self._check(conn, lease_id)
            conn.execute(
                "DELETE FROM lease_resources WHERE namespace = ? AND lease = ? AND type = ? "
                "AND id = ?",
                (self._ns, lease_id, resource.type, resource.id),
            )

        await self._db.write(delete)

    async def list_resources(self, lease_id: str) -> builtins.list[Resource]:
        def list_(conn: sqlite3.Connection) -> builtins.list[Resource]:
            self._check(conn, lease_id)
            rows = conn.execute(
                "SELECT id, type FROM lease_resources WHERE namespace = ? AND lease = ? "
                "ORDER BY type, id",
                (self._ns, lease_id),
            )
            return [Resource(i, t) for i, t in rows]

        return await self._db.read(list_)

    def _check(self, conn: sqlite3.Connection, lease_id: str) -> None:
        if (
            conn.execute(
                "SELECT 1 FROM leases WHERE namespace = ? AND id = ?", (self._ns, lease_id)
            ).fetchone()
            is None
        ):
            raise NotFound(f'lease "{lease_id}"')
