"""Containers: the records that name a runtime, a spec and a root filesystem snapshot.

A container is metadata only; its task (the running process) is the tasks service's. It is a
root of the garbage collector: its snapshot and whatever its `containerd.io/gc.ref.*` labels
name stay. Runtime options, the spec and extensions are opaque here: `Any` values kept as the
client sent them (type URL and bytes).
"""

from __future__ import annotations

import base64
import builtins
import json
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from supervisor import filters, identifiers
from supervisor.errors import AlreadyExists, InvalidArgument, NotFound
from supervisor.metadata.db import Database
from supervisor.metadata.namespaces import apply_label_mask, ensure, kept_labels

Opaque = tuple[str, bytes]  # an Any: (type URL, serialized value)


@dataclass(frozen=True)
class Container:
    id: str
    runtime_name: str
    spec: Opaque | None = None
    runtime_options: Opaque | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    image: str = ""
    snapshotter: str = ""
    snapshot_key: str = ""
    extensions: Mapping[str, Opaque] = field(default_factory=dict)
    created_at: int = 0
    updated_at: int = 0


def validate(c: Container, failure: str) -> Container:
    """containerd's checks of a container to store, in its order and words; the error reads
    `<failure>: <what is wrong>` (`create container failed validation: ...`)."""
    try:
        _check(c)
    except InvalidArgument as e:
        raise InvalidArgument(f"{failure}: {e.detail}") from None
    return c


def _check(c: Container) -> None:
    try:
        identifiers.validate(c.id)
    except InvalidArgument as e:
        raise InvalidArgument(f"container.ID: {e.detail}") from None
    if any(not name for name in c.extensions):
        raise InvalidArgument("container.Extension keys must not be zero-length")
    identifiers.validate_labels(c.labels, "containers.Labels")
    if not c.runtime_name:
        raise InvalidArgument("container.Runtime.Name must be set")
    if c.spec is None:
        raise InvalidArgument("container.Spec must be set")
    if c.snapshot_key and not c.snapshotter:
        raise InvalidArgument("container.Snapshotter must be set if container.SnapshotKey is set")


def _adaptor(c: Container) -> filters.Adaptor:
    def adapt(path: tuple[str, ...]) -> str | None:
        if path[:1] == ("labels",) and len(path) > 1:
            return c.labels.get(".".join(path[1:]))
        return {
            ("id",): c.id,
            ("image",): c.image,
            ("runtime",): c.runtime_name,
            ("runtime", "name"): c.runtime_name,
            ("snapshotter",): c.snapshotter,
            ("snapshotkey",): c.snapshot_key,
        }.get(path)

    return adapt


_COLUMNS = (
    "id, labels, image, runtime_name, runtime_options_type, runtime_options, spec_type, spec, "
    "snapshotter, snapshot_key, extensions, created_at, updated_at"
)


def _from_row(row: tuple[object, ...]) -> Container:
    (cid, labels, image, rt, rt_type, rt_value, spec_type, spec, sn, key, ext, created, updated) = (
        row
    )
    extensions = {
        name: (type_url, base64.b64decode(value))
        for name, (type_url, value) in json.loads(str(ext)).items()
    }
    return Container(
        id=str(cid),
        runtime_name=str(rt),
        spec=(str(spec_type), bytes(spec)) if spec_type else None,  # type: ignore[call-overload]
        runtime_options=(str(rt_type), bytes(rt_value)) if rt_type else None,  # type: ignore[call-overload]
        labels=json.loads(str(labels)),
        image=str(image),
        snapshotter=str(sn),
        snapshot_key=str(key),
        extensions=extensions,
        created_at=int(created),  # type: ignore[call-overload]
        updated_at=int(updated),  # type: ignore[call-overload]
    )


def _row(ns: str, c: Container) -> tuple[object, ...]:
    extensions = {
        name: [type_url, base64.b64encode(value).decode()]
        for name, (type_url, value) in c.extensions.items()
    }
    rt_type, rt_value = c.runtime_options or ("", b"")
    spec_type, spec = c.spec or ("", b"")
    return (
        ns, c.id, json.dumps(dict(c.labels), sort_keys=True), c.image, c.runtime_name,
        rt_type, rt_value, spec_type, spec, c.snapshotter, c.snapshot_key,
        json.dumps(extensions, sort_keys=True), c.created_at, c.updated_at,
    )  # fmt: skip


