"""Containers' health in the metadata database (table `health`, see `metadata.schema`).

A row per container whose task started with a check: written after every result, so that
what `Get` answers and what a restarted daemon goes on from are the last result's. Rows of
containers that are gone (deleted while no daemon ran) are pruned at start.
"""

from __future__ import annotations

import json
import sqlite3

from supervisor.health.state import Health, Result
from supervisor.metadata.db import Database

Key = tuple[str, str]  # (namespace, container id)


def _health(row: tuple[str, int, int, str]) -> Health:
    status, streak, started_at, log = row
    results = tuple(Result(int(s), int(e), int(c), str(o)) for s, e, c, o in json.loads(log))
    return Health(status, int(streak), results, int(started_at))


class HealthStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def put(self, key: Key, health: Health) -> None:
        log = json.dumps([[r.start, r.end, r.exit_code, r.output] for r in health.log])

        def put(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO health"
                " (namespace, container, status, failing_streak, started_at, log)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (*key, health.status, health.failing_streak, health.started_at, log),
            )

        await self._db.write(put)

    async def get(self, key: Key) -> Health | None:
        def get(conn: sqlite3.Connection) -> Health | None:
            row = conn.execute(
                "SELECT status, failing_streak, started_at, log FROM health"
                " WHERE namespace = ? AND container = ?",
                key,
            ).fetchone()
            return None if row is None else _health(row)

        return await self._db.read(get)

    async def list(self, namespace: str) -> dict[str, Health]:
        def list_(conn: sqlite3.Connection) -> dict[str, Health]:
            rows = conn.execute(
                "SELECT container, status, failing_streak, started_at, log FROM health"
                " WHERE namespace = ? ORDER BY container",
                (namespace,),
            ).fetchall()
            return {row[0]: _health(row[1:]) for row in rows}

        return await self._db.read(list_)

    async def delete(self, key: Key) -> None:
        def delete(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM health WHERE namespace = ? AND container = ?", key)

        await self._db.write(delete)

    async def checked_containers(self) -> dict[Key, dict[str, str]]:
        """Every container whose labels ask for a check, with its labels; rows of containers
        that are gone are pruned on the way."""
        from supervisor.health.config import LABEL

        def scan(conn: sqlite3.Connection) -> dict[Key, dict[str, str]]:
            conn.execute(
                "DELETE FROM health WHERE NOT EXISTS (SELECT 1 FROM containers c"
                " WHERE c.namespace = health.namespace AND c.id = health.container)"
            )
            rows = conn.execute(
                "SELECT namespace, id, labels FROM containers WHERE instr(labels, ?) > 0",
                (json.dumps(LABEL),),
            ).fetchall()
            return {(ns, cid): json.loads(labels) for ns, cid, labels in rows}

        return await self._db.write(scan)
