"""A pull that finds a layer unpacked already holds it (`SnapshotStore.hold`): the snapshot
goes into the pull's lease at once, so a collection run before the image is recorded (another
image sharing the layer was just removed) keeps it and its parents. critest once saw the
collection take the parent of the snapshot the pull was about to prepare."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from snapshotter.native import NativeSnapshotter
from supervisor.content.local import LocalStore
from supervisor.errors import NotFound
from supervisor.metadata.db import Database
from supervisor.metadata.gc import Collector
from supervisor.metadata.leases import LeaseStore
from supervisor.metadata.snapshots import SnapshotStore

NS = "k8s.io"


def test_a_held_snapshot_and_its_parent_outlive_a_collection(tmp_path: Path):
    async def scenario() -> None:
        db = await Database.open(tmp_path / "meta.db")
        try:
            native = NativeSnapshotter(tmp_path / "native")
            gc = Collector(db, LocalStore(tmp_path / "content"), {"native": native})
            # two committed layers that nothing references any more (their image was removed)
            loose = SnapshotStore(db, native, "native", NS)
            await loose.prepare("x-base", "")
            await loose.commit("base", "x-base")
            await loose.prepare("x-top", "base")
            await loose.commit("top", "x-top")

            await LeaseStore(db, NS).create("pull", {})
            pulling = SnapshotStore(db, native, "native", NS, lease="pull")
            assert (await pulling.hold("top")).name == "top"
            with pytest.raises(NotFound):
                await pulling.hold("absent")
            await gc.collect()
            assert (await loose.stat("top")).parent == "base"  # both kept by the lease
            await loose.stat("base")
            await pulling.prepare("next", "top")  # what the pull does next: still possible

            await LeaseStore(db, NS).delete("pull")
            await loose.remove("next")
            await gc.collect()
            with pytest.raises(NotFound):  # without the lease they go, as before
                await loose.stat("top")
        finally:
            await db.close()

    asyncio.run(scenario())