class ContainerStore:
    """The containers of one namespace."""

    def __init__(self, db: Database, ns: str) -> None:
        self._db = db
        self._ns = ns

    def _find(self, conn: sqlite3.Connection, cid: str) -> Container | None:
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM containers WHERE namespace = ? AND id = ?", (self._ns, cid)
        ).fetchone()
        return None if row is None else _from_row(row)

    def _get(self, conn: sqlite3.Connection, cid: str) -> Container:
        found = self._find(conn, cid)
        if found is None:
            raise NotFound(f'container "{cid}" in namespace "{self._ns}"')
        return found

    def _missing(self, conn: sqlite3.Connection, doing: str, cid: str, words: str) -> NotFound:
        """containerd's words for a container an update or delete does not find: `words`, or,
        when the namespace holds no container at all (containerd has no bucket for them
        there), words that name the namespace."""
        if conn.execute(
            "SELECT 1 FROM containers WHERE namespace = ? LIMIT 1", (self._ns,)
        ).fetchone():
            return NotFound(words)
        return NotFound(f'cannot {doing} container "{cid}" in namespace "{self._ns}"')

    def _put(self, conn: sqlite3.Connection, c: Container) -> None:
        identifiers.require_label_keys(c.labels, f'failed to write container "{c.id}"')
        conn.execute(
            f"INSERT OR REPLACE INTO containers (namespace, {_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            _row(self._ns, c),
        )

    async def get(self, cid: str) -> Container:
        return await self._db.read(lambda conn: self._get(conn, cid))

    async def list(self, filter_texts: Sequence[str] = ()) -> builtins.list[Container]:
        selected = filters.parse_all_wrapped(filter_texts)
        rows = await self._db.read(
            lambda conn: conn.execute(
                f"SELECT {_COLUMNS} FROM containers WHERE namespace = ? ORDER BY id", (self._ns,)
            ).fetchall()
        )
        return [c for c in map(_from_row, rows) if selected.matches(_adaptor(c))]

    async def create(self, c: Container) -> Container:
        now = time.time_ns()
        c = replace(c, labels=kept_labels(c.labels), created_at=now, updated_at=now)
        c = validate(c, "create container failed validation")

        def create(conn: sqlite3.Connection) -> Container:
            ensure(conn, self._ns)
            if conn.execute(
                "SELECT 1 FROM containers WHERE namespace = ? AND id = ?", (self._ns, c.id)
            ).fetchone():
                raise AlreadyExists(f'container "{c.id}"')
            self._put(conn, c)
            return c

        return await self._db.write(create)

    async def update(self, c: Container, paths: Sequence[str]) -> Container:
        identifiers.validate(c.id)

        def update(conn: sqlite3.Connection) -> Container:
            current = self._find(conn, c.id)
            if current is None:
                raise self._missing(conn, "update", c.id, f'container "{c.id}"')
            new = validate(apply_paths(current, c, paths), "update failed validation")
            self._put(conn, new)
            return new

        return await self._db.write(update)

    async def delete(self, cid: str) -> None:
        def delete(conn: sqlite3.Connection) -> None:
            cur = conn.execute(
                "DELETE FROM containers WHERE namespace = ? AND id = ?", (self._ns, cid)
            )
            if cur.rowcount == 0:
                raise self._missing(conn, "delete", cid, f"container {cid}")

        await self._db.write(delete)


def apply_paths(current: Container, requested: Container, paths: Sequence[str]) -> Container:
    """containerd's container field masks; no paths replaces the mutable fields."""
    if not paths:
        if requested.snapshotter != current.snapshotter:
            raise InvalidArgument("container.Snapshotter field is immutable")
        if requested.runtime_name != current.runtime_name:
            raise InvalidArgument("container.Runtime.Name field is immutable")
        paths = ["labels", "spec", "extensions", "image", "snapshotkey"]
    new = current
    label_paths = [p for p in paths if p == "labels" or p.startswith("labels.")]
    if label_paths:
        new = replace(new, labels=apply_label_mask(current.labels, requested.labels, label_paths))
    extensions = dict(new.extensions)
    for path in paths:
        if path == "labels" or path.startswith("labels."):
            continue
        if path.startswith("extensions."):
            name = path[len("extensions.") :]
            if name in requested.extensions:
                extensions[name] = requested.extensions[name]
            else:
                extensions.pop(name, None)
        elif path == "extensions":
            extensions = dict(requested.extensions)
        elif path == "spec":
            new = replace(new, spec=requested.spec)
        elif path == "image":
            new = replace(new, image=requested.image)
        elif path == "snapshotkey":
            new = replace(new, snapshot_key=requested.snapshot_key)
        else:
            raise InvalidArgument(f'cannot update "{path}" field on "{current.id}"')
    return replace(new, extensions=extensions, updated_at=time.time_ns())
