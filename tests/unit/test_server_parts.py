"""The daemon's lazily built stores (supervisor.server.Parts) and the collector's late start."""

from __future__ import annotations

import asyncio

from supervisor.metadata.db import Database
from supervisor.server import Parts, collect_later


def test_stores_are_built_once_at_first_use(tmp_path):
    async def main() -> None:
        db = await Database.open(tmp_path / "meta.db")
        try:
            parts = Parts(tmp_path, db, gc_interval=60)
            assert parts.built_snapshotters() == []
            assert not (tmp_path / "content").exists()
            assert parts.blobs is parts.blobs
            assert (tmp_path / "content" / "blobs").is_dir()
            assert parts.gc is parts.gc  # builds the snapshotters it sweeps
            assert sorted(parts.snapshotters) == ["native", "overlayfs"]
            assert len(parts.built_snapshotters()) == 2
            for snapshotter in parts.built_snapshotters():
                await snapshotter.close()
        finally:
            await db.close()

    asyncio.run(main())


def test_a_collector_that_cannot_be_built_is_logged_not_raised(tmp_path, capsys):
    async def main() -> None:
        db = await Database.open(tmp_path / "meta.db")
        try:
            (tmp_path / "root").write_text("a file where the stores' root should be")
            parts = Parts(tmp_path / "root", db, gc_interval=60)
            await asyncio.wait_for(collect_later(parts, 0), timeout=5)  # returns: no collector
        finally:
            await db.close()

    asyncio.run(main())
    captured = capsys.readouterr()
    assert "gc_unavailable" in captured.out + captured.err
