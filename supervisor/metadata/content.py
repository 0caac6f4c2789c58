"""The content store as one namespace sees it.

The bytes live once in the local store; this layer decides who sees them. A blob is visible in
a namespace only while the namespace has a `blobs` record for it, with its own labels and times.
Ingest refs are per namespace too (`ingests` maps a client ref to the backend ref
`<ns>/<ref>`). Writes made under a lease (the `containerd-lease` header) are recorded in it.

Sharing (containerd's default "shared" policy): a writer that names an expected digest already
on disk in another namespace needs no bytes at all; its status shows the blob complete and its
commit only adds this namespace's record. Writing to such a writer copies the blob into a fresh
ingest first, so a client can extend it into a new blob.

Deletion removes the namespace's record only; the garbage collector removes bytes that no
namespace references any more.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence

from supervisor import digests, filters, identifiers
from supervisor.content.local import LocalStore, LocalWriter, info_adaptor, status_adaptor
from supervisor.content.protocol import Info, RefLocked, Status
from supervisor.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from supervisor.metadata import leases
from supervisor.metadata.db import Database
from supervisor.metadata.namespaces import apply_label_mask, ensure, kept_labels

INGEST_EXPIRY_NS = 24 * 3600 * 1_000_000_000  # an ingest without a lease lives a day


class ContentStore:
    def __init__(
        self,
        db: Database,
        backend: LocalStore,
        ns: str,
        lease: str | None = None,
        on_delete: Callable[[], None] = lambda: None,
    ) -> None:
        self.db = db
        self.backend = backend
        self.ns = ns
        self.lease = lease
        self._on_delete = on_delete

    # -- blobs -------------------------------------------------------------------------------

    def _row(self, conn: sqlite3.Connection, digest: str) -> Info:
        row = conn.execute(
            "SELECT size, labels, created_at, updated_at FROM blobs "
            "WHERE namespace = ? AND digest = ?",
            (self.ns, digest),
        ).fetchone()
        if row is None:
            raise NotFound(f"content digest {digest}")
        size, labels, created, updated = row
        return Info(digest, size, created, updated, json.loads(labels))

    async def info(self, digest: str) -> Info:
        digests.validate(digest)
        return await self.db.read(lambda conn: self._row(conn, digest))

    async def update(self, info: Info, paths: Sequence[str]) -> Info:
        digests.validate(info.digest)
        for path in paths:
            if path != "labels" and not path.startswith("labels."):
                raise InvalidArgument(
                    f'cannot update "{path}" field on content info "{info.digest}"'
                )

        def update(conn: sqlite3.Connection) -> Info:
            current = self._row(conn, info.digest)
            labels = identifiers.validate_labels(
                apply_label_mask(current.labels, info.labels, paths), "info.Labels"
            )
            identifiers.require_label_keys(labels, f"writing labels for info {info.digest}")
            now = time.time_ns()
            conn.execute(
                "UPDATE blobs SET labels = ?, updated_at = ? WHERE namespace = ? AND digest = ?",
                (json.dumps(labels, sort_keys=True), now, self.ns, info.digest),
            )
            leases.attach(conn, self.ns, self.lease, "content", info.digest)
            return Info(info.digest, current.size, current.created_at, now, labels)

        return await self.db.write(update)

    async def list(self, filter_texts: Sequence[str] = ()) -> builtins.list[Info]:
        selected = filters.parse_all(filter_texts)

        def list_(conn: sqlite3.Connection) -> builtins.list[Info]:
            rows = conn.execute(
                "SELECT digest, size, labels, created_at, updated_at FROM blobs "
                "WHERE namespace = ? ORDER BY digest",
                (self.ns,),
            )
            return [Info(d, s, c, u, json.loads(lb)) for d, s, lb, c, u in rows]

        return [i for i in await self.db.read(list_) if selected.matches(info_adaptor(i))]

    async def delete(self, digest: str) -> None:
        digests.validate(digest)

        def delete(conn: sqlite3.Connection) -> None:
            cur = conn.execute(
                "DELETE FROM blobs WHERE namespace = ? AND digest = ?", (self.ns, digest)
            )
            if cur.rowcount == 0:
                raise NotFound(f"content digest {digest}")

        await self.db.write(delete)
        self._on_delete()

    async def read(self, digest: str, offset: int = 0, size: int = 0) -> AsyncIterator[bytes]:
        await self.info(digest)
        async for chunk in self.backend.read(digest, offset, size):
            yield chunk

    # -- ingests -----------------------------------------------------------------------------

    async def writer(self, ref: str, total: int = 0, expected: str = "") -> NamespacedWriter:
        if not ref:
            raise InvalidArgument("ref must not be empty")
        if expected:
            digests.validate(expected)
        backend_ref = f"{self.ns}/{ref}"

        def prepare(conn: sqlite3.Connection) -> bool:
            if (
                expected
                and conn.execute(
                    "SELECT 1 FROM blobs WHERE namespace = ? AND digest = ?", (self.ns, expected)
                ).fetchone()
            ):
                leases.attach(conn, self.ns, self.lease, "content", expected)
                return True
            ensure(conn, self.ns)
            conn.execute(
                "INSERT INTO ingests (namespace, ref, backend_ref, expected, expires_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (namespace, ref) DO UPDATE SET "
                "expected = excluded.expected, expires_at = excluded.expires_at",
                (
                    self.ns, ref, backend_ref, expected,
                    None if self.lease else time.time_ns() + INGEST_EXPIRY_NS,
                ),
            )  # fmt: skip
            leases.attach(conn, self.ns, self.lease, "ingests", ref)
            return False

        if await self.db.write(prepare):
            raise AlreadyExists(f"content {expected}")
        if expected:
            try:
                shared = await self.backend.info(expected)
            except NotFound:
                pass
            else:
                if total in (0, shared.size):
                    return NamespacedWriter(self, ref, backend_ref, None, shared)
        try:
            backend = await self.backend.writer(backend_ref, total, expected)
        except RefLocked as e:  # name the client's ref, not ours
            raise RefLocked(e.detail.replace(f'"{backend_ref}"', f'"{ref}"')) from None
        return NamespacedWriter(self, ref, backend_ref, backend, None)

    async def _record_blob(
        self, ref: str, digest: str, size: int, labels: Mapping[str, str]
    ) -> bool:
        """Add the committed blob to this namespace; True if it was already there."""
        now = time.time_ns()

        def record(conn: sqlite3.Connection) -> bool:
            conn.execute("DELETE FROM ingests WHERE namespace = ? AND ref = ?", (self.ns, ref))
            if self.lease:
                conn.execute(
                    "DELETE FROM lease_resources WHERE namespace = ? AND lease = ? "
                    "AND type = 'ingests' AND id = ?",
                    (self.ns, self.lease, ref),
                )
            leases.attach(conn, self.ns, self.lease, "content", digest)
            try:
                conn.execute(
                    "INSERT INTO blobs (namespace, digest, size, labels, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (self.ns, digest, size, json.dumps(dict(labels), sort_keys=True), now, now),
                )
            except sqlite3.IntegrityError:
                return True
            return False

        return await self.db.write(record)

    async def _backend_ref(self, ref: str) -> str:
        def get(conn: sqlite3.Connection) -> str:
            row = conn.execute(
                "SELECT backend_ref FROM ingests WHERE namespace = ? AND ref = ?", (self.ns, ref)
            ).fetchone()
            if row is None:
                raise NotFound(f'ingest "{ref}"')
            return str(row[0])

        return await self.db.read(get)

    async def status(self, ref: str) -> Status:
        backend_ref = await self._backend_ref(ref)
        status = await self.backend.status(backend_ref)
        return Status(ref, status.offset, status.total, status.started_at, status.updated_at)

    async def list_statuses(self, filter_texts: Sequence[str] = ()) -> builtins.list[Status]:
        selected = filters.parse_all(filter_texts)
        rows = await self.db.read(
            lambda conn: conn.execute(
                "SELECT ref, backend_ref FROM ingests WHERE namespace = ? ORDER BY ref",
                (self.ns,),
            ).fetchall()
        )
        out = []
        for ref, backend_ref in rows:
            try:
                s = await self.backend.status(backend_ref)
            except NotFound:
                continue
            status = Status(ref, s.offset, s.total, s.started_at, s.updated_at)
            if selected.matches(status_adaptor(status)):
                out.append(status)
        return out

    async def abort(self, ref: str) -> None:
        backend_ref = await self._backend_ref(ref)
        with contextlib.suppress(NotFound):
            await self.backend.abort(backend_ref)
        await self.db.write(
            lambda conn: conn.execute(
                "DELETE FROM ingests WHERE namespace = ? AND ref = ?", (self.ns, ref)
            )
        )


class NamespacedWriter:
    """A writer in one namespace: a backend writer, or a share of a blob already on disk."""

    def __init__(
        self,
        store: ContentStore,
        ref: str,
        backend_ref: str,
        backend: LocalWriter | None,
        shared: Info | None,
    ) -> None:
        self._store = store
        self._ref = ref
        self._backend_ref = backend_ref
        self._backend = backend
        self._shared = shared
        self._opened_at = time.time_ns()  # a share's started/updated times: fixed at open

    @property
    def ref(self) -> str:
        return self._ref

    async def status(self) -> Status:
        if self._backend is None:
            assert self._shared is not None
            size = self._shared.size
            return Status(self._ref, size, size, self._opened_at, self._opened_at)
        s = await self._backend.status()
        return Status(self._ref, s.offset, s.total, s.started_at, s.updated_at)

    async def digest(self) -> str:
        if self._backend is None:
            assert self._shared is not None
            return self._shared.digest
        return await self._backend.digest()

    async def _unshare(self) -> LocalWriter:
        """Turn a share into a real ingest holding a copy of the shared blob."""
        if self._backend is None:
            assert self._shared is not None
            backend = await self._store.backend.writer(self._backend_ref)
            await backend.truncate(0)
            async for chunk in self._store.backend.read(self._shared.digest):
                await backend.write(chunk)
            self._backend, self._shared = backend, None
        return self._backend

    async def write(self, data: bytes) -> int:
        return await (await self._unshare()).write(data)

    async def truncate(self, size: int) -> None:
        await (await self._unshare()).truncate(size)

    async def commit(
        self, size: int, expected: str, labels: Mapping[str, str] | None = None
    ) -> str:
        labels = kept_labels(identifiers.validate_labels(labels or {}, "info.Labels"))
        async with self._store.db.mutation():  # the collector must not run in between
            if self._backend is None:
                assert self._shared is not None
                digest, actual = self._shared.digest, self._shared.size
                if expected and expected != digest:
                    raise InvalidArgument(f"unexpected commit digest {expected}, expected {digest}")
            else:
                actual = (await self._backend.status()).offset
                try:
                    digest = await self._backend.commit(size, expected)
                except AlreadyExists:
                    digest = expected or await self._backend.digest()
                except FailedPrecondition as e:  # name the client's ref, not ours
                    raise FailedPrecondition(
                        e.detail.replace(f'"{self._backend_ref}"', f'"{self._ref}"')
                    ) from None
            if await self._store._record_blob(self._ref, digest, actual, labels):
                raise AlreadyExists(f"content {digest}")
        return digest

    async def close(self) -> None:
        if self._backend is not None:
            await self._backend.close()
