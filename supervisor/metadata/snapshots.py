"""Snapshots as one namespace sees them, over the backend snapshotters.

Each namespace has its own snapshots (the same key in two namespaces is two snapshots): a record
maps the client's key to the backend key `<namespace>/<seq>/<key>`. Only labels under
`containerd.io/snapshot/` reach the backend; all labels live here. A snapshot made under a
lease is recorded in it.

Order of changes, for crash safety: a new backend snapshot is made first and recorded second,
under the database's mutation lock, so the collector never sees the gap; a crash in between
leaves a backend snapshot no record names, which the collector removes. Remove deletes the
record only; the backend snapshot and its directories go with the next collection (children
before parents), as in containerd.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence

from snapshotter.protocol import Info, Kind, Mount, Snapshotter, Usage
from supervisor import filters, identifiers
from supervisor.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from supervisor.metadata import leases
from supervisor.metadata.db import Database
from supervisor.metadata.namespaces import apply_label_mask, ensure, kept_labels

BACKEND_LABEL_PREFIX = "containerd.io/snapshot/"
REF_LABEL = "containerd.io/snapshot.ref"
_KIND_NAMES = {Kind.ACTIVE: "active", Kind.VIEW: "view", Kind.COMMITTED: "committed"}


def backend_labels(labels: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in labels.items() if k.startswith(BACKEND_LABEL_PREFIX) or k == REF_LABEL}


def info_adaptor(info: Info) -> filters.Adaptor:
    return filters.label_adaptor(
        {"name": info.name, "parent": info.parent, "kind": _KIND_NAMES.get(info.kind, "")},
        dict(info.labels),
    )


def next_sequence(conn: sqlite3.Connection, name: str, start: str = "") -> int:
    """The next value of the sequence `name`; a new sequence continues sequence `start`'s."""
    conn.execute(
        "INSERT INTO sequences (name, value) "
        "VALUES (?, 1 + coalesce((SELECT value FROM sequences WHERE name = ?), 0)) "
        "ON CONFLICT (name) DO UPDATE SET value = value + 1",
        (name, start),
    )
    (value,) = conn.execute("SELECT value FROM sequences WHERE name = ?", (name,)).fetchone()
    return int(value)


