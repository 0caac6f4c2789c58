"""The durable journal of every event ctrd published: replay after a disconnect or a restart.

`events.db` (SQLite, WAL, `synchronous=NORMAL`: a committed event survives the daemon's crash;
only a power loss, which takes the containers with it, may lose the last ones) holds one row
per published event with its own sequence number, growing by one, plus where it came from:
an event a shim journaled carries the shim's identity (`source`) and its sequence number
there (`source_seq`). `event_sources` keeps, per source, the last sequence number published,
in the same transaction as the event: that is what makes a shim's events exactly-once across
daemon restarts (a replay from the shim skips what was already published), and it survives
the pruning of old events.

Retention: events older than `retention` seconds, and beyond the newest `max_events`, are
pruned every so often.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple, TypeVar

from google.protobuf import any_pb2, timestamp_pb2

from supervisor.api.containerd.services.events.v1 import events_pb2

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time_ns INTEGER NOT NULL,
    namespace TEXT NOT NULL,
    topic TEXT NOT NULL,
    type_url TEXT NOT NULL,
    value BLOB NOT NULL,
    source TEXT NOT NULL DEFAULT '',
    source_seq INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS events_by_time ON events (time_ns);
CREATE TABLE IF NOT EXISTS event_sources (
    source TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL
) WITHOUT ROWID;
"""

PRUNE_EVERY = 1000  # appends between two prunings


class Logged(NamedTuple):
    seq: int
    envelope: events_pb2.Envelope


def _envelope(row: tuple[int, int, str, str, str, bytes]) -> Logged:
    seq, time_ns, namespace, topic, type_url, value = row
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(time_ns)
    return Logged(
        seq,
        events_pb2.Envelope(
            timestamp=ts,
            namespace=namespace,
            topic=topic,
            event=any_pb2.Any(type_url=type_url, value=value),
        ),
    )


class EventLog:
    def __init__(
        self, conn: sqlite3.Connection, executor: ThreadPoolExecutor, retention: float, limit: int
    ) -> None:
        self._conn = conn
        self._executor = executor
        self._retention = retention
        self._limit = limit
        self._appends = 0

    @classmethod
    async def open(cls, path: Path, retention: float, limit: int) -> EventLog:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eventlog")

        def connect() -> sqlite3.Connection:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(SCHEMA)
            return conn

        try:
            conn = await asyncio.get_running_loop().run_in_executor(executor, connect)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(conn, executor, retention, limit)

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, self._conn)

    async def append(
        self, envelope: events_pb2.Envelope, source: str = "", source_seq: int = 0
    ) -> int | None:
        """Record a published event; its sequence number, or None if `source` sent it before."""
        time_ns = envelope.timestamp.ToNanoseconds()
        self._appends += 1
        prune = self._appends % PRUNE_EVERY == 0

        def write(conn: sqlite3.Connection) -> int | None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if source:
                    row = conn.execute(
                        "SELECT last_seq FROM event_sources WHERE source = ?", (source,)
                    ).fetchone()
                    if row is not None and source_seq <= row[0]:
                        conn.execute("ROLLBACK")
                        return None
                    conn.execute(
                        "INSERT OR REPLACE INTO event_sources (source, last_seq) VALUES (?, ?)",
                        (source, source_seq),
                    )
                cursor = conn.execute(
                    "INSERT INTO events (time_ns, namespace, topic, type_url, value, source,"
                    " source_seq) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        time_ns, envelope.namespace, envelope.topic, envelope.event.type_url,
                        envelope.event.value, source, source_seq,
                    ),
                )  # fmt: skip
                if prune:
                    self._prune(conn)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return cursor.lastrowid

        return await self._run(write)

    def _prune(self, conn: sqlite3.Connection) -> None:
        cutoff = time.time_ns() - int(self._retention * 1e9)
        conn.execute("DELETE FROM events WHERE time_ns < ?", (cutoff,))
        conn.execute(
            "DELETE FROM events WHERE seq <= (SELECT MAX(seq) FROM events) - ?", (self._limit,)
        )

    async def prune(self) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            self._prune(conn)
            conn.execute("COMMIT")

        await self._run(run)

    async def last_seq(self, source: str = "") -> int:
        """The last sequence number published from `source`, or of the whole log."""

        def read(conn: sqlite3.Connection) -> int:
            if source:
                row = conn.execute(
                    "SELECT last_seq FROM event_sources WHERE source = ?", (source,)
                ).fetchone()
            else:
                row = conn.execute("SELECT MAX(seq) FROM events").fetchone()
            return int(row[0] or 0) if row else 0

        return await self._run(read)

    async def sources(self) -> dict[str, int]:
        """Every source's last published sequence number."""

        def read(conn: sqlite3.Connection) -> dict[str, int]:
            return dict(conn.execute("SELECT source, last_seq FROM event_sources").fetchall())

        return await self._run(read)

    async def forget(self, source: str) -> None:
        """A source is gone for good (its task was deleted)."""

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM event_sources WHERE source = ?", (source,))

        await self._run(write)

    async def read(
        self, after: int = 0, since_ns: int = 0, until_ns: int = 0, limit: int = 1000
    ) -> list[Logged]:
        """Events with seq > after and since_ns <= time (< until_ns when given), in order."""

        def read(conn: sqlite3.Connection) -> list[Logged]:
            query = (
                "SELECT seq, time_ns, namespace, topic, type_url, value FROM events"
                " WHERE seq > ? AND time_ns >= ?"
            )
            args: list[int] = [after, since_ns]
            if until_ns:
                query += " AND time_ns < ?"
                args.append(until_ns)
            query += " ORDER BY seq LIMIT ?"
            args.append(limit)
            return [_envelope(row) for row in conn.execute(query, args)]

        return await self._run(read)

    async def close(self) -> None:
        await self._run(lambda conn: conn.close())
        self._executor.shutdown(wait=True)
