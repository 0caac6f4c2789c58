"""Deterministic OCI images for tests, built offline from Debian's busybox-static.

This module owns turning a small description of layer entries into image content: layer tars,
their blobs (gzip, none, or zstd when the `zstandard` module is importable), the image config,
the manifest (OCI, or Docker schema 2 on request), an optional index / manifest list, and the
on-disk forms `ctr images import` reads (an OCI layout or archive, a `docker save` archive).

Invariants: everything is a pure function of its inputs, so building twice gives the same bytes
and digests (entries sorted with parents first and hard links last, fixed mtimes, no user or
group names, gzip with mtime 0, JSON with sorted keys); a layer's diff_id is the sha256 of its
uncompressed tar; a manifest names every blob with its exact size and media type.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib
import io
import json
import posixpath
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Schema = Literal["oci", "docker"]
Compression = Literal["gzip", "none", "zstd"]

EPOCH = 1_704_067_200  # 2024-01-01T00:00:00Z: the mtime of every entry
CREATED = "2024-01-01T00:00:00Z"
BUSYBOX = Path("/bin/busybox")
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MOTD = b"Welcome to the ctrd test image (busybox).\n"
EXTRA = b"added by the second layer\n"
APPLETS = (
    "sh", "echo", "cat", "ls", "sleep", "true", "false", "seq", "id", "env", "ps", "top",
    "mkdir", "rm", "printf", "tty", "wc", "head", "tail", "grep", "sed", "hostname", "mount",
    "kill", "yes", "date", "stat", "touch",
)  # fmt: skip

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MANIFEST_TYPES: dict[Schema, str] = {"oci": OCI_MANIFEST, "docker": DOCKER_MANIFEST}
INDEX_TYPES: dict[Schema, str] = {"oci": OCI_INDEX, "docker": DOCKER_MANIFEST_LIST}
CONFIG_TYPES: dict[Schema, str] = {"oci": OCI_CONFIG, "docker": DOCKER_CONFIG}
LAYER_TYPES: dict[tuple[Schema, Compression], str] = {
    ("oci", "none"): "application/vnd.oci.image.layer.v1.tar",
    ("oci", "gzip"): "application/vnd.oci.image.layer.v1.tar+gzip",
    ("oci", "zstd"): "application/vnd.oci.image.layer.v1.tar+zstd",
    ("docker", "none"): "application/vnd.docker.image.rootfs.diff.tar",
    ("docker", "gzip"): "application/vnd.docker.image.rootfs.diff.tar.gzip",
    ("docker", "zstd"): "application/vnd.docker.image.rootfs.diff.tar.zstd",
}
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"


# --- layer entries -------------------------------------------------------------------------


@dataclass(frozen=True)
class File:
    path: str
    content: bytes = field(default=b"", repr=False)
    mode: int = 0o644
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class Dir:
    path: str
    mode: int = 0o755
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class Symlink:
    path: str
    target: str


@dataclass(frozen=True)
class Hardlink:
    """A second name for `target`, a file of the same layer (written after every other entry)."""

    path: str
    target: str


@dataclass(frozen=True)
class Whiteout:
    """Deletes `path` of the layers below; written as `dir/.wh.name`."""

    path: str


@dataclass(frozen=True)
class Opaque:
    """Hides what the layers below hold in directory `path`; written as `path/.wh..wh..opq`."""

    path: str


@dataclass(frozen=True)
class CharDevice:
    path: str
    major: int
    minor: int
    mode: int = 0o666


Entry = File | Dir | Symlink | Hardlink | Whiteout | Opaque | CharDevice


def _clean(path: str) -> str:
    name = posixpath.normpath(path.lstrip("/"))
    if name in ("", ".") or ".." in name.split("/"):
        raise ValueError(f"bad layer path {path!r}")
    return name


def _tarinfo(entry: Entry) -> tuple[tarfile.TarInfo, bytes]:
    name = _clean(entry.path)
    data = b""
    match entry:
        case Whiteout():
            name = posixpath.join(posixpath.dirname(name), ".wh." + posixpath.basename(name))
        case Opaque():
            name = posixpath.join(name, ".wh..wh..opq")
    info = tarfile.TarInfo(name)
    info.mtime = EPOCH
    info.mode = 0o644
    match entry:
        case File(content=content, mode=mode, uid=uid, gid=gid):
            data = content
            info.size, info.mode, info.uid, info.gid = len(content), mode, uid, gid
        case Dir(mode=mode, uid=uid, gid=gid):
            info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, mode, uid, gid
        case Symlink(target=target):
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
        case Hardlink(target=target):
            info.type, info.linkname = tarfile.LNKTYPE, _clean(target)
        case CharDevice(major=major, minor=minor, mode=mode):
            info.type, info.devmajor, info.devminor, info.mode = tarfile.CHRTYPE, major, minor, mode
    return info, data


def layer_tar(entries: Iterable[Entry]) -> bytes:
    """The uncompressed tar of `entries`: sorted, parents before children, hard links last."""
    members = [_tarinfo(entry) for entry in entries]
    names = [info.name for info, _ in members]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate paths in layer: {sorted(names)}")
    members.sort(key=lambda m: (m[0].type == tarfile.LNKTYPE, m[0].name.split("/")))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def zstd_available() -> bool:
    try:
        importlib.import_module("zstandard")
    except ImportError:
        return False
    return True


def compress(data: bytes, compression: Compression = "gzip") -> bytes:
    if compression == "none":
        return data
    if compression == "gzip":
        return gzip.compress(data, mtime=0)
    if not zstd_available():
        raise RuntimeError("zstd layers need the zstandard module, which is not installed")
    zstandard: Any = importlib.import_module("zstandard")
    return bytes(zstandard.ZstdCompressor().compress(data))


# --- descriptors, layers, images, indexes --------------------------------------------------


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Platform:
    architecture: str = "amd64"
    os: str = "linux"
    variant: str | None = None

    def to_json(self) -> dict[str, str]:
        out = {"architecture": self.architecture, "os": self.os}
        return out if self.variant is None else {**out, "variant": self.variant}


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, media_type: str, data: bytes, platform: Platform | None = None) -> Descriptor:
        return cls(media_type, sha256(data), len(data), platform)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.platform is not None:
            out["platform"] = self.platform.to_json()
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


@dataclass(frozen=True)
class Layer:
    descriptor: Descriptor  # of `data`, the blob as pushed
    data: bytes = field(repr=False)
    tar: bytes = field(repr=False)  # uncompressed
    diff_id: str  # sha256 of `tar`


def make_layer(
    entries: Iterable[Entry], *, schema: Schema = "oci", compression: Compression = "gzip"
) -> Layer:
    tar = layer_tar(entries)
    data = compress(tar, compression)
    return Layer(Descriptor.of(LAYER_TYPES[schema, compression], data), data, tar, sha256(tar))


@dataclass(frozen=True)
class Image:
    schema: Schema
    platform: Platform
    layers: tuple[Layer, ...]
    config: bytes = field(repr=False)
    config_descriptor: Descriptor
    manifest: bytes = field(repr=False)
    descriptor: Descriptor  # of the manifest, with its platform

    @property
    def digest(self) -> str:
        return self.descriptor.digest

    @property
    def diff_ids(self) -> list[str]:
        return [layer.diff_id for layer in self.layers]

    @property
    def blobs(self) -> dict[str, bytes]:
        """Config and layers by digest: what a registry serves under /blobs/."""
        layers = {layer.descriptor.digest: layer.data for layer in self.layers}
        return {self.config_descriptor.digest: self.config, **layers}

    @property
    def content(self) -> dict[str, bytes]:
        """Everything by digest, the manifest included: an OCI layout's blobs/."""
        return {self.digest: self.manifest, **self.blobs}

    def config_json(self) -> Any:
        return json.loads(self.config)

    def manifest_json(self) -> Any:
        return json.loads(self.manifest)


