"""What the overlay and native snapshotters share: records in the metastore, one directory each.

Layout under a root:

    metadata.db             the metastore (snapshotter.storage)
    snapshots/<id>/fs       the snapshot's tree (0755); for overlay, the upper dir
    snapshots/<id>/work     overlay's work dir (0711), made for Active snapshots only
    snapshots/new-XXXXXX    a snapshot being made

The root and `snapshots/` are 0700 and every mode is set explicitly, whatever the umask.

Invariant: after `cleanup()`, every directory under `snapshots/` belongs to a record and every
record has its directory. A snapshot's directory is made as `new-XXXXXX` inside the write
transaction that inserts its record and renamed to `<id>` just before that transaction commits,
so a crash leaves either both, or the record rolled back and a `new-*` or `<id>` directory no
record owns. Such an `<id>` can only be an id the sequence will hand out again: the next
creation that gets it removes the stale directory before its rename. A removal commits first
and deletes the directory after (synchronously); a crash in between leaves an orphan.
`cleanup()` deletes every orphan, under the write lock so that no creation is half done.

Subclasses say what a new snapshot's directory holds (`_make_dirs`) and what its mounts are
(`_mounts`). Every public method is async and runs its file and SQLite work on a worker
thread.
"""

from __future__ import annotations

import asyncio
import builtins
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from snapshotter import fsutil
from snapshotter.protocol import Info, Kind, Mount, Usage
from snapshotter.storage import MetaStore, Record
from supervisor import filters as filter_language
from supervisor import identifiers
from supervisor.errors import FailedPrecondition

_KIND_NAMES = {Kind.VIEW: "view", Kind.ACTIVE: "active", Kind.COMMITTED: "committed"}


def info_adaptor(info: Info) -> filter_language.Adaptor:
    # An empty parent reads as "" (not absent), as containerd's adaptor makes `parent!=""`
    # select the snapshots that have one.
    fields = {"name": info.name, "parent": info.parent, "kind": _KIND_NAMES.get(info.kind, "")}
    return filter_language.label_adaptor(fields, dict(info.labels))


class DirectorySnapshotter:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.snapshots = root / "snapshots"
        for directory in (root, self.snapshots):
            directory.mkdir(parents=True, exist_ok=True)
            os.chmod(directory, 0o700)
        self._store = MetaStore(root / "metadata.db")

    # -- the protocol ----------------------------------------------------------------------

    async def stat(self, key: str) -> Info:
        return (await self._get(key)).info()

    async def update(self, info: Info, paths: Sequence[str] = ()) -> Info:
        identifiers.validate_labels(info.labels)

        def update() -> Info:
            with self._store.write() as tx:
                return tx.update(info.name, info.labels, paths, time.time_ns()).info()

        return await asyncio.to_thread(update)

    async def usage(self, key: str) -> Usage:
        record = await self._get(key)
        if record.kind == Kind.ACTIVE:
            return await asyncio.to_thread(fsutil.disk_usage, self.fs_dir(record.id))
        return record.usage

    async def mounts(self, key: str) -> builtins.list[Mount]:
        def mounts() -> builtins.list[Mount]:
            with self._store.read() as tx:
                record = tx.get(key)
                if record.kind not in (Kind.ACTIVE, Kind.VIEW):
                    raise FailedPrecondition(f"requested snapshot {key} not active or view")
                return self._mounts(record, tx.parent_ids(record))

        return await asyncio.to_thread(mounts)

    async def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> builtins.list[Mount]:
        return await self._create(Kind.ACTIVE, key, parent, labels)

    async def view(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> builtins.list[Mount]:
        return await self._create(Kind.VIEW, key, parent, labels)

    async def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        checked = identifiers.validate_labels(labels or {})

        def commit() -> None:
            with self._store.write() as tx:
                record = tx.check_commit(name, key)
                usage = fsutil.disk_usage(self.fs_dir(record.id))
                tx.commit(record, name, checked, usage, time.time_ns())

        await asyncio.to_thread(commit)

    async def remove(self, key: str) -> None:
        def remove() -> None:
            with self._store.write() as tx:
                record = tx.remove(key)
            # After the commit: a crash here leaves an orphan for cleanup(), never a record
            # without its directory.
            shutil.rmtree(self.snapshot_dir(record.id), ignore_errors=True)

        await asyncio.to_thread(remove)

    async def list(self, filters: Sequence[str] = ()) -> builtins.list[Info]:
        selected = filter_language.parse_all(filters)

        def infos() -> builtins.list[Info]:
            with self._store.read() as tx:
                return [r.info() for r in tx.list()]

        return [i for i in await asyncio.to_thread(infos) if selected.matches(info_adaptor(i))]

    async def cleanup(self) -> None:
        def cleanup() -> None:
            with self._store.write() as tx:  # no creation is under way meanwhile
                known = {str(i) for i in tx.ids()}
                with os.scandir(self.snapshots) as entries:
                    orphans = [Path(e.path) for e in entries if e.name not in known]
                for orphan in orphans:
                    _remove(orphan)

        await asyncio.to_thread(cleanup)

    # -- beyond the protocol ---------------------------------------------------------------

    async def close(self) -> None:
        """Close the metastore; closing again is fine, any other call then fails."""
        await asyncio.to_thread(self._store.close)

    def snapshot_dir(self, id_: int) -> Path:
        return self.snapshots / str(id_)

    def fs_dir(self, id_: int) -> Path:
        return self.snapshot_dir(id_) / "fs"

    # -- for subclasses --------------------------------------------------------------------

    def _make_dirs(self, directory: Path, kind: Kind, parent_ids: Sequence[int]) -> None:
        """Fill the new snapshot's (empty, 0700) directory; blocking."""
        raise NotImplementedError

    def _mounts(self, record: Record, parent_ids: Sequence[int]) -> builtins.list[Mount]:
        raise NotImplementedError

    # -- internals ---------------------------------------------------------------------------

    async def _get(self, key: str) -> Record:
        def get() -> Record:
            with self._store.read() as tx:
                return tx.get(key)

        return await asyncio.to_thread(get)

    async def _create(
        self, kind: Kind, key: str, parent: str, labels: Mapping[str, str] | None
    ) -> builtins.list[Mount]:
        checked = identifiers.validate_labels(labels or {})
        return await asyncio.to_thread(self._create_sync, kind, key, parent, checked)

    def _create_sync(
        self, kind: Kind, key: str, parent: str, labels: Mapping[str, str]
    ) -> builtins.list[Mount]:
        renamed: Path | None = None
        try:
            with self._store.write() as tx:
                record = tx.create(key, kind, parent, labels, time.time_ns())
                parent_ids = tx.parent_ids(record)
                new = Path(tempfile.mkdtemp(prefix="new-", dir=self.snapshots))
                try:
                    self._make_dirs(new, kind, parent_ids)
                    target = self.snapshot_dir(record.id)
                    if os.path.lexists(target):  # left by a crash: its record never committed
                        _remove(target)
                    os.rename(new, target)
                except BaseException:
                    shutil.rmtree(new, ignore_errors=True)
                    raise
                renamed = target
                _fsync_dir(self.snapshots)
                mounts = self._mounts(record, parent_ids)
        except BaseException:
            if renamed is not None:  # the record did not commit: neither may its directory
                shutil.rmtree(renamed, ignore_errors=True)
            raise
        return mounts


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def mkdir(path: Path, mode: int) -> None:
    """mkdir with exactly `mode`, whatever the umask."""
    path.mkdir()
    os.chmod(path, mode)
