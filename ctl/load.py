"""`ctrctl load`: the images of an archive into ctrd's content store, unpacked, then named.

The archive (plain tar, or compressed: tarfile detects it) is read once, as a stream: every
regular file except the small metadata ones (`index.json`, `oci-layout`, `manifest.json`,
`repositories`) goes into the content store through Content.Write while it is read, hashed on
the way, so no layer is ever held whole. A file named `blobs/<alg>/<hex>` is checked against its
name, and not sent at all when the store has it already. The legacy `<id>/json` and `VERSION`
files of old `docker save` archives are skipped.

Then the metadata says what the images are:
- with `oci-layout` or `index.json`, an OCI image layout: each entry of index.json is an image,
  named by its `io.containerd.image.name` annotation, else `org.opencontainers.image.ref.name`
  (taken as a name: `busybox` -> docker.io/library/busybox:latest);
- with only `manifest.json`, a `docker save` archive: each entry becomes a Docker schema 2
  manifest over its config and layer files, byte for byte what containerd's importer makes
  (so `ctr images import` of the same archive gives the same digest), named by its RepoTags.
An image without a name is named after its image ID, `sha256:<config digest>`.

Invariants: everything happens under one lease (expiring in a day, as ctr's), so a collection
meanwhile keeps what is written; manifests and indexes get containerd's gc.ref.content labels
and configs the overlayfs snapshot label, so once an image names them the collector keeps the
whole tree. Images are created only after every image of the archive is unpacked: an archive
that fails anywhere leaves no image behind.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import json
import posixpath
import secrets
import sys
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import grpc
from google.protobuf import field_mask_pb2

from ctl.client import Client
from supervisor import digests
from supervisor.api.containerd.services.content.v1 import content_pb2 as contentpb
from supervisor.api.containerd.services.images.v1 import images_pb2 as ipb
from supervisor.api.containerd.services.leases.v1 import leases_pb2 as lpb
from supervisor.api.containerd.types import descriptor_pb2
from supervisor.distribution import manifest as mf
from supervisor.distribution import platforms, reference
from supervisor.errors import CtrdError

CHUNK = 1 << 20  # what ctr writes per message
JSON_LIMIT = 20 << 20  # containerd's limit for a metadata file of an archive
METADATA = frozenset({"index.json", "oci-layout", "manifest.json", "repositories"})
LAYOUT_VERSION = "1.0.0"
LEASE_TTL = dt.timedelta(hours=24)
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
CONTENT_REF = "containerd.io/gc.ref.content"
SNAPSHOT_REF = "containerd.io/gc.ref.snapshot.overlayfs"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
MAGIC = {b"\x1f\x8b": ".gzip", b"\x28\xb5\x2f\xfd": ".zstd"}


class ArchiveError(Exception):
    """The archive is not one ctrctl can load; the message says why, in one line."""


@dataclass(frozen=True)
class Blob:
    """A file of the archive, now in the content store."""

    digest: str
    size: int


@dataclass
class Archive:
    metadata: dict[str, bytes] = field(default_factory=dict)
    files: dict[str, Blob] = field(default_factory=dict)  # by clean path
    links: dict[str, str] = field(default_factory=dict)  # path -> the path it stands for

    def file(self, name: object, what: str) -> Blob:
        if not isinstance(name, str):
            raise ArchiveError(f"manifest.json: {what} must be a file name")
        path = clean(name)
        for _ in range(8):  # links to links, but no loops
            if path not in self.links:
                break
            path = self.links[path]
        if path not in self.files:
            raise ArchiveError(f'manifest.json: {what} "{name}" is not in the archive')
        return self.files[path]


@dataclass(frozen=True)
class Plan:
    """One image to create: its names, its target, and what to unpack."""

    names: tuple[str, ...]
    target: mf.Descriptor
    manifest: dict[str, Any]
    config: dict[str, Any]
    image_id: str  # the config's digest, docker's image ID


def clean(name: str) -> str:
    """A member's path as the metadata names it: `./blobs/x` and `/blobs/x` are `blobs/x`."""
    return posixpath.normpath("/" + name).lstrip("/")


