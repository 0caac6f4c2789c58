"""Garbage collection: mark what is reachable from the roots, sweep the rest.

Roots, per namespace: images (their targets), containers (their snapshots and what their
`gc.ref` labels name), leases that have not expired (and everything they hold), blobs and
snapshots labelled `containerd.io/gc.root`, and ingests not yet expired. Edges: a blob's or a
snapshot's `containerd.io/gc.ref.content[.|/]*` labels name blobs, its
`containerd.io/gc.ref.snapshot.<snapshotter>` labels name snapshots; a snapshot reaches its
parent; an ingest reaches the blob it expects. Everything not marked is swept: blob and
snapshot records, expired leases, expired ingests; then the bytes and backend snapshots that
no namespace references any more (children before parents).

Collections run when something was deleted (shortly after, so that a burst of deletes costs one
run), when a caller asks and waits (`images rm --sync`), and on a timer, so that an expired
lease or an abandoned pull frees disk on an idle host too (containerd only collects after a
change). A collection holds the database's exclusive mutation lock, so no commit can publish a
blob between the mark and the removal of its bytes.

Volumes (`supervisor.volumes`) are no part of the graph: the collector never reads their table
nor their directories, so nothing it does removes one: only the volumes API does, and a
namespace that holds any is not deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import structlog

from snapshotter.protocol import Snapshotter
from supervisor.content.local import LocalStore
from supervisor.errors import CtrdError
from supervisor.metadata.db import Database
from supervisor.metadata.leases import expires_at
from supervisor.metrics import counts

log = structlog.get_logger("ctrd.gc")

ROOT_LABEL = "containerd.io/gc.root"
CONTENT_REF = "containerd.io/gc.ref.content"
SNAPSHOT_REF = "containerd.io/gc.ref.snapshot."

# A node of the reference graph: (kind, namespace, key). Kinds: "content", "ingests",
# "snapshots/<snapshotter>" (the same spelling as lease resource types).
Node = tuple[str, str, str]


def label_references(labels: Mapping[str, str]) -> Iterator[tuple[str, str]]:
    """The (kind, key) pairs an object's labels point at."""
    for key, value in labels.items():
        if key == CONTENT_REF or key.startswith((CONTENT_REF + ".", CONTENT_REF + "/")):
            yield "content", value
        elif key.startswith(SNAPSHOT_REF) and len(key) > len(SNAPSHOT_REF):
            snapshotter = key[len(SNAPSHOT_REF) :].split("/", 1)[0]
            yield f"snapshots/{snapshotter}", value


def mark(roots: Iterable[Node], edges: Callable[[Node], Iterable[Node]]) -> set[Node]:
    """Everything reachable from the roots."""
    marked: set[Node] = set()
    queue = deque(roots)
    while queue:
        node = queue.popleft()
        if node in marked:
            continue
        marked.add(node)
        queue.extend(n for n in edges(node) if n not in marked)
    return marked


@dataclass(frozen=True)
class Result:
    blobs: int = 0
    leases: int = 0
    ingests: int = 0
    snapshots: int = 0
    files: int = 0
    ms: float = 0.0
    freed: int = 0  # bytes of the blob files removed


def sweep_metadata(conn: sqlite3.Connection, now: int) -> tuple[int, int, int, int]:
    """Mark from the roots, delete unreachable records: (blobs, leases, ingests, snapshots)."""
    roots: list[Node] = []
    expired: list[tuple[str, str]] = []
    for ns, lease_id, labels in conn.execute("SELECT namespace, id, labels FROM leases"):
        until = expires_at(json.loads(labels))
        if until is not None and until <= now:
            expired.append((ns, lease_id))
    expired_set = set(expired)
    for ns, lease_id, kind, key in conn.execute(
        "SELECT namespace, lease, type, id FROM lease_resources"
    ):
        if (ns, lease_id) not in expired_set:
            roots.append((kind, ns, key))
    roots += [("content", ns, d) for ns, d in conn.execute("SELECT namespace, digest FROM images")]
    blob_labels: dict[tuple[str, str], dict[str, str]] = {}
    for ns, digest, labels_json in conn.execute("SELECT namespace, digest, labels FROM blobs"):
        labels = json.loads(labels_json)
        blob_labels[(ns, digest)] = labels
        if ROOT_LABEL in labels:
            roots.append(("content", ns, digest))
    ingest_expected: dict[tuple[str, str], str] = {}
    for ns, ref, expected, until in conn.execute(
        "SELECT namespace, ref, expected, expires_at FROM ingests"
    ):
        ingest_expected[(ns, ref)] = expected
        if until is None or until > now:
            roots.append(("ingests", ns, ref))

    snapshots: dict[Node, tuple[str, dict[str, str]]] = {}
    for ns, snapshotter, key, parent, labels_json in conn.execute(
        "SELECT namespace, snapshotter, key, parent, labels FROM snapshots"
    ):
        node = (f"snapshots/{snapshotter}", ns, key)
        labels = json.loads(labels_json)
        snapshots[node] = (parent, labels)
        if ROOT_LABEL in labels:
            roots.append(node)

    for ns, snapshotter, key, labels_json in conn.execute(
        "SELECT namespace, snapshotter, snapshot_key, labels FROM containers"
    ):
        if snapshotter and key:
            roots.append((f"snapshots/{snapshotter}", ns, key))
        roots += [(kind, ns, ref) for kind, ref in label_references(json.loads(labels_json))]

    def edges(node: Node) -> Iterator[Node]:
        kind, ns, key = node
        if kind == "content":
            for ref_kind, ref_key in label_references(blob_labels.get((ns, key), {})):
                yield ref_kind, ns, ref_key
        elif kind == "ingests" and ingest_expected.get((ns, key)):
            yield "content", ns, ingest_expected[(ns, key)]
        elif node in snapshots:
            parent, labels = snapshots[node]
            if parent:
                yield kind, ns, parent
            for ref_kind, ref_key in label_references(labels):
                yield ref_kind, ns, ref_key

    marked = mark(roots, edges)
    dead_blobs = [k for k in blob_labels if ("content", *k) not in marked]
    conn.executemany("DELETE FROM blobs WHERE namespace = ? AND digest = ?", dead_blobs)
    conn.executemany("DELETE FROM leases WHERE namespace = ? AND id = ?", expired)
    dead_ingests = [k for k in ingest_expected if ("ingests", *k) not in marked]
    conn.executemany("DELETE FROM ingests WHERE namespace = ? AND ref = ?", dead_ingests)
    dead_snapshots = [
        (ns, kind.split("/", 1)[1], key)
        for (kind, ns, key) in snapshots
        if (kind, ns, key) not in marked
    ]
    conn.executemany(
        "DELETE FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?",
        dead_snapshots,
    )
    return len(dead_blobs), len(expired), len(dead_ingests), len(dead_snapshots)


