"""Volumes' records, kept in the metadata database, one namespace at a time.

A record is what `volume create` asked for (name, driver, labels, options) and when; the data
is the driver's (`supervisor.volumes.local`). Whether a volume is in use is never stored: it is
read, in the same transaction as the change it guards, from the containers of the namespace
whose `ctrd.io/volumes` label names it (running or not, as docker counts its references). So a
removal and the check that the volume is unused cannot disagree, and nothing is left to repair
after a crash. A namespace that holds volumes is not deleted (`NAMESPACE_CONTENTS`); the
garbage collector never reads this table.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

from supervisor.errors import FailedPrecondition, NotFound
from supervisor.metadata.db import Database
from supervisor.metadata.namespaces import ensure
from supervisor.volumes import labels as volume_labels


@dataclass(frozen=True)
class Volume:
    name: str
    driver: str = "local"
    labels: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, str] = field(default_factory=dict)
    created_at: int = 0  # ns since the epoch


def no_such_volume(name: str, op: str = "get") -> NotFound:
    """docker's words for a missing volume (its store's OpErr around errNoSuchVolume)."""
    return NotFound(f"{op} {name}: no such volume", plain=True)


def in_use(name: str, containers: builtins.list[str]) -> FailedPrecondition:
    """docker's words for a volume that containers still name (`volume is in use`)."""
    return FailedPrecondition(
        f"remove {name}: volume is in use - [{', '.join(containers)}]", plain=True
    )


def _row(row: tuple[str, str, str, str, int]) -> Volume:
    name, driver, labels, options, created_at = row
    return Volume(name, driver, json.loads(labels), json.loads(options), created_at)


def _find(conn: sqlite3.Connection, ns: str, name: str) -> Volume:
    """The volume `name` of `ns`; NotFound in docker's words when there is none."""
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM volumes WHERE namespace = ? AND name = ?", (ns, name)
    ).fetchone()
    if row is None:
        raise no_such_volume(name)
    return _row(row)


def users_in(conn: sqlite3.Connection, ns: str) -> dict[str, builtins.list[str]]:
    """Volume name -> the ids of the namespace's containers that name it, sorted."""
    found: defaultdict[str, builtins.list[str]] = defaultdict(list)
    rows = conn.execute(
        "SELECT id, labels FROM containers WHERE namespace = ? AND labels LIKE ? ORDER BY id",
        (ns, f'%"{volume_labels.VOLUMES_LABEL}"%'),
    )
    for cid, labels in rows:
        for name in volume_labels.named(json.loads(labels)):
            found[name].append(cid)
    return dict(found)


_COLUMNS = "name, driver, labels, options, created_at"


class VolumeStore:
    """The volumes of one namespace."""

    def __init__(self, db: Database, ns: str) -> None:
        self._db = db
        self.namespace = ns

    async def create(self, volume: Volume) -> tuple[Volume, bool]:
        """Record `volume`; a name taken already answers the volume recorded, unchanged (as
        docker's create does), with False."""
        ns = self.namespace

        def create(conn: sqlite3.Connection) -> tuple[Volume, bool]:
            ensure(conn, ns)
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM volumes WHERE namespace = ? AND name = ?",
                (ns, volume.name),
            ).fetchone()
            if row is not None:
                return _row(row), False
            made = Volume(
                volume.name, volume.driver, dict(volume.labels), dict(volume.options),
                volume.created_at or time.time_ns(),
            )  # fmt: skip
            conn.execute(
                "INSERT INTO volumes (namespace, name, driver, labels, options, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    ns, made.name, made.driver, json.dumps(made.labels, sort_keys=True),
                    json.dumps(made.options, sort_keys=True), made.created_at,
                ),
            )  # fmt: skip
            return made, True

        return await self._db.write(create)

    async def get(self, name: str) -> Volume:
        ns = self.namespace

        return await self._db.read(lambda conn: _find(conn, ns, name))

    async def list(self) -> builtins.list[Volume]:
        ns = self.namespace

        def list_(conn: sqlite3.Connection) -> builtins.list[Volume]:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM volumes WHERE namespace = ? ORDER BY name", (ns,)
            )
            return [_row(row) for row in rows]

        return await self._db.read(list_)

    async def users(self) -> dict[str, builtins.list[str]]:
        """Volume name -> the containers naming it (whether or not the volume exists)."""
        ns = self.namespace
        return await self._db.read(lambda conn: users_in(conn, ns))

    async def delete(self, name: str) -> Volume:
        """Delete the record of an unused volume; in use: FailedPrecondition, docker's words."""
        ns = self.namespace

        def delete(conn: sqlite3.Connection) -> Volume:
            volume = _find(conn, ns, name)
            users = users_in(conn, ns).get(name)
            if users:
                raise in_use(name, users)
            conn.execute("DELETE FROM volumes WHERE namespace = ? AND name = ?", (ns, name))
            return volume

        return await self._db.write(delete)


async def all_volumes(db: Database) -> builtins.list[tuple[str, Volume]]:
    """Every namespace's volumes, as (namespace, volume): what the start's reconcile walks."""

    def read(conn: sqlite3.Connection) -> builtins.list[tuple[str, Volume]]:
        rows = conn.execute(f"SELECT namespace, {_COLUMNS} FROM volumes ORDER BY namespace, name")
        return [(row[0], _row(row[1:])) for row in rows]

    return await db.read(read)