def build_image(
    layers: Sequence[Layer | Sequence[Entry]],
    *,
    schema: Schema = "oci",
    compression: Compression = "gzip",
    platform: Platform | None = None,
    config: Mapping[str, Any] | None = None,
    history: Sequence[str] | None = None,
) -> Image:
    """An image of `layers` (lowest first); `config` adds to or overrides the config's `config`.

    Entry lists become layers with `schema`'s media types and `compression`; a ready `Layer`
    is used as it is. `history` gives one `created_by` per layer.
    """
    platform = platform or Platform()
    built = tuple(
        layer
        if isinstance(layer, Layer)
        else make_layer(layer, schema=schema, compression=compression)
        for layer in layers
    )
    created_by = history or [f"layer {i}" for i in range(len(built))]
    if len(created_by) != len(built):
        raise ValueError("history needs one entry per layer")
    settings: dict[str, Any] = {"Env": [PATH_ENV], "Cmd": ["sh"], **(config or {})}
    config_json = {
        "created": CREATED,
        **platform.to_json(),
        "config": settings,
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in built]},
        "history": [{"created": CREATED, "created_by": by} for by in created_by],
    }
    config_bytes = canonical_json(config_json)
    config_descriptor = Descriptor.of(CONFIG_TYPES[schema], config_bytes)
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPES[schema],
            "config": config_descriptor.to_json(),
            "layers": [layer.descriptor.to_json() for layer in built],
        }
    )
    descriptor = Descriptor.of(MANIFEST_TYPES[schema], manifest, platform)
    return Image(schema, platform, built, config_bytes, config_descriptor, manifest, descriptor)


