"""The snapshotter interface, the same at every layer.

Implementations: `snapshotter.overlay.OverlaySnapshotter` and `snapshotter.native.
NativeSnapshotter` (the backends, one per root directory), the namespaced metadata wrapper in
`supervisor.metadata.snapshots`, and the remote client over gRPC. The conformance suite
(`tests/conformance/test_snapshotter.py`) runs against each.

Model (containerd's): a snapshot is Active (writable, made by `prepare`), View (read-only, made
by `view`) or Committed (made only by `commit`, which turns an Active snapshot into a Committed
one under a new name and removes the Active key). Only Committed snapshots can be parents. Keys
and names share one key space. Mounts are returned, not performed.

Errors (supervisor.errors): missing key or parent → NotFound; key or name taken →
AlreadyExists; parent not Committed → InvalidArgument; commit of a non-Active, mounts of a
Committed, remove of a snapshot with children → FailedPrecondition; update of anything but
labels → InvalidArgument.
"""

from __future__ import annotations

import builtins
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol


class Kind(enum.IntEnum):
    """Values are the wire enum's (containerd.services.snapshots.v1.Kind)."""

    UNKNOWN = 0
    VIEW = 1
    ACTIVE = 2
    COMMITTED = 3


@dataclass(frozen=True)
class Info:
    name: str
    kind: Kind
    parent: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    created_at: int = 0  # nanoseconds since the epoch
    updated_at: int = 0


@dataclass(frozen=True)
class Mount:
    """One mount(2) to perform: containerd.types.Mount."""

    type: str
    source: str
    options: tuple[str, ...] = ()
    target: str = ""


@dataclass(frozen=True)
class Usage:
    size: int = 0  # bytes allocated on disk
    inodes: int = 0


class Snapshotter(Protocol):
    async def stat(self, key: str) -> Info: ...

    async def update(self, info: Info, paths: Sequence[str] = ()) -> Info:
        """Only `labels` and `labels.<key>` may change; no paths replaces all labels."""
        ...

    async def usage(self, key: str) -> Usage: ...

    async def mounts(self, key: str) -> builtins.list[Mount]: ...

    async def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> builtins.list[Mount]: ...

    async def view(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> builtins.list[Mount]: ...

    async def commit(
        self, name: str, key: str, labels: Mapping[str, str] | None = None
    ) -> None: ...

    async def remove(self, key: str) -> None: ...

    async def list(self, filters: Sequence[str] = ()) -> builtins.list[Info]:
        """Every snapshot matching the filters (fields: name, parent, kind, labels.<k>)."""
        ...

    async def cleanup(self) -> None:
        """Delete directories that no snapshot owns any more (left by removes or crashes)."""
        ...
