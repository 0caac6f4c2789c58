"""`Database.write(volatile=True)`: the same transaction, committed without the fsync, and
every other write still synced (the connection's `synchronous` is put back, also on error)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from supervisor.metadata.db import Database

FULL = 2  # PRAGMA synchronous values
NORMAL = 1


def synchronous(conn: sqlite3.Connection) -> int:
    (value,) = conn.execute("PRAGMA synchronous").fetchone()
    return int(value)


def test_a_volatile_write_commits_without_sync_and_puts_full_back(tmp_path: Path):
    async def scenario() -> None:
        db = await Database.open(tmp_path / "meta.db")
        try:
            await db.write(lambda c: c.execute("CREATE TABLE t (a TEXT)"))
            assert await db.read(synchronous) == FULL

            def insert(conn: sqlite3.Connection) -> int:
                conn.execute("INSERT INTO t VALUES ('x')")
                return synchronous(conn)

            assert await db.write(insert, volatile=True) == NORMAL  # inside: no fsync
            assert await db.read(synchronous) == FULL  # after: every other write syncs

            def failing(conn: sqlite3.Connection) -> None:
                conn.execute("INSERT INTO t VALUES ('y')")
                raise ValueError("no")

            with pytest.raises(ValueError, match="no"):
                await db.write(failing, volatile=True)
            assert await db.read(synchronous) == FULL
            rows = await db.read(lambda c: c.execute("SELECT a FROM t").fetchall())
            assert rows == [("x",)]  # committed; the failed one rolled back
        finally:
            await db.close()
        reopened = sqlite3.connect(tmp_path / "meta.db")
        try:
            assert reopened.execute("SELECT a FROM t").fetchall() == [("x",)]
        finally:
            reopened.close()

    asyncio.run(scenario())