@dataclass(frozen=True)
class Index:
    """An OCI index or a Docker manifest list over images of (usually) different platforms."""

    schema: Schema
    images: tuple[Image, ...]
    index: bytes = field(repr=False)
    descriptor: Descriptor

    @property
    def digest(self) -> str:
        return self.descriptor.digest

    @property
    def content(self) -> dict[str, bytes]:
        out = {self.digest: self.index}
        for image in self.images:
            out.update(image.content)
        return out

    def index_json(self) -> Any:
        return json.loads(self.index)


def build_index(images: Sequence[Image], *, schema: Schema | None = None) -> Index:
    """An index of `images`, each named with its platform; schema defaults to the first one's."""
    schema = schema or images[0].schema
    index = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": INDEX_TYPES[schema],
            "manifests": [image.descriptor.to_json() for image in images],
        }
    )
    return Index(schema, tuple(images), index, Descriptor.of(INDEX_TYPES[schema], index))


# --- the test images -----------------------------------------------------------------------

PASSWD = b"""\
root:x:0:0:root:/root:/bin/sh
app:x:1000:1000:app:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""
GROUP = b"""\
root:x:0:
app:x:1000:
nobody:x:65534:
"""


def busybox_rootfs_layer() -> list[Entry]:
    """A minimal root filesystem: /bin/busybox and its common applets, users, /tmp, homes."""
    return [
        *(Dir(path) for path in ("bin", "etc", "home", "dev", "proc", "sys")),
        Dir("root", 0o700),
        Dir("tmp", 0o1777),
        Dir("home/app", 0o755, 1000, 1000),
        File("bin/busybox", BUSYBOX.read_bytes(), 0o755),
        *(Symlink(f"bin/{applet}", "busybox") for applet in APPLETS),
        File("etc/passwd", PASSWD),
        File("etc/group", GROUP),
        File("etc/motd", MOTD),
    ]


@functools.cache
def busybox_layer(schema: Schema = "oci", compression: Compression = "gzip") -> Layer:
    """The busybox rootfs as a layer, built once per (schema, compression): it is 2 MB."""
    return make_layer(busybox_rootfs_layer(), schema=schema, compression=compression)


def busybox_image(
    *, schema: Schema = "oci", compression: Compression = "gzip", platform: Platform | None = None
) -> Image:
    return build_image(
        [busybox_layer(schema, compression)],
        schema=schema,
        compression=compression,
        platform=platform,
        history=["busybox rootfs"],
    )


def busybox2_image(*, schema: Schema = "oci", compression: Compression = "gzip") -> Image:
    """busybox, then a layer that adds /etc/extra and deletes /etc/motd with a whiteout."""
    second: list[Entry] = [Dir("etc"), File("etc/extra", EXTRA), Whiteout("etc/motd")]
    return build_image(
        [busybox_layer(schema, compression), second],
        schema=schema,
        compression=compression,
        history=["busybox rootfs", "add /etc/extra, delete /etc/motd"],
    )


def many_layers(n: int, *, schema: Schema = "oci", compression: Compression = "gzip") -> Image:
    """n layers in all: busybox, then n-1 layers each adding /layers/NNNN holding "NNNN\\n"."""
    if n < 1:
        raise ValueError("an image needs at least one layer")
    small: list[Sequence[Entry]] = [
        [Dir("layers"), File(f"layers/{i:04d}", f"{i:04d}\n".encode())] for i in range(1, n)
    ]
    return build_image(
        [busybox_layer(schema, compression), *small],
        schema=schema,
        compression=compression,
        history=["busybox rootfs", *(f"add /layers/{i:04d}" for i in range(1, n))],
    )


# --- archives that `ctr images import` reads -----------------------------------------------


def _ref_annotations(ref_name: str) -> dict[str, str]:
    """As `ctr export` writes them: a full name in containerd's key, its tag in OCI's."""
    if not any(c in ref_name for c in "/:@"):
        return {ANNOTATION_REF_NAME: ref_name}
    tail = ref_name.rsplit("/", 1)[-1]
    obj = tail.partition("@")[2] if "@" in tail else tail.partition(":")[2]
    return {ANNOTATION_IMAGE_NAME: ref_name, **({ANNOTATION_REF_NAME: obj} if obj else {})}


def oci_layout_files(target: Image | Index, ref_name: str) -> dict[str, bytes]:
    """The files of an OCI image layout holding `target` under `ref_name`, by relative path."""
    top = Descriptor(
        target.descriptor.media_type,
        target.digest,
        target.descriptor.size,
        annotations=_ref_annotations(ref_name),
    )
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [top.to_json()]}
    files = {"oci-layout": canonical_json({"imageLayoutVersion": "1.0.0"})}
    files["index.json"] = canonical_json(index)
    for digest, data in target.content.items():
        files["blobs/" + digest.replace(":", "/")] = data
    return files


def docker_archive_files(image: Image, repo_tag: str) -> dict[str, bytes]:
    """The files `docker save` writes for `image` tagged `repo_tag` (uncompressed layer tars)."""
    config_name = image.config_descriptor.digest.removeprefix("sha256:") + ".json"
    layer_names = [f"{layer.diff_id.removeprefix('sha256:')}/layer.tar" for layer in image.layers]
    files = {config_name: image.config}
    files.update({name: layer.tar for name, layer in zip(layer_names, image.layers, strict=True)})
    manifest = [{"Config": config_name, "RepoTags": [repo_tag], "Layers": layer_names}]
    files["manifest.json"] = canonical_json(manifest)
    return files


def archive_tar(files: Mapping[str, bytes]) -> bytes:
    """A deterministic tar of `files`, with an entry for every directory they sit in."""
    dirs = {posixpath.dirname(name) for name in files} - {""}
    for name in list(dirs):
        while (name := posixpath.dirname(name)) != "":
            dirs.add(name)
    entries: list[Entry] = [Dir(name) for name in dirs]
    entries += [File(name, data) for name, data in files.items()]
    return layer_tar(entries)


def _write_tree(files: Mapping[str, bytes], directory: Path) -> Path:
    for name, data in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return directory


def write_oci_layout(target: Image | Index, directory: Path, ref_name: str) -> Path:
    return _write_tree(oci_layout_files(target, ref_name), directory)


def oci_archive(target: Image | Index, path: Path, ref_name: str) -> Path:
    """A tar of the OCI layout, as `ctr images import` (and `ctr images export`) know it."""
    path.write_bytes(archive_tar(oci_layout_files(target, ref_name)))
    return path


def docker_archive(image: Image, path: Path, repo_tag: str) -> Path:
    path.write_bytes(archive_tar(docker_archive_files(image, repo_tag)))
    return path


def docker_archive_of(tagged: Mapping[str, Image], path: Path) -> Path:
    """One `docker save` archive holding every image of `tagged` (repo:tag -> image), as
    `docker save a b` writes it: the blobs of all, one manifest.json entry each."""
    files: dict[str, bytes] = {}
    manifest: list[Any] = []
    for repo_tag, image in tagged.items():
        one = docker_archive_files(image, repo_tag)
        manifest += json.loads(one.pop("manifest.json"))
        files.update(one)
    files["manifest.json"] = canonical_json(manifest)
    path.write_bytes(archive_tar(files))
    return path
