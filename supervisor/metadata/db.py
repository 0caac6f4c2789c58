"""The SQLite database and the one thread that touches it.

All access goes through `Database.read` and `Database.write`, which run a function with the
connection on a single dedicated thread: the event loop never blocks on SQLite, and writes are
serialized without locks of our own. `write` wraps the function in `BEGIN IMMEDIATE … COMMIT`
and rolls back when it raises, so a function either changes everything it meant to or nothing.
The database runs in WAL mode with `synchronous=FULL`: a committed write survives a crash,
of the daemon or of the machine. A write of records that only mirror kernel state (a network
address lease, a published port: `write(fn, volatile=True)`) is committed without the fsync:
in WAL mode it still survives the daemon's crash, and what a crash of the machine could lose
is a record of something that crash removed too (a veth, a namespace); the next commit that
syncs takes it to disk with its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from supervisor.errors import FailedPrecondition
from supervisor.keyedlocks import KeyedLocks
from supervisor.metadata.schema import MIGRATIONS

T = TypeVar("T")


class _SharedExclusiveLock:
    """Many holders of `shared`, or one of `exclusive`: mutations vs. the garbage collector."""

    def __init__(self) -> None:
        self._cond = asyncio.Condition()
        self._shared = 0
        self._exclusive = False

    @contextlib.asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._exclusive)
            self._shared += 1
        try:
            yield
        finally:
            async with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._exclusive and self._shared == 0)
            self._exclusive = True
        try:
            yield
        finally:
            async with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class Database:
    def __init__(self, conn: sqlite3.Connection, executor: ThreadPoolExecutor) -> None:
        self._conn = conn
        self._executor = executor
        self._gc_lock = _SharedExclusiveLock()
        self._closed = False
        self._names = KeyedLocks()  # `one_at_a_time`'s

    def mutation(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Held across a change that spans the disk and the database (publishing a blob)."""
        return self._gc_lock.shared()

    def exclusive(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Held by the garbage collector: no such change is half done meanwhile."""
        return self._gc_lock.exclusive()

    def one_at_a_time(self, *name: str) -> contextlib.AbstractAsyncContextManager[None]:
        """Held across a change to one named object that spans the disk and the database
        (committing a snapshot), so that two changes of that name do not interleave: the
        second then sees what the first did, as containerd's single bbolt write transaction
        makes it see."""
        return self._names.hold(name)

    @classmethod
    async def open(cls, path: Path) -> Database:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metadata")
        loop = asyncio.get_running_loop()
        try:
            conn = await loop.run_in_executor(executor, _connect, path)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(conn, executor)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, self._conn)

    async def write(self, fn: Callable[[sqlite3.Connection], T], volatile: bool = False) -> T:
        """`fn` in one transaction; `volatile`: committed without waiting for the disk (see
        the module's doc: only for records of what does not outlive the machine's crash)."""
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, _in_volatile_transaction if volatile else _in_transaction,
            self._conn, fn,
        )  # fmt: skip

    async def close(self) -> None:
        """Close the connection and its thread; closing again does nothing."""
        if self._closed:
            return
        self._closed = True
        await asyncio.get_running_loop().run_in_executor(self._executor, self._conn.close)
        self._executor.shutdown(wait=True)


def _in_transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


def _in_volatile_transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    conn.execute("PRAGMA synchronous=NORMAL")  # WAL: no fsync at this commit
    try:
        return _in_transaction(conn, fn)
    finally:
        conn.execute("PRAGMA synchronous=FULL")


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: we issue BEGIN/COMMIT ourselves; check_same_thread is moot because
    # only the executor's one thread ever uses the connection.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=5000")
    migrate(conn)
    return conn


def migrate(conn: sqlite3.Connection) -> None:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > len(MIGRATIONS):
        raise FailedPrecondition(
            f"metadata schema version {version} is newer than this ctrd knows "
            f"({len(MIGRATIONS)}): upgrade ctrd"
        )
    for number in range(version, len(MIGRATIONS)):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(MIGRATIONS[number]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={number + 1}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


def _statements(script: str) -> list[str]:
    """Split a migration into statements (executescript would commit our transaction)."""
    out: list[str] = []
    current = ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            out.append(current.strip())
            current = ""
    if current.strip():
        out.append(current.strip())
    return out
