"""The metastore: the model's rules, ids, label updates, persistence."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from snapshotter.protocol import Kind, Usage
from snapshotter.storage import MetaStore, Record, updated_labels
from supervisor.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound


@pytest.fixture
def store(scratch: Path):
    opened = MetaStore(scratch / "metadata.db")
    yield opened
    opened.close()


def chain(store: MetaStore, depth: int) -> None:
    """c0 ← c1 ← … committed, each made by prepare and commit as the snapshotters do."""
    parent = ""
    with store.write() as tx:
        for i in range(depth):
            active = tx.create(f"a{i}", Kind.ACTIVE, parent, {}, i)
            tx.commit(tx.check_commit(f"c{i}", active.key), f"c{i}", {}, Usage(10, 1), i)
            parent = f"c{i}"


def test_ids_come_from_a_sequence_and_a_commit_keeps_the_id(store: MetaStore):
    chain(store, 3)
    with store.read() as tx:
        assert [(r.key, r.id, r.kind) for r in tx.list()] == [
            ("c0", 1, Kind.COMMITTED), ("c1", 2, Kind.COMMITTED), ("c2", 3, Kind.COMMITTED),
        ]  # fmt: skip
        assert tx.get("c2").usage == Usage(10, 1)


def test_parent_ids_are_nearest_first(store: MetaStore):
    chain(store, 4)
    with store.write() as tx:
        view = tx.create("v", Kind.VIEW, "c3", {}, 0)
        assert tx.parent_ids(view) == [4, 3, 2, 1]
        assert tx.parent_ids(tx.get("c0")) == []


def test_an_id_handed_out_in_a_rolled_back_transaction_comes_round_again(store: MetaStore):
    def crash() -> None:
        with store.write() as tx:
            assert tx.create("lost", Kind.ACTIVE, "", {}, 0).id == 1
            raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        crash()
    with store.write() as tx:
        assert tx.find("lost") is None
        assert tx.create("kept", Kind.ACTIVE, "", {}, 0).id == 1
        assert tx.create("next", Kind.ACTIVE, "", {}, 0).id == 2
    with store.write() as tx:
        tx.remove("next")
        assert tx.create("after-remove", Kind.ACTIVE, "", {}, 0).id == 3  # committed ids stay used


def test_creation_refusals(store: MetaStore):
    chain(store, 1)
    with store.write() as tx:
        tx.create("active", Kind.ACTIVE, "c0", {}, 0)
        tx.create("view", Kind.VIEW, "c0", {}, 0)
        for key, kind, parent, error in [
            ("c0", Kind.ACTIVE, "", AlreadyExists),
            ("x", Kind.ACTIVE, "missing", NotFound),
            ("x", Kind.VIEW, "active", InvalidArgument),
            ("x", Kind.ACTIVE, "view", InvalidArgument),
            ("x", Kind.COMMITTED, "", InvalidArgument),
            ("", Kind.ACTIVE, "", InvalidArgument),
        ]:
            with pytest.raises(error):
                tx.create(key, kind, parent, {}, 0)


def test_commit_refusals_in_containerds_order(store: MetaStore):
    chain(store, 1)
    with store.write() as tx:
        tx.create("active", Kind.ACTIVE, "", {}, 0)
        tx.create("view", Kind.VIEW, "", {}, 0)
        with pytest.raises(NotFound):
            tx.check_commit("c0", "missing")  # the key first
        with pytest.raises(AlreadyExists):
            tx.check_commit("c0", "view")  # then the name
        with pytest.raises(FailedPrecondition):
            tx.check_commit("new", "view")  # then the kind
        with pytest.raises(InvalidArgument):
            tx.check_commit("", "active")


def test_a_parent_is_removable_once_its_children_are_gone(store: MetaStore):
    chain(store, 2)
    with store.write() as tx:
        with pytest.raises(FailedPrecondition, match="cannot remove snapshot with child"):
            tx.remove("c0")
        tx.remove("c1")
        assert tx.remove("c0").id == 1
        with pytest.raises(NotFound):
            tx.remove("c0")


RECORD = Record("k", 1, Kind.ACTIVE, labels={"a": "1", "b": "2"})


@pytest.mark.parametrize(
    ("given", "paths", "expected"),
    [
        ({"x": "9"}, [], {"x": "9"}),
        ({"x": "9"}, ["labels"], {"x": "9"}),
        ({"a": "new", "x": "9"}, ["labels.a"], {"a": "new", "b": "2"}),
        ({}, ["labels.a"], {"b": "2"}),  # absent from the given labels: removed
        ({"a": ""}, ["labels.a"], {"b": "2"}),  # empty: removed too
        ({"c": "3"}, ["labels", "labels.a"], {"c": "3"}),  # in order: replace, then a absent
        ({"a": "", "z": "1"}, [], {"z": "1"}),
    ],
)
def test_label_updates_follow_the_paths(given, paths, expected):
    assert updated_labels(RECORD, given, paths) == expected


@pytest.mark.parametrize("path", ["parent", "name", "kind", "labels_", "created_at"])
def test_paths_other_than_labels_are_invalid(path):
    with pytest.raises(InvalidArgument, match=path):
        updated_labels(RECORD, {}, ["labels", path])


def test_records_survive_a_reopen_and_a_newer_schema_is_refused(scratch: Path):
    path = scratch / "metadata.db"
    store = MetaStore(path)
    chain(store, 2)
    with store.write() as tx:
        tx.update("c1", {"l": "v"}, [], 99)
    store.close()
    store.close()
    with pytest.raises(FailedPrecondition):
        store.write().__enter__()

    store = MetaStore(path)
    with store.read() as tx:
        c1 = tx.get("c1")
    store.close()
    assert (c1.parent, dict(c1.labels), c1.updated_at, c1.created_at) == ("c0", {"l": "v"}, 99, 1)

    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version=2")
    conn.close()
    with pytest.raises(FailedPrecondition, match="newer"):
        MetaStore(path)
