"""The volume manager on a real database and directories: create, remove and prune by docker's
rules, in use counted from the containers' labels."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from supervisor.errors import FailedPrecondition, InvalidArgument, NotFound
from supervisor.metadata.containers import Container, ContainerStore
from supervisor.metadata.db import Database
from supervisor.metadata.namespaces import NamespaceStore
from supervisor.volumes import labels
from supervisor.volumes.manager import VolumeManager


def run(coro):
    return asyncio.run(coro)


async def opened(tmp_path: Path) -> tuple[Database, VolumeManager]:
    db = await Database.open(tmp_path / "meta.db")
    return db, VolumeManager(db, tmp_path / "volumes", tmp_path / "volumes" / ".mounts")


async def container(db: Database, cid: str, *names: str, ns: str = "default") -> None:
    wanted = json.dumps([{"name": n, "target": f"/{n}"} for n in names])
    await ContainerStore(db, ns).create(
        Container(cid, "io.containerd.runc.v2", ("t", b"{}"), labels={labels.VOLUMES_LABEL: wanted})
    )


def test_create_is_idempotent_by_name_and_makes_a_random_name_when_none(tmp_path):
    async def scenario():
        db, manager = await opened(tmp_path)
        try:
            first = await manager.create("default", "data", labels={"a": "1"})
            again = await manager.create("default", "data", labels={"b": "2"})
            assert again == first  # docker answers the existing volume unchanged
            assert (tmp_path / "volumes" / "default" / "data" / "_data").is_dir()
            anonymous = await manager.create("default", "")
            assert len(anonymous.name) == 64
            int(anonymous.name, 16)
            other = await manager.create("other", "data")  # namespaced
            assert other.created_at != first.created_at
        finally:
            await db.close()

    run(scenario())


@pytest.mark.parametrize(
    ("name", "driver", "options", "error", "words"),
    [
        ("x", "", {}, InvalidArgument, "create x: volume name is too short"),
        ("a/b", "", {}, InvalidArgument, 'create a/b: "a/b" includes invalid characters'),
        ("v1", "nfsplugin", {}, NotFound,
         'create v1: error looking up volume plugin nfsplugin: plugin "nfsplugin" not found'),
        ("v1", "", {"foo": "1"}, InvalidArgument, 'create v1: invalid option: "foo"'),
    ],
)  # fmt: skip
def test_bad_creates_make_nothing(tmp_path, name, driver, options, error, words):
    async def scenario():
        db, manager = await opened(tmp_path)
        try:
            with pytest.raises(error) as e:
                await manager.create("default", name, driver, options)
            assert str(e.value).startswith(words)
            assert await manager.list("default") == []
            assert not (tmp_path / "volumes" / "default" / "v1").exists()
        finally:
            await db.close()

    run(scenario())


def test_remove_is_refused_while_a_container_names_the_volume_force_or_not(tmp_path):
    async def scenario():
        db, manager = await opened(tmp_path)
        try:
            await manager.create("default", "data")
            await container(db, "c2", "data")
            await container(db, "c1", "data", "other")
            for force in (False, True):
                with pytest.raises(FailedPrecondition) as e:
                    await manager.remove("default", "data", force=force)
                assert str(e.value) == "remove data: volume is in use - [c1, c2]"
            await ContainerStore(db, "default").delete("c1")
            await ContainerStore(db, "default").delete("c2")
            (tmp_path / "volumes" / "default" / "data" / "_data" / "f").write_bytes(b"12345")
            assert await manager.remove("default", "data") == 5
            assert not (tmp_path / "volumes" / "default" / "data").exists()
            with pytest.raises(NotFound) as e:
                await manager.remove("default", "data")
            assert str(e.value) == "get data: no such volume"
            assert await manager.remove("default", "data", force=True) == 0
        finally:
            await db.close()

    run(scenario())


def test_prune_removes_unused_anonymous_volumes_and_with_all_every_unused_plain_one(tmp_path):
    async def scenario():
        db, manager = await opened(tmp_path)
        anonymous = {labels.ANONYMOUS_LABEL: "true"}
        try:
            for name in ("anon-free", "anon-used"):
                await manager.create("default", name, labels=anonymous)
            await manager.create("default", "named")
            tmpfs = {"type": "tmpfs", "device": "tmpfs", "o": "size=1m"}
            await manager.create("default", "with-options", options=tmpfs, labels=anonymous)
            await container(db, "c1", "anon-used")
            data = tmp_path / "volumes" / "default" / "anon-free" / "_data"
            (data / "f").write_bytes(b"x" * 100)
            assert await manager.prune("default", []) == (["anon-free"], 100)
            assert await manager.prune("default", ["all=true"]) == (["named"], 0)
            left = [v.name for v in await manager.list("default")]
            assert left == ["anon-used", "with-options"]  # used; with options (docker's rule)
        finally:
            await db.close()

    run(scenario())


def test_a_namespace_with_volumes_is_not_deleted(tmp_path):
    async def scenario():
        db, manager = await opened(tmp_path)
        try:
            await manager.create("busy", "data")
            with pytest.raises(FailedPrecondition) as e:
                await NamespaceStore(db).delete("busy")
            assert str(e.value) == (
                'namespace "busy" must be empty, but it still has volumes: failed precondition'
            )
            await manager.remove("busy", "data")
            await NamespaceStore(db).delete("busy")
        finally:
            await db.close()

    run(scenario())


def test_the_garbage_collector_leaves_volumes_and_their_data(tmp_path):
    from supervisor.content.local import LocalStore
    from supervisor.metadata.gc import Collector

    async def scenario():
        db, manager = await opened(tmp_path)
        try:
            made = await manager.create("default", "kept", labels={labels.ANONYMOUS_LABEL: "1"})
            data = tmp_path / "volumes" / "default" / "kept" / "_data"
            (data / "f").write_text("mine")
            result = await Collector(db, LocalStore(tmp_path / "content")).collect()
            assert result.blobs == result.snapshots == 0
            assert await manager.get("default", "kept") == made
            assert (data / "f").read_text() == "mine"
        finally:
            await db.close()

    run(scenario())


def test_reconcile_finishes_a_cut_off_removal_and_keeps_recorded_volumes(tmp_path):
    from supervisor.volumes import copyup

    async def scenario():
        db, manager = await opened(tmp_path)
        try:
            await manager.create("default", "kept")
            kept = tmp_path / "volumes" / "default" / "kept"
            (kept / "_data" / "f").write_text("mine")
            orphan = tmp_path / "volumes" / "default" / "gone"  # its record was deleted
            (orphan / "_data").mkdir(parents=True)
            (orphan / "_data" / "f").write_text("old")
            trash = tmp_path / "volumes" / ".trash" / "default-x-1234"
            (trash / "_data").mkdir(parents=True)
            await manager.create("default", "cut")
            cut = tmp_path / "volumes" / "default" / "cut"
            (cut / "_data" / "half").write_text("h")
            (cut / copyup.PENDING).touch()
            await manager.reconcile([])
            assert (kept / "_data" / "f").read_text() == "mine"
            assert not orphan.exists()
            assert not trash.exists()
            assert list((cut / "_data").iterdir()) == []
            assert not (cut / copyup.PENDING).exists()
        finally:
            await db.close()

    run(scenario())


def test_prepare_task_binds_the_volumes_and_fills_a_new_one_from_the_root(tmp_path):
    root = tmp_path / "rootfs"
    (root / "srv" / "app").mkdir(parents=True)
    (root / "srv" / "app" / "conf").write_text("config\n")
    spec = json.dumps({"root": {"path": str(root)}, "mounts": [{"destination": "/srv/app"}]})
    entries = [
        {"name": "bb", "target": "/srv/app"},
        {"name": "aa", "target": "/ro", "readonly": True, "nocopy": True},
        {"name": "bb", "target": "/srv/again"},  # the same volume twice: filled once
    ]
    wanted = json.dumps(entries)

    async def scenario():
        db, manager = await opened(tmp_path)
        try:
            await manager.create("default", "aa")
            await manager.create("default", "bb")
            async with asyncio.timeout(10):
                out = await manager.prepare_task(
                    "default", "c1", {labels.VOLUMES_LABEL: wanted}, spec.encode(), []
                )
                reversed_ = {labels.VOLUMES_LABEL: json.dumps(entries[::-1])}
                other = await manager.prepare_task("default", "c2", reversed_, spec.encode(), [])
            data = tmp_path / "volumes" / "default"
            mounts = json.loads(out)["mounts"]
            assert mounts == [
                {"destination": "/ro", "type": "bind", "source": str(data / "aa" / "_data"),
                 "options": ["rbind", "ro"]},
                {"destination": "/srv/app", "type": "bind", "source": str(data / "bb" / "_data"),
                 "options": ["rbind", "rw"]},
                {"destination": "/srv/again", "type": "bind",
                 "source": str(data / "bb" / "_data"), "options": ["rbind", "rw"]},
            ]  # fmt: skip
            assert sorted(json.loads(other)["mounts"], key=str) == sorted(mounts, key=str)
            assert (data / "bb" / "_data" / "conf").read_text() == "config\n"
            assert list((data / "aa" / "_data").iterdir()) == []
            await manager.release("default", "c1")
            await manager.release("default", "c2")
            missing = {labels.VOLUMES_LABEL: json.dumps([{"name": "nope", "target": "/x"}])}
            with pytest.raises(NotFound) as e:
                await manager.prepare_task("default", "c3", missing, spec.encode(), [])
            assert str(e.value) == (
                'volume "nope" (label ctrd.io/volumes of container "c3"): not found'
            )
        finally:
            await db.close()

    run(scenario())
