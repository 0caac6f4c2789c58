"""The backend snapshotters' metastore: one SQLite file, `<root>/metadata.db`.

It owns the snapshot records and the rules of the model (protocol.py): which kind may become
which, who may be a parent, what may be removed, which error each refusal is. Directories are
the snapshotters' business; this module never touches them.

One table, `snapshots`: the key (a name, for a Committed snapshot), a small integer `id` that
names the snapshot's directory (`snapshots/<id>`), the kind, the parent's key, labels (JSON),
times (ns), and the usage stored at commit. Ids come from a sequence that only moves forward
in committed transactions: an id in a committed record is never given to another snapshot,
although one handed out in a rolled-back transaction is handed out again. A parent is a
Committed snapshot, which is never renamed and cannot be removed while it has children, so a
parent key always resolves.

Transactions (`write`, `read`) are synchronous and meant for worker threads. A write
transaction is `BEGIN IMMEDIATE … COMMIT` on one connection behind a lock: writers are
serialized, and a snapshotter does its directory work inside the transaction, so that
directories appear (by rename) just before the record commits. Reads use their own connection
and, in WAL mode, never wait for a writer. `synchronous=FULL`: a committed record survives a
crash.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from snapshotter.protocol import Info, Kind, Usage
from supervisor.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)

SCHEMA_VERSION = 1
_SCHEMA = (
    """CREATE TABLE snapshots (
        key TEXT PRIMARY KEY,
        id INTEGER NOT NULL UNIQUE,
        kind INTEGER NOT NULL,
        parent TEXT NOT NULL DEFAULT '',
        labels TEXT NOT NULL DEFAULT '{}',
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        size INTEGER NOT NULL DEFAULT 0,
        inodes INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX snapshots_parent ON snapshots (parent)",
    "CREATE TABLE sequence (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "INSERT INTO sequence VALUES ('snapshots', 0)",
)
_COLUMNS = "key, id, kind, parent, labels, created_at, updated_at, size, inodes"


@dataclass(frozen=True)
class Record:
    key: str
    id: int
    kind: Kind
    parent: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    created_at: int = 0
    updated_at: int = 0
    size: int = 0
    inodes: int = 0

    def info(self) -> Info:
        return Info(
            self.key, self.kind, self.parent, dict(self.labels), self.created_at, self.updated_at
        )

    @property
    def usage(self) -> Usage:
        return Usage(self.size, self.inodes)


def _record(row: tuple[str, int, int, str, str, int, int, int, int]) -> Record:
    key, id_, kind, parent, labels, created, updated, size, inodes = row
    return Record(key, id_, Kind(kind), parent, json.loads(labels), created, updated, size, inodes)


class ReadTx:
    """Queries, consistent with each other within one transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def find(self, key: str) -> Record | None:
        row = self._conn.execute(f"SELECT {_COLUMNS} FROM snapshots WHERE key = ?", (key,))
        found = row.fetchone()
        return None if found is None else _record(found)

    def get(self, key: str) -> Record:
        record = self.find(key)
        if record is None:
            raise NotFound(f"snapshot {key}")
        return record

    def list(self) -> builtins.list[Record]:
        rows = self._conn.execute(f"SELECT {_COLUMNS} FROM snapshots ORDER BY id")
        return [_record(row) for row in rows]

    def ids(self) -> set[int]:
        return {row[0] for row in self._conn.execute("SELECT id FROM snapshots")}

    def parent_ids(self, record: Record) -> builtins.list[int]:
        """The ids of `record`'s ancestors, nearest parent first."""
        rows = self._conn.execute(
            """WITH RECURSIVE chain(key, parent, id, depth) AS (
                   SELECT key, parent, id, 0 FROM snapshots WHERE key = ?
                   UNION ALL
                   SELECT s.key, s.parent, s.id, chain.depth + 1
                   FROM snapshots s JOIN chain ON s.key = chain.parent
               )
               SELECT id FROM chain WHERE depth > 0 ORDER BY depth""",
            (record.key,),
        )
        return [row[0] for row in rows]

    def has_children(self, key: str) -> bool:
        row = self._conn.execute("SELECT 1 FROM snapshots WHERE parent = ? LIMIT 1", (key,))
        return row.fetchone() is not None