def skipped(path: str) -> bool:
    """Legacy `docker save` entries that nothing reads any more."""
    return path == "VERSION" or posixpath.basename(path) in ("json", "VERSION")


def image_name(name: str) -> str:
    try:
        return str(reference.parse(name))
    except ValueError as e:
        raise ArchiveError(f'image name "{name}" in the archive: {e}') from None


def familiar(name: str) -> str:
    try:
        return reference.parse(name).familiar()
    except ValueError:
        return name


# --- the stream --------------------------------------------------------------------------


@dataclass
class _Written:
    digest: str = ""
    error: BaseException | None = None


class Loader:
    """One load: the lease, the writes, the labels, the images."""

    def __init__(self, client: Client, matcher: platforms.Matcher) -> None:
        self.client = client
        self.matcher = matcher
        self.lease = f"ctrctl-load-{secrets.token_hex(8)}"
        self.md = (*client.md, ("containerd-lease", self.lease))
        self.token = secrets.token_hex(4)

    def __enter__(self) -> Loader:
        expires = dt.datetime.now(dt.UTC) + LEASE_TTL
        labels = {"containerd.io/gc.expire": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}
        self.client.leases.Create(
            lpb.CreateRequest(id=self.lease, labels=labels), metadata=self.client.md
        )
        return self

    def __exit__(self, *_: object) -> None:
        self.client.leases.Delete(lpb.DeleteRequest(id=self.lease), metadata=self.client.md)

    def read_archive(self, stream: IO[bytes], source: str) -> Archive:
        archive = Archive()
        try:
            with tarfile.open(fileobj=stream, mode="r|*") as tar:
                for member in tar:
                    self._member(tar, member, archive)
        except (tarfile.TarError, EOFError, zlib.error) as e:
            hint = " (is it truncated?)" if "end of data" in str(e) else ""
            raise ArchiveError(f"{source}: not a valid image archive: {e}{hint}") from None
        return archive

    def _member(self, tar: tarfile.TarFile, member: tarfile.TarInfo, archive: Archive) -> None:
        path = clean(member.name)
        if member.issym():
            archive.links[path] = clean(posixpath.join(posixpath.dirname(path), member.linkname))
        elif member.islnk():
            archive.links[path] = clean(member.linkname)
        if not member.isreg() or skipped(path):
            return
        data = tar.extractfile(member)
        assert data is not None  # a regular file
        if path in METADATA:
            if member.size > JSON_LIMIT:
                raise ArchiveError(f"{path} is larger than {JSON_LIMIT} bytes")
            archive.metadata[path] = data.read()
            if len(archive.metadata[path]) != member.size:
                raise tarfile.ReadError("unexpected end of data")
            return
        named = _blob_digest(path)
        if named and self._have(named):
            archive.files[path] = Blob(named, member.size)
            return
        archive.files[path] = self.write(path, data, member.size, named)

    def _have(self, digest: str) -> bool:
        """Whether the store has the blob; held by the lease from now on if so."""
        resource = lpb.Resource(id=digest, type="content")
        self.client.leases.AddResource(
            lpb.AddResourceRequest(id=self.lease, resource=resource), metadata=self.client.md
        )
        try:
            self.client.content.Info(contentpb.InfoRequest(digest=digest), metadata=self.md)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise
        return True

    def write(self, path: str, data: IO[bytes], size: int, expected: str = "") -> Blob:
        """Stream `size` bytes into the store; the blob, checked against `expected` if given."""
        ref = f"load-{self.token}-{path}"
        written = _Written()
        requests = _write_requests(path, ref, data, size, expected, written)
        try:
            for _ in self.client.content.Write(requests, metadata=self.md):
                pass
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.ALREADY_EXISTS:
                self._abort(ref)
                raise
            self._have(written.digest)  # the store's copy, held by the lease as a new one is
        if written.error is not None:
            self._abort(ref)
            raise written.error
        return Blob(written.digest, size)

    def _abort(self, ref: str) -> None:
        try:
            self.client.content.Abort(contentpb.AbortRequest(ref=ref), metadata=self.md)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:
                raise

    # -- what the archive holds -----------------------------------------------------------

    def read_blob(self, digest: str, where: str) -> bytes:
        try:
            info = self.client.content.Info(
                contentpb.InfoRequest(digest=digest), metadata=self.md
            ).info
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                raise ArchiveError(f"{where}: blob {digest} is not in the archive") from None
            raise
        if info.size > JSON_LIMIT:
            raise ArchiveError(f"{where}: blob {digest} is too large for a manifest or config")
        request = contentpb.ReadContentRequest(digest=digest)
        return b"".join(r.data for r in self.client.content.Read(request, metadata=self.md))

    def require(self, digest: str, where: str) -> None:
        if not self._have(digest):
            raise ArchiveError(f"{where}: blob {digest} is not in the archive")

    def label(self, digest: str, labels: dict[str, str]) -> None:
        if not labels:
            return
        info = contentpb.Info(digest=digest, labels=labels)
        mask = field_mask_pb2.FieldMask(paths=[f"labels.{key}" for key in labels])
        self.client.content.Update(
            contentpb.UpdateRequest(info=info, update_mask=mask), metadata=self.md
        )

    def oci_plans(self, archive: Archive) -> list[Plan]:
        layout = archive.metadata.get("oci-layout")
        if layout is not None:
            version = _json(layout, "oci-layout").get("imageLayoutVersion")
            if version != LAYOUT_VERSION:
                raise ArchiveError(f"oci-layout: unsupported layout version {version!r}")
        if "index.json" not in archive.metadata:
            raise ArchiveError("an OCI layout without index.json")
        data = archive.metadata["index.json"]
        media_type = _json(data, "index.json").get("mediaType") or mf.OCI_INDEX
        entries = mf.parse_index(data, media_type, "index.json")
        plans = []
        for i, entry in enumerate(entries):
            where = f"index.json entry {i}"
            manifest, config = self._resolve(entry, where)
            name = entry.annotations.get(ANNOTATION_IMAGE_NAME) or entry.annotations.get(
                ANNOTATION_REF_NAME, ""
            )
            names = (image_name(name),) if name else ()
            plans.append(Plan(names, entry, manifest, config, manifest["config"]["digest"]))
        return plans

    def _resolve(self, entry: mf.Descriptor, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The manifest for the platform (through nested indexes) and its config, checked."""
        data = self.read_blob(entry.digest, where)
        if mf.is_index(entry.media_type):
            children = mf.parse_index(data, entry.media_type, where)
            self.label(
                entry.digest,
                {f"{CONTENT_REF}.m.{i}": child.digest for i, child in enumerate(children)},
            )
            chosen = mf.select(children, self.matcher, where)
            return self._resolve(chosen, f"{where} ({chosen.platform or chosen.digest})")
        if not mf.is_manifest(entry.media_type):
            raise ArchiveError(f'{where}: unsupported media type "{entry.media_type}"')
        parsed = mf.parse_manifest(data, entry.media_type, where)
        labels = {f"{CONTENT_REF}.config": parsed.config.digest}
        labels.update({f"{CONTENT_REF}.l.{i}": d.digest for i, d in enumerate(parsed.layers)})
        self.label(entry.digest, labels)
        config = _json(self.read_blob(parsed.config.digest, f"{where} config"), f"{where} config")
        for i, layer in enumerate(parsed.layers):
            self.require(layer.digest, f"{where} layer {i}")
        _check_diff_ids(config, len(parsed.layers), where)
        return _json(data, where), config

    def docker_plans(self, archive: Archive) -> list[Plan]:
        try:
            entries = json.loads(archive.metadata["manifest.json"])
        except (ValueError, UnicodeDecodeError) as e:
            raise ArchiveError(f"manifest.json: not JSON: {e}") from None
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ArchiveError("manifest.json: not a list of images")
        plans = []
        for i, entry in enumerate(entries):
            where = f"manifest.json entry {i}"
            config_blob = archive.file(entry.get("Config"), "Config")
            config = _json(self.read_blob(config_blob.digest, where), f"{where} config")
            layer_names = entry.get("Layers")
            if not isinstance(layer_names, list):
                raise ArchiveError(f"{where}: Layers must be a list")
            layers = [archive.file(name, "layer") for name in layer_names]
            _check_diff_ids(config, len(layers), where)
            descriptors = []
            for j, (layer, diff_id) in enumerate(
                zip(layers, config["rootfs"]["diff_ids"], strict=True)
            ):
                media_type = DOCKER_LAYER + self._compression(layer.digest)
                if media_type == DOCKER_LAYER and layer.digest != diff_id:
                    raise ArchiveError(f"{where} layer {j}: its digest is not the config's diff_id")
                descriptors.append(_descriptor(media_type, layer))
            manifest = {
                "schemaVersion": 2,
                "mediaType": mf.DOCKER_MANIFEST,
                "config": _descriptor(mf.DOCKER_CONFIG, config_blob),
                "layers": descriptors,
            }
            # containerd's json.Marshal: this key order, no spaces.
            data = json.dumps(manifest, separators=(",", ":")).encode()
            blob = self.write(f"manifest-{i}", io.BytesIO(data), len(data))
            labels = {f"{CONTENT_REF}.config": config_blob.digest}
            labels.update({f"{CONTENT_REF}.l.{j}": d.digest for j, d in enumerate(layers)})
            self.label(blob.digest, labels)
            tags = entry.get("RepoTags") or []
            if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                raise ArchiveError(f"{where}: RepoTags must be a list of names")
            target = mf.Descriptor(mf.DOCKER_MANIFEST, blob.digest, blob.size)
            names = tuple(image_name(tag) for tag in tags)
            plans.append(Plan(names, target, manifest, config, config_blob.digest))
        return plans

    def _compression(self, digest: str) -> str:
        request = contentpb.ReadContentRequest(digest=digest, size=4)
        head = b"".join(r.data for r in self.client.content.Read(request, metadata=self.md))
        return next((kind for magic, kind in MAGIC.items() if head.startswith(magic)), "")

    # -- unpacking and naming ---------------------------------------------------------------

    def unpack(self, plan: Plan) -> None:
        diff_ids = plan.config["rootfs"]["diff_ids"]
        if diff_ids:
            # Named before the snapshots exist, so they are kept from the moment they do.
            self.label(plan.image_id, {SNAPSHOT_REF: digests.chain_ids(diff_ids)[-1]})
        self.client.unpack(plan.manifest, plan.config)

    def create(self, name: str, target: mf.Descriptor) -> None:
        image = ipb.Image(
            name=name,
            target=descriptor_pb2.Descriptor(
                media_type=target.media_type,
                digest=target.digest,
                size=target.size,
                annotations=dict(target.annotations),
            ),
        )
        try:
            self.client.images.Update(
                ipb.UpdateImageRequest(
                    image=image, update_mask=field_mask_pb2.FieldMask(paths=["target"])
                ),
                metadata=self.md,
            )
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:
                raise
            self.client.images.Create(ipb.CreateImageRequest(image=image), metadata=self.md)


def _write_requests(
    path: str, ref: str, data: IO[bytes], size: int, expected: str, written: _Written
) -> Iterator[contentpb.WriteContentRequest]:
    """The Write session as ctr sends it; runs on gRPC's thread, so errors are kept, not raised.

    Ending without a COMMIT leaves the ingest uncommitted; the caller sees `written.error`.
    """
    try:
        algorithm = digests.parse(expected)[0] if expected else "sha256"
        hasher = hashlib.new(algorithm)
        yield contentpb.WriteContentRequest(action=contentpb.STAT, ref=ref, total=size)
        offset = 0
        while offset < size:
            chunk = data.read(min(CHUNK, size - offset))
            if not chunk:
                raise tarfile.ReadError("unexpected end of data")
            hasher.update(chunk)
            yield contentpb.WriteContentRequest(action=contentpb.WRITE, offset=offset, data=chunk)
            offset += len(chunk)
        digest = f"{algorithm}:{hasher.hexdigest()}"
        if expected and digest != expected:
            raise ArchiveError(f"{path}: the file has digest {digest}, not the one its name says")
        written.digest = digest
        yield contentpb.WriteContentRequest(
            action=contentpb.COMMIT, offset=size, total=size, expected=digest
        )
    except Exception as e:
        written.error = e


def _blob_digest(path: str) -> str:
    """`blobs/sha256/<hex>` names its digest; "" for any other path."""
    parts = path.split("/")
    if len(parts) != 3 or parts[0] != "blobs":
        return ""
    try:
        return digests.validate(f"{parts[1]}:{parts[2]}")
    except CtrdError:
        return ""


def _json(data: bytes, where: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ArchiveError(f"{where}: not JSON: {e}") from None
    if not isinstance(value, dict):
        raise ArchiveError(f"{where}: not a JSON object")
    return value


def _check_diff_ids(config: dict[str, Any], layers: int, where: str) -> None:
    rootfs = config.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise ArchiveError(f"{where}: the config has no rootfs.diff_ids")
    if len(diff_ids) != layers:
        raise ArchiveError(f"{where}: {layers} layers but {len(diff_ids)} diff_ids in the config")


def _descriptor(media_type: str, blob: Blob) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": blob.digest, "size": blob.size}


# --- the command --------------------------------------------------------------------------


def _open(args: argparse.Namespace) -> tuple[IO[bytes], str]:
    if args.input:
        try:
            return open(args.input, "rb"), args.input  # closed by run()
        except OSError as e:
            raise ArchiveError(f"open {args.input}: {e.strerror}") from None
    if sys.stdin.isatty():
        raise ArchiveError("requested load from stdin, but stdin is a terminal: use -i FILE")
    return sys.stdin.buffer, "stdin"


def run(client: Client, args: argparse.Namespace) -> int:
    try:
        wanted = platforms.parse(args.platform) if args.platform else platforms.host()
    except CtrdError as e:
        raise ArchiveError(e.detail) from None
    stream, source = _open(args)
    loader = Loader(client, platforms.only(wanted))
    try:
        with loader:
            archive = loader.read_archive(stream, source)
            try:
                if {"oci-layout", "index.json"} & archive.metadata.keys():
                    plans = loader.oci_plans(archive)
                elif "manifest.json" in archive.metadata:
                    plans = loader.docker_plans(archive)
                else:
                    raise ArchiveError(
                        f"{source}: neither an OCI image layout (index.json) nor a docker save"
                        " archive (manifest.json)"
                    )
            except CtrdError as e:  # the parsers' errors
                raise ArchiveError(e.detail) from None
            unpacked: set[str] = set()
            for plan in plans:
                if plan.target.digest not in unpacked:
                    loader.unpack(plan)
                    unpacked.add(plan.target.digest)
            for plan in plans:
                for name in plan.names or (plan.image_id,):
                    loader.create(name, plan.target)
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    for plan in plans:
        for name in plan.names:
            print(f"Loaded image: {familiar(name)}")
        if not plan.names:
            print(f"Loaded image ID: {plan.image_id}")
    return 0
