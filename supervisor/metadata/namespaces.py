"""Namespaces: the records that every other object hangs from.

A namespace exists once created explicitly or once anything is written in it (`ensure`, called
inside the writer's transaction). Deleting one is refused while it still holds objects, and its
labels are replaced whole or key by key through field-mask paths (`labels`, `labels.<key>`).
"""

from __future__ import annotations

import builtins
import json
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from supervisor import identifiers
from supervisor.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unknown
from supervisor.metadata.db import Database
from supervisor.metadata.schema import NAMESPACE_CONTENTS, NAMESPACE_DISPOSABLE


@dataclass(frozen=True)
class Namespace:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)


def _require_label_keys(labels: Mapping[str, str]) -> None:
    """containerd's namespaces store writes labels with no words of its own around the
    database's refusal of an empty key (see `identifiers.require_label_keys`)."""
    if "" in labels:
        raise Unknown("key required", plain=True)


def ensure(conn: sqlite3.Connection, name: str) -> None:
    """Create `name` if it does not exist yet; for use inside any write transaction."""
    conn.execute(
        "INSERT OR IGNORE INTO namespaces (name, created_at) VALUES (?, ?)",
        (identifiers.validate(name), time.time_ns()),
    )


class NamespaceStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, name: str) -> Namespace:
        identifiers.validate(name)

        def get(conn: sqlite3.Connection) -> Namespace:
            row = conn.execute("SELECT labels FROM namespaces WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise NotFound(f'namespace "{name}"')
            return Namespace(name, json.loads(row[0]))

        return await self._db.read(get)

    async def list(self) -> builtins.list[Namespace]:
        def list_(conn: sqlite3.Connection) -> builtins.list[Namespace]:
            rows = conn.execute("SELECT name, labels FROM namespaces ORDER BY name")
            return [Namespace(name, json.loads(labels)) for name, labels in rows]

        return await self._db.read(list_)

    async def create(self, name: str, labels: Mapping[str, str]) -> Namespace:
        identifiers.validate(name)
        labels = kept_labels(identifiers.validate_labels(labels, "namespace.Labels"))

        def create(conn: sqlite3.Connection) -> Namespace:
            try:
                conn.execute(
                    "INSERT INTO namespaces (name, labels, created_at) VALUES (?, ?, ?)",
                    (name, json.dumps(labels, sort_keys=True), time.time_ns()),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(f'namespace "{name}"') from None
            _require_label_keys(labels)
            return Namespace(name, labels)

        return await self._db.write(create)

    async def update(self, name: str, labels: Mapping[str, str], paths: Sequence[str]) -> Namespace:
        """Apply a field mask; no paths means replace every label. Creates the namespace."""
        identifiers.validate(name)
        for path in paths:
            if path != "labels" and not path.startswith("labels."):
                raise InvalidArgument(f'cannot update "{path}" field on namespace "{name}"')

        def update(conn: sqlite3.Connection) -> Namespace:
            ensure(conn, name)
            (current_json,) = conn.execute(
                "SELECT labels FROM namespaces WHERE name = ?", (name,)
            ).fetchone()
            current: dict[str, str] = json.loads(current_json)
            new = apply_label_mask(current, labels, paths)
            try:
                identifiers.validate_labels(new, "namespace.Labels")
            except InvalidArgument as e:
                # containerd's Update hands its store's label error back unconverted: UNKNOWN
                raise Unknown(str(e), plain=True) from None
            _require_label_keys(new)
            conn.execute(
                "UPDATE namespaces SET labels = ? WHERE name = ?",
                (json.dumps(new, sort_keys=True), name),
            )
            return Namespace(name, new)

        return await self._db.write(update)

    async def delete(self, name: str) -> None:
        identifiers.validate(name)

        def delete(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT 1 FROM namespaces WHERE name = ?", (name,)).fetchone() is None:
                raise NotFound(f'namespace "{name}"')
            held = [
                what
                for table, what in NAMESPACE_CONTENTS
                if conn.execute(
                    f"SELECT 1 FROM {table} WHERE namespace = ? LIMIT 1", (name,)
                ).fetchone()
            ]
            snapshotters = conn.execute(
                "SELECT DISTINCT snapshotter FROM snapshots WHERE namespace = ? "
                "ORDER BY snapshotter",
                (name,),
            )
            held += [f'snapshots on "{snapshotter}" snapshotter' for (snapshotter,) in snapshotters]
            if held:
                raise FailedPrecondition(
                    f'namespace "{name}" must be empty, but it still has {", ".join(held)}'
                )
            for table in NAMESPACE_DISPOSABLE:
                conn.execute(f"DELETE FROM {table} WHERE namespace = ?", (name,))
            conn.execute("DELETE FROM namespaces WHERE name = ?", (name,))

        await self._db.write(delete)


def kept_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """What containerd's stores keep of some labels: those with a value (they write no label
    whose value is empty, and answer with what they wrote)."""
    return {key: value for key, value in labels.items() if value}


def apply_label_mask(
    current: Mapping[str, str], requested: Mapping[str, str], paths: Sequence[str]
) -> dict[str, str]:
    """containerd's label field-mask rules: `labels` replaces all; `labels.k` sets or deletes k.

    With no paths at all every label is replaced by the requested ones.
    """
    if not paths:
        return kept_labels(requested)
    new = dict(current)
    for path in paths:
        if path == "labels":
            new = kept_labels(requested)
        elif path.startswith("labels."):
            key = path[len("labels.") :]
            if key in requested and requested[key] != "":
                new[key] = requested[key]
            else:
                new.pop(key, None)
    return new