class SnapshotStore:
    """One namespace's view of one snapshotter; implements `snapshotter.protocol.Snapshotter`."""

    def __init__(
        self,
        db: Database,
        backend: Snapshotter,
        snapshotter: str,
        ns: str,
        lease: str | None = None,
        on_remove: Callable[[], None] = lambda: None,
    ) -> None:
        self.db = db
        self.backend = backend
        self.snapshotter = snapshotter
        self.ns = ns
        self.lease = lease
        self._on_remove = on_remove

    @property
    def lease_type(self) -> str:
        return f"snapshots/{self.snapshotter}"

    def _next_backend_key(self, conn: sqlite3.Connection, key: str) -> str:
        """`<namespace>/<seq>/<key>`, seq counting per namespace and snapshotter as containerd's
        does (its words name these keys). Databases from before counted per snapshotter only:
        a namespace's own count starts where that one is, so no key is made twice."""
        seq = next_sequence(
            conn, f"snapshots/{self.snapshotter}/{self.ns}", start=f"snapshots/{self.snapshotter}"
        )
        return f"{self.ns}/{seq}/{key}"

    def _has_bucket(self, conn: sqlite3.Connection) -> bool:
        """Whether containerd would have this namespace's bucket for this snapshotter: made by
        the first prepare or view that got past its checks, kept until the namespace goes."""
        return bool(
            conn.execute(
                "SELECT 1 FROM sequences WHERE name = ?",
                (f"snapshots/{self.snapshotter}/{self.ns}",),
            ).fetchone()
            or conn.execute(
                "SELECT 1 FROM snapshots WHERE namespace = ? AND snapshotter = ? LIMIT 1",
                (self.ns, self.snapshotter),
            ).fetchone()
        )

    def _row(self, conn: sqlite3.Connection, key: str) -> tuple[Info, str]:
        row = conn.execute(
            "SELECT backend_key, parent, kind, labels, created_at, updated_at FROM snapshots "
            "WHERE namespace = ? AND snapshotter = ? AND key = ?",
            (self.ns, self.snapshotter, key),
        ).fetchone()
        if row is None:
            raise NotFound(f"snapshot {key} does not exist")
        backend_key, parent, kind, labels, created, updated = row
        return Info(key, Kind(kind), parent, json.loads(labels), created, updated), backend_key

    async def stat(self, key: str) -> Info:
        return (await self.db.read(lambda conn: self._row(conn, key)))[0]

    async def hold(self, key: str) -> Info:
        """`stat`, and the snapshot added to this store's lease in the same step: a pull that
        finds a layer unpacked already keeps it (and its parents, through it) until its image
        is recorded. Done under the mutation lock, so no collection runs between the check and
        the lease (one did, after another image sharing the layer was removed). Without a lease
        it is `stat`."""
        if not self.lease:
            return await self.stat(key)
        lease = self.lease

        def hold(conn: sqlite3.Connection) -> Info:
            info = self._row(conn, key)[0]
            leases.attach(conn, self.ns, lease, self.lease_type, key)
            return info

        async with self.db.mutation():
            return await self.db.write(hold)

    async def _backend_key(self, key: str) -> str:
        return (await self.db.read(lambda conn: self._row(conn, key)))[1]

    async def update(self, info: Info, paths: Sequence[str] = ()) -> Info:
        for path in paths:
            if path != "labels" and not path.startswith("labels."):
                raise InvalidArgument(f'cannot update "{path}" field on snapshot "{info.name}"')

        def update(conn: sqlite3.Connection) -> tuple[Info, str, dict[str, str]]:
            current, backend_key = self._row(conn, info.name)
            labels = identifiers.validate_labels(
                apply_label_mask(current.labels, info.labels, paths), "info.Labels"
            )
            identifiers.require_label_keys(labels, "failed to read labels")  # (sic)
            now = time.time_ns()
            conn.execute(
                "UPDATE snapshots SET labels = ?, updated_at = ? "
                "WHERE namespace = ? AND snapshotter = ? AND key = ?",
                (json.dumps(labels, sort_keys=True), now, self.ns, self.snapshotter, info.name),
            )
            return (
                Info(info.name, current.kind, current.parent, labels, current.created_at, now),
                backend_key,
                labels,
            )

        updated, backend_key, labels = await self.db.write(update)
        wanted = backend_labels(labels)
        current = await self.backend.stat(backend_key)
        if backend_labels(current.labels) != wanted:
            await self.backend.update(Info(backend_key, current.kind, labels=wanted), ["labels"])
        return updated

    async def usage(self, key: str) -> Usage:
        return await self.backend.usage(await self._backend_key(key))

    async def mounts(self, key: str) -> builtins.list[Mount]:
        info, backend_key = await self.db.read(lambda conn: self._row(conn, key))
        if info.kind == Kind.COMMITTED:
            raise FailedPrecondition(
                f"failed to get active mount: requested snapshot {backend_key} not active or view"
            )
        return await self.backend.mounts(backend_key)

    async def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> builtins.list[Mount]:
        return await self._create(Kind.ACTIVE, key, parent, labels or {})

    async def view(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> builtins.list[Mount]:
        return await self._create(Kind.VIEW, key, parent, labels or {})

    async def _create(
        self, kind: Kind, key: str, parent: str, labels: Mapping[str, str]
    ) -> builtins.list[Mount]:
        if not key:
            raise InvalidArgument("snapshot key must not be empty")
        labels = kept_labels(identifiers.validate_labels(labels, "info.Labels"))

        def reserve(conn: sqlite3.Connection) -> tuple[str, str, Kind]:
            exists = conn.execute(
                "SELECT 1 FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?",
                (self.ns, self.snapshotter, key),
            ).fetchone()
            target = labels.get(REF_LABEL, "")
            if not exists and target:
                exists = conn.execute(
                    "SELECT 1 FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?",
                    (self.ns, self.snapshotter, target),
                ).fetchone()
            if exists:
                leases.attach(conn, self.ns, self.lease, self.lease_type, target or key)
                return "", "", Kind.COMMITTED
            parent_backend, parent_kind = "", Kind.COMMITTED
            if parent:
                try:
                    info, parent_backend = self._row(conn, parent)
                except NotFound:
                    raise NotFound(f"parent snapshot {parent} does not exist") from None
                parent_kind = info.kind
            ensure(conn, self.ns)
            return self._next_backend_key(conn, key), parent_backend, parent_kind

        async with self.db.mutation():
            backend_key, parent_backend, parent_kind = await self.db.write(reserve)
            if not backend_key:
                raise AlreadyExists(f'snapshot "{key}"')
            if parent_kind != Kind.COMMITTED:
                # containerd's backend refuses it, after the key's number is taken.
                raise InvalidArgument(
                    f'failed to create snapshot: parent "{parent_backend}" is not committed '
                    "snapshot"
                )
            make = self.backend.prepare if kind == Kind.ACTIVE else self.backend.view
            mounts = await make(backend_key, parent_backend, backend_labels(labels))
            now = time.time_ns()

            def record(conn: sqlite3.Connection) -> None:
                conn.execute(
                    "INSERT INTO snapshots (namespace, snapshotter, key, backend_key, parent, "
                    "kind, labels, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        self.ns, self.snapshotter, key, backend_key, parent, int(kind),
                        json.dumps(dict(labels), sort_keys=True), now, now,
                    ),
                )  # fmt: skip
                leases.attach(conn, self.ns, self.lease, self.lease_type, key)

            try:
                await self.db.write(record)
            except sqlite3.IntegrityError:
                await self.backend.remove(backend_key)
                raise AlreadyExists(f'snapshot "{key}"') from None
        return mounts

    async def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        if not name:
            raise InvalidArgument("snapshot name must not be empty")
        labels = kept_labels(identifiers.validate_labels(labels or {}, "info.Labels"))

        def reserve(conn: sqlite3.Connection) -> tuple[Info, str, str]:
            # containerd's checks, in its order and words.
            if not self._has_bucket(conn):
                raise NotFound(f'can not find snapshotter "{self.snapshotter}"')
            if conn.execute(
                "SELECT 1 FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?",
                (self.ns, self.snapshotter, name),
            ).fetchone():
                raise AlreadyExists(f'snapshot "{name}"')
            info, backend_key = self._row(conn, key)
            if info.kind != Kind.ACTIVE:
                raise FailedPrecondition(
                    f'failed to commit snapshot: snapshot "{backend_key}" is not active'
                )
            return info, backend_key, self._next_backend_key(conn, name)

        # one commit of a name at a time: a second one (two pulls unpacking one layer) is
        # AlreadyExists at `reserve`, before its backend snapshot is touched
        naming = self.db.one_at_a_time("snapshot", self.ns, self.snapshotter, name)
        async with self.db.mutation(), naming:
            info, backend_key, backend_name = await self.db.write(reserve)
            await self.backend.commit(backend_name, backend_key, backend_labels(labels))
            now = time.time_ns()

            def record(conn: sqlite3.Connection) -> None:
                conn.execute(
                    "DELETE FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?",
                    (self.ns, self.snapshotter, key),
                )
                conn.execute(
                    "INSERT INTO snapshots (namespace, snapshotter, key, backend_key, parent, "
                    "kind, labels, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        self.ns, self.snapshotter, name, backend_name, info.parent,
                        int(Kind.COMMITTED), json.dumps(dict(labels), sort_keys=True), now, now,
                    ),
                )  # fmt: skip
                if self.lease:
                    conn.execute(
                        "DELETE FROM lease_resources WHERE namespace = ? AND lease = ? "
                        "AND type = ? AND id = ?",
                        (self.ns, self.lease, self.lease_type, key),
                    )
                leases.attach(conn, self.ns, self.lease, self.lease_type, name)

            await self.db.write(record)

    async def remove(self, key: str) -> None:
        def remove(conn: sqlite3.Connection) -> None:
            self._row(conn, key)
            if conn.execute(
                "SELECT 1 FROM snapshots WHERE namespace = ? AND snapshotter = ? AND parent = ? "
                "LIMIT 1",
                (self.ns, self.snapshotter, key),
            ).fetchone():
                raise FailedPrecondition("cannot remove snapshot with child")
            conn.execute(
                "DELETE FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?",
                (self.ns, self.snapshotter, key),
            )

        await self.db.write(remove)
        self._on_remove()

    async def list(self, filter_texts: Sequence[str] = ()) -> builtins.list[Info]:
        selected = filters.parse_all(filter_texts)
        rows = await self.db.read(
            lambda conn: conn.execute(
                "SELECT key, parent, kind, labels, created_at, updated_at FROM snapshots "
                "WHERE namespace = ? AND snapshotter = ? ORDER BY key",
                (self.ns, self.snapshotter),
            ).fetchall()
        )
        infos = [
            Info(key, Kind(kind), parent, json.loads(labels), created, updated)
            for key, parent, kind, labels, created, updated in rows
        ]
        return [i for i in infos if selected.matches(info_adaptor(i))]

    async def cleanup(self) -> None:
        await self.backend.cleanup()
