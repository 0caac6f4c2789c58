"""The namespace store and the database under it, without gRPC."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from supervisor.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from supervisor.metadata import db as db_mod
from supervisor.metadata import schema
from supervisor.metadata.db import Database
from supervisor.metadata.namespaces import NamespaceStore, apply_label_mask, ensure


def run(coro):
    return asyncio.run(coro)


def test_store_create_get_list_delete(tmp_path: Path):
    async def scenario():
        db = await Database.open(tmp_path / "meta.db")
        store = NamespaceStore(db)
        await store.create("one", {"a": "b"})
        assert (await store.get("one")).labels == {"a": "b"}
        with pytest.raises(AlreadyExists):
            await store.create("one", {})
        await store.create("two", {})
        assert [ns.name for ns in await store.list()] == ["one", "two"]
        await store.delete("one")
        with pytest.raises(NotFound):
            await store.get("one")
        await db.close()

    run(scenario())


def test_ensure_creates_a_namespace_inside_a_writers_transaction(tmp_path: Path):
    async def scenario():
        db = await Database.open(tmp_path / "meta.db")
        await db.write(lambda conn: ensure(conn, "implicit"))
        await db.write(lambda conn: ensure(conn, "implicit"))  # idempotent
        assert [ns.name for ns in await NamespaceStore(db).list()] == ["implicit"]
        with pytest.raises(InvalidArgument):
            await db.write(lambda conn: ensure(conn, "no way"))
        await db.close()

    run(scenario())


def test_a_failed_write_changes_nothing(tmp_path: Path):
    async def scenario():
        db = await Database.open(tmp_path / "meta.db")

        def half(conn: sqlite3.Connection) -> None:
            ensure(conn, "half")
            raise RuntimeError("crash in the middle")

        with pytest.raises(RuntimeError):
            await db.write(half)
        assert await NamespaceStore(db).list() == []
        await db.close()

    run(scenario())


def test_delete_refuses_a_namespace_that_holds_objects(tmp_path: Path, monkeypatch):
    async def scenario():
        db = await Database.open(tmp_path / "meta.db")
        await db.write(
            lambda conn: conn.execute(
                "CREATE TABLE things (namespace TEXT REFERENCES namespaces(name))"
            )
        )
        monkeypatch.setattr(
            "supervisor.metadata.namespaces.NAMESPACE_CONTENTS", (("things", "things"),)
        )
        store = NamespaceStore(db)
        await store.create("full", {})
        await db.write(lambda conn: conn.execute("INSERT INTO things VALUES ('full')"))
        with pytest.raises(FailedPrecondition, match='namespace "full" must be empty'):
            await store.delete("full")
        await db.write(lambda conn: conn.execute("DELETE FROM things"))
        await store.delete("full")
        await db.close()

    run(scenario())


def test_migrations_run_once_and_set_the_schema_version(tmp_path: Path):
    async def scenario():
        db = await Database.open(tmp_path / "meta.db")
        await NamespaceStore(db).create("kept", {})
        await db.close()
        db = await Database.open(tmp_path / "meta.db")
        version = await db.read(lambda c: c.execute("PRAGMA user_version").fetchone()[0])
        assert version == len(schema.MIGRATIONS)
        assert [ns.name for ns in await NamespaceStore(db).list()] == ["kept"]
        mode = await db.read(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0])
        assert mode == "wal"
        await db.close()

    run(scenario())


def test_a_database_from_a_newer_ctrd_is_refused(tmp_path: Path):
    conn = sqlite3.connect(tmp_path / "meta.db")
    conn.execute(f"PRAGMA user_version={len(schema.MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(FailedPrecondition, match="newer than this ctrd knows"):
        run(Database.open(tmp_path / "meta.db"))


def test_statements_split_keeps_triggers_whole():
    script = "CREATE TABLE a (x);\nCREATE TRIGGER t AFTER INSERT ON a BEGIN SELECT 1; END;\n"
    assert len(db_mod._statements(script)) == 2


@pytest.mark.parametrize(
    ("current", "requested", "paths", "expected"),
    [
        ({"a": "1"}, {"b": "2"}, [], {"b": "2"}),
        ({"a": "1"}, {"b": "2"}, ["labels"], {"b": "2"}),
        ({"a": "1"}, {"b": "2"}, ["labels.b"], {"a": "1", "b": "2"}),
        ({"a": "1"}, {}, ["labels.a"], {}),
        ({"a": "1"}, {"a": ""}, ["labels.a"], {}),
        ({"a": "1"}, {"a": "2", "c": "3"}, ["labels.a"], {"a": "2"}),
        ({"a.b/c": "1"}, {"a.b/c": "2"}, ["labels.a.b/c"], {"a.b/c": "2"}),
    ],
)
def test_label_field_masks(current, requested, paths, expected):
    assert apply_label_mask(current, requested, paths) == expected
