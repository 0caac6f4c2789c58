"""The CRI's view of a namespace's images: ctrd image records grouped by image ID.

kubelet sees an image as containerd's CRI shows it (cri-notes §12): its ID is the digest of
its config (`sha256:...`), its repo tags are the fully qualified tag references naming it
(`docker.io/library/busybox:latest`), its repo digests `<repository>@<target digest>`, one for
every repository it was pulled from (by tag or by digest). Several ctrd image records may name
one image: the tag, the repo digest and the ID itself, as containerd's CRI writes them.

Rules kept here:
- A record is read through its target (an index: the manifest for the daemon's platform) to
  its manifest and config; a record whose content is missing is left out (as containerd skips
  images whose content is incomplete), never an error of the whole list.
- `lookup` takes an ID (`sha256:<hex>` or the bare hex), a unique prefix of one, or a
  reference (short names normalised as docker does); a prefix naming two images is
  InvalidArgument, nothing is NotFound.
- `size` is the content of the image's tree (index, manifest, config, layers), as containerd's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from supervisor import digests
from supervisor.errors import InvalidArgument, NotFound
from supervisor.metadata.images import Image

MANAGED_LABEL = "io.cri-containerd.image"  # containerd's mark on the records its CRI made
MANAGED = "managed"
PINNED_LABEL = "io.cri-containerd.pinned"  # the sandbox image: kubelet's image GC keeps it
PINNED = "pinned"
_HEX = re.compile(r"[0-9a-f]{1,64}")

ReadBlob = Callable[[str], Awaitable[bytes]]


@dataclass(frozen=True)
class Content:
    """What one target leads to: the config's digest and JSON, the manifest, the tree's size."""

    config_digest: str
    config: Mapping[str, Any]
    size: int
    diff_ids: tuple[str, ...]

    @property
    def chain_id(self) -> str:
        chains = digests.chain_ids(list(self.diff_ids))
        return chains[-1] if chains else ""


@dataclass(frozen=True)
class CriImage:
    id: str  # sha256:<config digest>
    names: tuple[str, ...]  # every record naming it
    repo_tags: tuple[str, ...]
    repo_digests: tuple[str, ...]
    content: Content
    pinned: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.content.size

    def user(self) -> tuple[int | None, str]:
        """(uid, username) from the config's User: the part before ':', a number as uid."""
        user = str((self.content.config.get("config") or {}).get("User") or "")
        name = user.partition(":")[0]
        if not name:
            return None, ""
        return (int(name), "") if name.isdigit() else (None, name)


async def read_content(target: Image, read: ReadBlob) -> Content:
    """Follow a record's target to its config; NotFound when a piece is missing."""
    from supervisor.distribution import manifest, platforms

    size = target.target.size
    current = manifest.Descriptor(target.target.media_type, target.target.digest, size)
    for _ in range(5):
        if not manifest.is_index(current.media_type):
            break
        where = f"{target.name} index {current.digest}"
        body = await read(current.digest)
        current = manifest.select(
            manifest.parse_index(body, current.media_type, where), platforms.default(), where
        )
        size += current.size
    where = f"{target.name} manifest {current.digest}"
    body = await read(current.digest)
    parsed = manifest.parse_manifest(body, manifest.detect_media_type(body, current.media_type))
    config_body = await read(parsed.config.digest)
    try:
        config = json.loads(config_body)
    except ValueError:
        raise InvalidArgument(f"{where}: config {parsed.config.digest} is not JSON") from None
    if not isinstance(config, dict):
        raise InvalidArgument(f"{where}: config {parsed.config.digest} is not an object")
    size += parsed.config.size + sum(layer.size for layer in parsed.layers)
    diff_ids = tuple(str(d) for d in (config.get("rootfs") or {}).get("diff_ids") or ())
    return Content(parsed.config.digest, config, size, diff_ids)


def _reference(name: str) -> Any:
    """The parsed reference a record's name is, if it is one in its full form."""
    from supervisor.distribution import reference

    if name.startswith("sha256:"):
        return None
    try:
        ref = reference.parse(name)
    except InvalidArgument:
        return None
    return ref if str(ref) == name else None


def group(records: Iterable[tuple[Image, Content]]) -> list[CriImage]:
    """One CriImage per config digest, its names, tags and digests sorted."""
    by_id: dict[str, list[tuple[Image, Content]]] = {}
    for record, content in records:
        by_id.setdefault(content.config_digest, []).append((record, content))
    out = []
    for image_id, members in sorted(by_id.items()):
        tags: set[str] = set()
        repo_digests: set[str] = set()
        for record, _ in members:
            ref = _reference(record.name)
            if ref is None:
                continue
            if ref.digest:
                repo_digests.add(f"{ref.name}@{ref.digest}")
            else:
                tags.add(str(ref))
                repo_digests.add(f"{ref.name}@{record.target.digest}")
        labels: dict[str, str] = {}
        for record, _ in members:
            labels.update(record.labels)
        out.append(
            CriImage(
                id=image_id,
                names=tuple(sorted(record.name for record, _ in members)),
                repo_tags=tuple(sorted(tags)),
                repo_digests=tuple(sorted(repo_digests)),
                content=members[0][1],
                labels=labels,
                pinned=labels.get(PINNED_LABEL) == PINNED,
            )
        )
    return out


def lookup(images: Sequence[CriImage], text: str) -> CriImage:
    """The image `text` names (see the module's rules)."""
    if not text:
        raise InvalidArgument("image reference must not be empty")
    bare = text.removeprefix("sha256:")
    for image in images:
        if image.id == f"sha256:{bare}" or text in image.names:
            return image
    ref = _parse(text)
    if ref is not None:
        wanted = str(ref)
        for image in images:
            if wanted in image.names or wanted in image.repo_tags or wanted in image.repo_digests:
                return image
    if _HEX.fullmatch(bare):
        matched = [i for i in images if i.id.removeprefix("sha256:").startswith(bare)]
        if len(matched) > 1:
            raise InvalidArgument(f'image ID prefix "{text}" is ambiguous')
        if matched:
            return matched[0]
    raise NotFound(f'image "{text}" not found')


def _parse(text: str) -> Any:
    from supervisor.distribution import reference

    try:
        return reference.parse(text)
    except InvalidArgument:
        return None


def verbose_info(image: CriImage) -> dict[str, str]:
    """ImageStatus's verbose `info`, as containerd's: {"info": {"chainID", "imageSpec"}}."""
    value = {"chainID": image.content.chain_id, "imageSpec": image.content.config}
    return {"info": json.dumps(value)}
