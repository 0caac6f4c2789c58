"""The content store's interface, the same at every layer.

The local store (`supervisor.content.local`), the namespaced metadata store
(`supervisor.metadata.content`) and the remote client over gRPC (`supervisor.client.content`)
all implement `Store`, so the conformance suite runs against each of them.

Invariants every implementation keeps:
- a blob is visible only once complete and verified; it never changes afterwards;
- one writer per ref at a time (a second gets Unavailable);
- a failed commit keeps the ingest, so the writer can resume it;
- committing bytes that already exist is AlreadyExists, which callers treat as success.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from supervisor.errors import Unavailable


@dataclass(frozen=True)
class Info:
    digest: str
    size: int
    created_at: int  # nanoseconds since the epoch
    updated_at: int
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Status:
    ref: str
    offset: int
    total: int
    started_at: int
    updated_at: int
    expected: str = ""


class Writer(Protocol):
    @property
    def ref(self) -> str: ...

    async def status(self) -> Status: ...

    async def digest(self) -> str:
        """The digest of every byte written so far (waits for writes still in flight)."""
        ...

    async def write(self, data: bytes) -> int: ...

    async def truncate(self, size: int) -> None:
        """Only 0 is supported: start over."""
        ...

    async def commit(
        self, size: int, expected: str, labels: Mapping[str, str] | None = None
    ) -> str:
        """Verify and publish the blob; returns its digest. Releases the ref either way."""
        ...

    async def close(self) -> None:
        """Release the ref and keep the ingest for a later writer to resume."""
        ...


class Store(Protocol):
    async def info(self, digest: str) -> Info: ...

    async def update(self, info: Info, paths: Sequence[str]) -> Info: ...

    async def list(self, filters: Sequence[str] = ()) -> builtins.list[Info]: ...

    async def delete(self, digest: str) -> None: ...

    def read(self, digest: str, offset: int = 0, size: int = 0) -> AsyncIterator[bytes]:
        """Chunks of the blob from offset; size <= 0 means to the end."""
        ...

    async def writer(self, ref: str, total: int = 0, expected: str = "") -> Writer: ...

    async def status(self, ref: str) -> Status: ...

    async def list_statuses(self, filters: Sequence[str] = ()) -> builtins.list[Status]: ...

    async def abort(self, ref: str) -> None: ...


# How `open_writer` waits for a ref another writer holds: containerd's OpenWriter sleeps a
# random time under a bound that doubles from 16 ms; here the bound starts lower and stops
# at a tenth of a second, so a waiting pull goes on promptly once the other one finishes.
_WAIT_FIRST = 0.004
_WAIT_MOST = 0.1


class RefLocked(Unavailable):
    """Another writer holds the ref (its words say since when)."""


async def open_writer(store: Store, ref: str, total: int = 0, expected: str = "") -> Writer:
    """`store.writer(...)`, waiting while another writer holds `ref` (RefLocked), as
    containerd's `content.OpenWriter` does: two pulls of one image then share its blobs, the
    second finding each one the first committed (AlreadyExists) or resuming what it left.
    Waits as long as the other writer lives; cancelling the caller ends the wait."""
    import asyncio
    import random

    bound = _WAIT_FIRST
    while True:
        try:
            return await store.writer(ref, total, expected)
        except RefLocked:
            await asyncio.sleep(random.uniform(bound / 2, bound))
            bound = min(bound * 2, _WAIT_MOST)
