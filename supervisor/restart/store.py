"""The `restarts` table: what the daemon keeps of each container's restarts (see the
package's doc). Times are nanoseconds since the epoch, 0 for none. The monitor deletes a
container's row with it (`delete`), and at its start those of containers that are gone
(`keep_only`); a row is written only for a container that exists (in the same transaction)."""

from __future__ import annotations

import builtins
import sqlite3
from dataclasses import astuple, dataclass

from supervisor.metadata.db import Database

_COLUMNS = "count, started_at, exit_status, exited_at, restart_at, log, terminal"


@dataclass(frozen=True)
class Record:
    count: int = 0  # restarts since the user last started the container
    started_at: int = 0  # its task's last start (0: never started)
    exit_status: int = 0
    exited_at: int = 0  # its task's last exit (0: none known)
    restart_at: int = 0  # when the pending restart starts it (0: none pending)
    log: bool = True  # whether its task had stdio (a restart logs it, as ctrctl's)
    terminal: bool = False


def _record(row: tuple[int, ...]) -> Record:
    count, started, status, exited, restart_at, log, terminal = row
    return Record(count, started, status, exited, restart_at, bool(log), bool(terminal))


class RestartStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, ns: str, cid: str) -> Record | None:
        def get(conn: sqlite3.Connection) -> Record | None:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM restarts WHERE namespace = ? AND container = ?",
                (ns, cid),
            ).fetchone()
            return None if row is None else _record(row)

        return await self._db.read(get)

    async def list(self, ns: str) -> dict[str, Record]:
        def list_(conn: sqlite3.Connection) -> dict[str, Record]:
            rows = conn.execute(
                f"SELECT container, {_COLUMNS} FROM restarts WHERE namespace = ?", (ns,)
            ).fetchall()
            return {row[0]: _record(row[1:]) for row in rows}

        return await self._db.read(list_)

    async def put(self, ns: str, cid: str, record: Record) -> None:
        values = (ns, cid, *(int(v) for v in astuple(record)))

        def put(conn: sqlite3.Connection) -> None:
            exists = conn.execute(
                "SELECT 1 FROM containers WHERE namespace = ? AND id = ?", (ns, cid)
            ).fetchone()
            if exists:  # else the container was deleted meanwhile
                conn.execute(
                    f"INSERT OR REPLACE INTO restarts (namespace, container, {_COLUMNS})"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    values,
                )

        await self._db.write(put)

    async def delete(self, ns: str, cid: str) -> None:
        def delete(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM restarts WHERE namespace = ? AND container = ?", (ns, cid))

        await self._db.write(delete)

    async def keep_only(self) -> None:
        """Forget the rows of containers that are gone."""

        def prune(conn: sqlite3.Connection) -> None:
            conn.execute(
                "DELETE FROM restarts WHERE NOT EXISTS (SELECT 1 FROM containers c"
                " WHERE c.namespace = restarts.namespace AND c.id = restarts.container)"
            )

        await self._db.write(prune)

    async def namespaces(self) -> builtins.list[str]:
        def names(conn: sqlite3.Connection) -> builtins.list[str]:
            rows = conn.execute("SELECT DISTINCT namespace FROM restarts").fetchall()
            return sorted(str(row[0]) for row in rows)

        return await self._db.read(names)