class WriteTx(ReadTx):
    """The changes the model allows; each checks its preconditions first."""

    def create(
        self, key: str, kind: Kind, parent: str, labels: Mapping[str, str], now: int
    ) -> Record:
        if kind not in (Kind.ACTIVE, Kind.VIEW):
            raise InvalidArgument(f"snapshot kind {kind.name} cannot be created")
        if not key:
            raise InvalidArgument("snapshot key must not be empty")
        if self.find(key) is not None:
            raise AlreadyExists(f"snapshot {key}")
        if parent:
            parent_record = self.find(parent)
            if parent_record is None:
                raise NotFound(f"parent snapshot {parent}")
            if parent_record.kind != Kind.COMMITTED:
                raise InvalidArgument(f'parent "{parent}" is not committed snapshot')
        (id_,) = self._conn.execute(
            "UPDATE sequence SET value = value + 1 WHERE name = 'snapshots' RETURNING value"
        ).fetchone()
        record = Record(key, id_, kind, parent, _clean(labels), now, now)
        self._conn.execute(
            f"INSERT INTO snapshots ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, 0, 0)",
            (key, id_, int(kind), parent, _dump(record.labels), now, now),
        )
        return record

    def check_commit(self, name: str, key: str) -> Record:
        """The Active snapshot `key`, if it may be committed as `name`."""
        record = self.get(key)
        if not name:
            raise InvalidArgument("snapshot name must not be empty")
        if self.find(name) is not None:
            raise AlreadyExists(f"snapshot {name}")
        if record.kind != Kind.ACTIVE:
            raise FailedPrecondition(f'snapshot "{key}" is not active')
        return record

    def commit(
        self, record: Record, name: str, labels: Mapping[str, str], usage: Usage, now: int
    ) -> Record:
        """Turn the Active `record` (checked by `check_commit`) into Committed `name`."""
        self._conn.execute(
            """UPDATE snapshots SET key = ?, kind = ?, labels = ?, created_at = ?,
                   updated_at = ?, size = ?, inodes = ?
               WHERE key = ?""",
            (name, int(Kind.COMMITTED), _dump(_clean(labels)), now, now, usage.size,
             usage.inodes, record.key),
        )  # fmt: skip
        return Record(
            name, record.id, Kind.COMMITTED, record.parent, _clean(labels), now, now,
            usage.size, usage.inodes,
        )  # fmt: skip

    def update(self, key: str, labels: Mapping[str, str], paths: Sequence[str], now: int) -> Record:
        """containerd's UpdateInfo: only labels change (see `updated_labels`)."""
        record = self.get(key)
        kept = updated_labels(record, labels, paths)
        self._conn.execute(
            "UPDATE snapshots SET labels = ?, updated_at = ? WHERE key = ?",
            (_dump(kept), now, key),
        )
        return Record(
            record.key, record.id, record.kind, record.parent, kept, record.created_at, now,
            record.size, record.inodes,
        )  # fmt: skip

    def remove(self, key: str) -> Record:
        record = self.get(key)
        if self.has_children(key):
            raise FailedPrecondition("cannot remove snapshot with child")
        self._conn.execute("DELETE FROM snapshots WHERE key = ?", (key,))
        return record


def updated_labels(
    record: Record, labels: Mapping[str, str], paths: Sequence[str]
) -> dict[str, str]:
    """The labels after an update: no paths replaces them all; `labels` does the same;
    `labels.<k>` sets k to the given value or removes it when the value is absent (or empty,
    as containerd stores no empty label). Any other path is InvalidArgument, the whole update
    is refused."""
    if not paths:
        return _clean(labels)
    out = dict(record.labels)
    for path in paths:
        if path == "labels":
            out = dict(labels)
        elif path.startswith("labels."):
            name = path.removeprefix("labels.")
            out[name] = labels.get(name, "")
        else:
            raise InvalidArgument(f'cannot update "{path}" field on snapshot {record.key}')
    return _clean(out)


def _clean(labels: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in labels.items() if v}


def _dump(labels: Mapping[str, str]) -> str:
    return json.dumps(dict(labels), sort_keys=True, separators=(",", ":"))


class MetaStore:
    def __init__(self, path: Path) -> None:
        self._writer = _connect(path)
        try:
            _migrate(self._writer)
            self._reader = _connect(path)
        except BaseException:
            self._writer.close()
            raise
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._closed = False

    @contextlib.contextmanager
    def write(self) -> Iterator[WriteTx]:
        """A write transaction: committed when the block ends, rolled back if it raises."""
        with self._write_lock:
            self._check_open()
            self._writer.execute("BEGIN IMMEDIATE")
            try:
                yield WriteTx(self._writer)
            except BaseException:
                self._writer.execute("ROLLBACK")
                raise
            self._writer.execute("COMMIT")

    @contextlib.contextmanager
    def read(self) -> Iterator[ReadTx]:
        with self._read_lock:
            self._check_open()
            self._reader.execute("BEGIN")
            try:
                yield ReadTx(self._reader)
            finally:
                self._reader.execute("ROLLBACK")

    def close(self) -> None:
        with self._write_lock, self._read_lock:
            if not self._closed:
                self._closed = True
                self._reader.close()
                self._writer.close()

    def _check_open(self) -> None:
        if self._closed:
            raise FailedPrecondition("snapshotter is closed")


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves. check_same_thread=False: worker
    # threads take turns on a connection, under its lock.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise FailedPrecondition(
                f"snapshot metadata schema version {version} is newer than this ctrd knows "
                f"({SCHEMA_VERSION}): upgrade ctrd"
            )
        if version == 0:
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