def _count(result: Result) -> None:
    """One run in the daemon's metrics (`supervisor.metrics.counts`)."""
    counts.GC_RUNS.inc()
    counts.GC_SECONDS.observe(result.ms / 1000)
    removed = zip(
        counts.GC_KINDS,
        (result.blobs, result.leases, result.ingests, result.snapshots, result.files),
        strict=True,
    )
    for kind, count in removed:
        if count:
            counts.GC_REMOVED.inc(kind, by=count)
    counts.GC_FREED_BYTES.inc(by=result.freed)


class Collector:
    def __init__(
        self,
        db: Database,
        content: LocalStore,
        snapshotters: Mapping[str, Snapshotter] | None = None,
        interval: float = 60.0,
        delay: float = 0.1,
    ) -> None:
        self._db = db
        self._content = content
        self._snapshotters = dict(snapshotters or {})
        self._interval = interval
        self._delay = delay
        self._dirty = asyncio.Event()
        self._running = asyncio.Lock()
        self.last: Result | None = None

    def mark_dirty(self) -> None:
        self._dirty.set()

    async def collect(self, *, records: bool = True) -> Result:
        """One whole collection; concurrent callers wait for the one in progress, then run.

        With `records=False` only what the disk holds beyond the records goes (bytes, ingests
        and backend snapshots no record names): the repair of what a crash left, which takes
        nothing a client could still be using.
        """
        async with self._running, self._db.exclusive():
            start = time.monotonic()
            blobs = leases_ = ingests = snaps = 0
            if records:
                self._dirty.clear()  # this run covers every change made before it
                blobs, leases_, ingests, snaps = await self._db.write(
                    lambda conn: sweep_metadata(conn, time.time_ns())
                )
            files, freed = await self._db.read(self._sweep_disk)
            for name, backend in self._snapshotters.items():
                files += await self._sweep_snapshots(name, backend)
            ms = (time.monotonic() - start) * 1000
            result = Result(blobs, leases_, ingests, snaps, files, ms, freed)
        self.last = result
        _count(result)
        if blobs or leases_ or ingests or snaps or files:
            log.info(
                "gc", blobs=blobs, leases=leases_, ingests=ingests, snapshots=snaps,
                files=files, ms=result.ms,
            )  # fmt: skip
        return result

    async def _sweep_snapshots(self, name: str, backend: Snapshotter) -> int:
        """Remove backend snapshots no namespace records, children before parents."""
        live = set(
            await self._db.read(
                lambda conn: [
                    k
                    for (k,) in conn.execute(
                        "SELECT backend_key FROM snapshots WHERE snapshotter = ?", (name,)
                    )
                ]
            )
        )
        dead = {i.name: i.parent for i in await backend.list() if i.name not in live}
        removed = 0
        while dead:
            parents = set(dead.values())
            leaves = [key for key in dead if key not in parents]
            if not leaves:
                break
            for key in leaves:
                try:
                    await backend.remove(key)
                    removed += 1
                except CtrdError as e:  # one failure must not stop the sweep (containerd#3923)
                    log.warning("gc_snapshot_remove_failed", key=key, error=str(e))
                del dead[key]
        await backend.cleanup()
        return removed

    def _sweep_disk(self, conn: sqlite3.Connection) -> tuple[int, int]:
        """Remove bytes no namespace references (on the database thread, after the sweep):
        the files removed, and the bytes of the blobs among them."""
        live = {d for (d,) in conn.execute("SELECT DISTINCT digest FROM blobs")}
        removed = freed = 0
        for digest in self._content.digests_on_disk() - live:
            with contextlib.suppress(FileNotFoundError):
                path = self._content.blob_path(digest)
                size = os.stat(path).st_size
                os.unlink(path)
                removed += 1
                freed += size
        live_refs = {r for (r,) in conn.execute("SELECT backend_ref FROM ingests")}
        for directory, ref in self._content.ingest_dirs().items():
            if ref not in live_refs and not self._content.is_locked(ref):
                shutil.rmtree(directory, ignore_errors=True)
                removed += 1
        return removed, freed

    async def run(self) -> None:
        """Repair what a crash left at start, then collect after changes and on the timer,
        until cancelled."""
        try:
            await self.collect(records=False)
        except Exception:
            log.exception("gc_failed")
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._dirty.wait()
                await asyncio.sleep(self._delay)
                if not self._dirty.is_set():
                    continue  # a synchronous collection ran meanwhile
            try:
                await self.collect()
            except Exception:
                log.exception("gc_failed")
