"""Images: names pointing at a root descriptor (manifest or index) in the content store.

Images are roots of the garbage collector: the blobs their targets reach stay.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from supervisor import digests, filters, identifiers
from supervisor.errors import AlreadyExists, InvalidArgument, NotFound
from supervisor.metadata.db import Database
from supervisor.metadata.namespaces import apply_label_mask, ensure, kept_labels


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Image:
    name: str
    target: Descriptor
    labels: Mapping[str, str] = field(default_factory=dict)
    created_at: int = 0
    updated_at: int = 0


def _adaptor(image: Image) -> filters.Adaptor:
    def adapt(path: tuple[str, ...]) -> str | None:
        if path == ("name",):
            return image.name
        if path[:1] == ("target",) and len(path) == 2:
            return {"digest": image.target.digest, "mediatype": image.target.media_type}.get(
                path[1]
            )
        if path[:1] == ("labels",) and len(path) > 1:
            return image.labels.get(".".join(path[1:]))
        return None

    return adapt


def validate(image: Image) -> Image:
    if not image.name:
        raise InvalidArgument("image name must not be empty")
    identifiers.validate_labels(image.labels, "image.Labels")
    if not image.target.digest:
        raise InvalidArgument(f'image "{image.name}": target digest must be set')
    digests.validate(image.target.digest)
    if not image.target.media_type:
        raise InvalidArgument(f'image "{image.name}": target media type must be set')
    if image.target.size <= 0:
        raise InvalidArgument(f'image "{image.name}": target size must be greater than zero')
    return image


_COLUMNS = "name, media_type, digest, size, annotations, labels, created_at, updated_at"


def _from_row(row: tuple[object, ...]) -> Image:
    name, media_type, digest, size, annotations, labels, created, updated = row
    return Image(
        str(name),
        Descriptor(str(media_type), str(digest), int(size), json.loads(str(annotations))),  # type: ignore[call-overload]
        json.loads(str(labels)),
        int(created),  # type: ignore[call-overload]
        int(updated),  # type: ignore[call-overload]
    )


class ImageStore:
    """The images of one namespace."""

    def __init__(self, db: Database, ns: str) -> None:
        self._db = db
        self._ns = ns

    def _get(self, conn: sqlite3.Connection, name: str) -> Image:
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM images WHERE namespace = ? AND name = ?", (self._ns, name)
        ).fetchone()
        if row is None:
            raise NotFound(f'image "{name}"')
        return _from_row(row)

    def _put(self, conn: sqlite3.Connection, image: Image) -> None:
        identifiers.require_label_keys(image.labels, f"writing labels for image {image.name}")
        conn.execute(
            f"INSERT OR REPLACE INTO images (namespace, {_COLUMNS}) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                self._ns, image.name, image.target.media_type, image.target.digest,
                image.target.size, json.dumps(dict(image.target.annotations), sort_keys=True),
                json.dumps(dict(image.labels), sort_keys=True), image.created_at, image.updated_at,
            ),
        )  # fmt: skip

    async def get(self, name: str) -> Image:
        return await self._db.read(lambda conn: self._get(conn, name))

    async def list(self, filter_texts: Sequence[str] = ()) -> builtins.list[Image]:
        selected = filters.parse_all_wrapped(filter_texts)
        rows = await self._db.read(
            lambda conn: conn.execute(
                f"SELECT {_COLUMNS} FROM images WHERE namespace = ? ORDER BY name", (self._ns,)
            ).fetchall()
        )
        return [i for i in map(_from_row, rows) if selected.matches(_adaptor(i))]

    async def create(self, image: Image) -> Image:
        now = time.time_ns()
        image = validate(
            replace(image, labels=kept_labels(image.labels), created_at=now, updated_at=now)
        )

        def create(conn: sqlite3.Connection) -> Image:
            ensure(conn, self._ns)
            if conn.execute(
                "SELECT 1 FROM images WHERE namespace = ? AND name = ?", (self._ns, image.name)
            ).fetchone():
                raise AlreadyExists(f'image "{image.name}"')
            self._put(conn, image)
            return image

        return await self._db.write(create)

    async def update(self, image: Image, paths: Sequence[str]) -> Image:
        if not image.name:
            raise InvalidArgument("image name must not be empty")

        def update(conn: sqlite3.Connection) -> Image:
            current = self._get(conn, image.name)
            new = apply_paths(current, image, paths)
            validate(new)
            self._put(conn, new)
            return new

        return await self._db.write(update)

    async def delete(self, name: str) -> None:
        def delete(conn: sqlite3.Connection) -> None:
            cur = conn.execute(
                "DELETE FROM images WHERE namespace = ? AND name = ?", (self._ns, name)
            )
            if cur.rowcount == 0:
                raise NotFound(f'image "{name}"')

        await self._db.write(delete)


def apply_paths(current: Image, requested: Image, paths: Sequence[str]) -> Image:
    """containerd's image field masks; no paths replaces labels and target."""
    now = time.time_ns()
    if not paths:
        return replace(requested, created_at=current.created_at, updated_at=now)
    labels, target = dict(current.labels), current.target
    annotations = dict(current.target.annotations)
    label_paths = []
    for path in paths:
        if path == "labels" or path.startswith("labels."):
            label_paths.append(path)
        elif path == "target":
            target = requested.target
            annotations = dict(requested.target.annotations)
        elif path == "annotations":
            annotations = dict(requested.target.annotations)
        elif path.startswith("annotations."):
            key = path[len("annotations.") :]
            value = requested.target.annotations.get(key, "")
            if value:
                annotations[key] = value
            else:
                annotations.pop(key, None)
        else:
            raise InvalidArgument(f'cannot update "{path}" field on image "{current.name}"')
    if label_paths:
        labels = apply_label_mask(labels, requested.labels, label_paths)
    return Image(
        current.name, replace(target, annotations=annotations), labels, current.created_at, now
    )
