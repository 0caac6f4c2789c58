"""Descriptors, manifests and indexes as registries serve them (OCI and Docker schema 2).

Pure parsing with checks a hostile registry cannot get past: every descriptor names a valid
digest and a non-negative size, manifests are at most `MANIFEST_LIMIT` bytes, and a document's
own `mediaType` must agree with what it was served as. Errors are InvalidArgument naming the
document. `select` picks an index's manifest for a platform, as containerd's
`images.Manifest` does (platform-less entries last).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from supervisor import digests
from supervisor.distribution import platforms
from supervisor.distribution.platforms import Matcher, Platform
from supervisor.errors import InvalidArgument, NotFound, Unimplemented

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
# What a resolver accepts, best first (as containerd sends it).
ACCEPT = ", ".join([DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX, "*/*"])
MANIFEST_LIMIT = 4 << 20  # containerd's limit for a manifest or index


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)
    urls: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, value: Any, where: str = "descriptor") -> Descriptor:
        if not isinstance(value, dict):
            raise InvalidArgument(f"{where}: a descriptor must be an object")
        media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
        if not isinstance(media_type, str) or not media_type:
            raise InvalidArgument(f"{where}: missing mediaType")
        if not isinstance(digest, str):
            raise InvalidArgument(f"{where}: missing digest")
        try:
            digests.validate(digest)
        except InvalidArgument as e:
            raise InvalidArgument(f"{where}: {e.detail}") from None
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidArgument(f"{where}: invalid size {size!r}")
        platform = value.get("platform")
        annotations = value.get("annotations") or {}
        urls = value.get("urls") or []
        if not isinstance(annotations, dict) or not isinstance(urls, list):
            raise InvalidArgument(f"{where}: invalid annotations or urls")
        return cls(
            media_type,
            digest,
            size,
            Platform.from_json(platform) if isinstance(platform, dict) else None,
            {str(k): str(v) for k, v in annotations.items()},
            tuple(str(u) for u in urls),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.platform is not None:
            p = self.platform
            out["platform"] = {"os": p.os, "architecture": p.architecture}
            if p.variant:
                out["platform"]["variant"] = p.variant
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


@dataclass(frozen=True)
class Manifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


def _document(data: bytes, where: str) -> dict[str, Any]:
    if len(data) > MANIFEST_LIMIT:
        raise InvalidArgument(f"{where}: larger than {MANIFEST_LIMIT} bytes")
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"{where}: not JSON: {e}") from None
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where}: not a JSON object")
    return value


def detect_media_type(data: bytes, served_as: str = "") -> str:
    """The media type of a manifest document: its `mediaType`, else what its shape says.

    `served_as` is the Content-Type the registry sent; generic types (JSON, text) are ignored.
    """
    served_as = served_as.partition(";")[0].strip()
    if served_as in MANIFEST_TYPES | INDEX_TYPES | {DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED}:
        return served_as
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return served_as
    if not isinstance(value, dict):
        return served_as
    declared = value.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    if value.get("schemaVersion") == 1:
        return DOCKER_SCHEMA1
    if "manifests" in value:
        return OCI_INDEX
    if "config" in value:
        return OCI_MANIFEST
    return served_as


def check_supported(media_type: str, where: str) -> None:
    if media_type in (DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED):
        raise Unimplemented(f"{where}: Docker schema 1 manifests are not supported")
    if media_type not in MANIFEST_TYPES | INDEX_TYPES:
        raise InvalidArgument(f'{where}: unexpected media type "{media_type}"')


def _check_declared(value: dict[str, Any], media_type: str, where: str) -> None:
    declared = value.get("mediaType")
    if declared is not None and declared != media_type:
        raise InvalidArgument(
            f'{where}: declares media type "{declared}", served as "{media_type}"'
        )


def parse_manifest(
    data: bytes, media_type: str = OCI_MANIFEST, where: str = "manifest"
) -> Manifest:
    value = _document(data, where)
    _check_declared(value, media_type, where)
    layers = value.get("layers")
    if not isinstance(layers, list):
        raise InvalidArgument(f"{where}: missing layers")
    return Manifest(
        media_type,
        Descriptor.from_json(value.get("config"), f"{where} config"),
        tuple(Descriptor.from_json(d, f"{where} layer {i}") for i, d in enumerate(layers)),
    )


def parse_index(data: bytes, media_type: str = OCI_INDEX, where: str = "index") -> list[Descriptor]:
    value = _document(data, where)
    _check_declared(value, media_type, where)
    manifests = value.get("manifests")
    if not isinstance(manifests, list):
        raise InvalidArgument(f"{where}: missing manifests")
    return [Descriptor.from_json(d, f"{where} entry {i}") for i, d in enumerate(manifests)]


def select(entries: Sequence[Descriptor], matcher: Matcher, where: str = "index") -> Descriptor:
    """The index entry that best fits the matcher (manifests or nested indexes only).

    NotFound lists the platforms the index offers, so the error says what to ask for instead.
    """
    usable = [d for d in entries if d.media_type in MANIFEST_TYPES | INDEX_TYPES]
    order = platforms.best([d.platform for d in usable], matcher)
    if not order:
        offered = sorted({str(d.platform) for d in usable if d.platform is not None})
        raise NotFound(
            f"{where}: no manifest for platform {matcher} (it has {', '.join(offered) or 'none'})"
        )
    return usable[order[0]]


def is_manifest(media_type: str) -> bool:
    return media_type in MANIFEST_TYPES


def is_index(media_type: str) -> bool:
    return media_type in INDEX_TYPES


def ref_key(descriptor: Descriptor) -> str:
    """The ingest ref for a descriptor's download, as containerd's `remotes.MakeRefKey`."""
    mt = descriptor.media_type
    if mt in MANIFEST_TYPES:
        kind = "manifest"
    elif mt in INDEX_TYPES:
        kind = "index"
    elif ".layer." in mt or "rootfs.diff" in mt:
        kind = "layer"
    elif mt in (OCI_CONFIG, DOCKER_CONFIG) or mt.endswith("config.v1+json"):
        kind = "config"
    else:
        kind = "unknown"
    return f"{kind}-{descriptor.digest}"
