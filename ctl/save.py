"""`ctrctl save`: images into one archive that is an OCI layout and a `docker save` archive.

The layout is Docker 25+'s: `blobs/sha256/<hex>` for every blob of the images (each once),
then `index.json` (an entry per image name, annotated with `io.containerd.image.name` and
`org.opencontainers.image.ref.name` as `ctr images export` writes them), `manifest.json`
(docker's `Config`/`RepoTags`/`Layers`, pointing into blobs/, for this machine's platform)
and `oci-layout`. So `ctrctl load`, `ctr images import` and `docker load` all take it.

Blobs are streamed from the Content Read API into the tar and checked against their digest on
the way. Entries carry mtime 0 and no owner names, so saving the same images twice gives the
same bytes. With -o, the archive is written beside FILE and renamed into place when whole.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import grpc

from ctl.client import Client
from supervisor.api.containerd.services.content.v1 import content_pb2 as contentpb
from supervisor.api.containerd.services.images.v1 import images_pb2 as ipb
from supervisor.distribution import manifest as mf
from supervisor.distribution import platforms, reference
from supervisor.errors import CtrdError, NotFound

ANNOTATION_IMAGE_NAME = "io.containerd.image.name"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'
BUFFER = 1 << 20


class SaveError(Exception):
    """What keeps the archive from being written; the message says why, in one line."""


@dataclass
class Contents:
    """What goes into the archive: blobs by digest (in order), the docker entries."""

    blobs: dict[str, int]
    index: list[dict[str, Any]]
    docker: dict[str, dict[str, Any]]  # by manifest digest


class _BlobReader(io.RawIOBase):
    """A blob from the Content Read stream, as a file; checked when read to the end."""

    def __init__(self, chunks: Iterator[bytes], digest: str) -> None:
        self._chunks = chunks
        self._pending = b""
        self._digest = digest
        self._hasher = hashlib.new(digest.partition(":")[0])

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._pending:
            self._pending = next(self._chunks, b"")
            self._hasher.update(self._pending)
            actual = f"{self._hasher.name}:{self._hasher.hexdigest()}"
            if not self._pending and actual != self._digest:
                raise SaveError(f"blob {self._digest} in ctrd's store does not match its digest")
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


class Saver:
    def __init__(self, client: Client) -> None:
        self.client = client

    def info_size(self, digest: str) -> int | None:
        try:
            request = contentpb.InfoRequest(digest=digest)
            return int(self.client.content.Info(request, metadata=self.client.md).info.size)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    def collect(self, images: list[ipb.Image]) -> Contents:
        contents = Contents({}, [], {})
        for image in images:
            target = image.target
            descriptor = mf.Descriptor(target.media_type, target.digest, target.size)
            chosen = self._walk(descriptor, contents, f'image "{image.name}"')
            annotations: dict[str, str] = {}
            tag = ""
            parsed = _reference(image.name)
            if parsed is not None:  # else an image ID (`ctrctl load` of an unnamed image)
                annotations[ANNOTATION_IMAGE_NAME] = image.name
                if parsed.tag:
                    annotations[ANNOTATION_REF_NAME] = parsed.tag
                    tag = reference.Reference(parsed.domain, parsed.path, parsed.tag).familiar()
            entry = descriptor.to_json()
            if annotations:
                entry["annotations"] = annotations
            contents.index.append(entry)
            if chosen.digest not in contents.docker:
                contents.docker[chosen.digest] = self._docker_entry(chosen)
            tags = contents.docker[chosen.digest]["RepoTags"]
            if tag and tag not in tags:
                tags.append(tag)
        return contents

    def _walk(self, descriptor: mf.Descriptor, contents: Contents, where: str) -> mf.Descriptor:
        """Add the descriptor's tree; the manifest for this machine, for docker's part."""
        data = self.client.read(descriptor.digest)
        contents.blobs[descriptor.digest] = len(data)
        if mf.is_index(descriptor.media_type):
            present = [
                child
                for child in mf.parse_index(data, descriptor.media_type, where)
                if self.info_size(child.digest) is not None
            ]  # an index names every platform's manifest; ctrd holds those it pulled
            if not present:
                raise SaveError(f"{where}: none of its manifests is in ctrd's store")
            manifests = [self._walk(child, contents, where) for child in present]
            try:
                return mf.select(manifests, platforms.default(), where)
            except NotFound:
                return manifests[0]
        if not mf.is_manifest(descriptor.media_type):
            raise SaveError(f'{where}: unsupported media type "{descriptor.media_type}"')
        parsed = mf.parse_manifest(data, descriptor.media_type, where)
        for blob in (parsed.config, *parsed.layers):
            size = self.info_size(blob.digest)
            if size is None:
                raise SaveError(f"{where}: blob {blob.digest} is not in ctrd's store")
            contents.blobs[blob.digest] = size
        return descriptor

    def _docker_entry(self, manifest: mf.Descriptor) -> dict[str, Any]:
        parsed = mf.parse_manifest(self.client.read(manifest.digest), manifest.media_type)
        return {
            "Config": _blob_path(parsed.config.digest),
            "RepoTags": [],
            "Layers": [_blob_path(layer.digest) for layer in parsed.layers],
        }

    def write(self, contents: Contents, out: IO[bytes]) -> None:
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for directory in ("blobs", "blobs/sha256"):
                tar.addfile(_info(directory, 0, tarfile.DIRTYPE))
            for digest, size in contents.blobs.items():
                request = contentpb.ReadContentRequest(digest=digest)
                responses = self.client.content.Read(request, metadata=self.client.md)
                reader = io.BufferedReader(_BlobReader((r.data for r in responses), digest), BUFFER)
                tar.addfile(_info(_blob_path(digest), size), reader)
                reader.read(1)  # the end of the stream, where the digest is checked
            index = {"schemaVersion": 2, "mediaType": mf.OCI_INDEX, "manifests": contents.index}
            for name, data in (
                ("index.json", _compact(index)),
                ("manifest.json", _compact(list(contents.docker.values()))),
                ("oci-layout", LAYOUT),
            ):
                tar.addfile(_info(name, len(data)), io.BytesIO(data))


def _reference(name: str) -> reference.Reference | None:
    """The name as a reference; None for an image ID (`sha256:<hex>`), which names none."""
    algorithm, _, encoded = name.partition(":")
    if algorithm == "sha256" and len(encoded) == 64:
        return None
    try:
        return reference.parse(name)
    except ValueError:
        return None


def _blob_path(digest: str) -> str:
    algorithm, _, encoded = digest.partition(":")
    return f"blobs/{algorithm}/{encoded}"


def _info(name: str, size: int, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mtime = kind, size, 0
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def run(client: Client, args: argparse.Namespace) -> int:
    if not args.output and sys.stdout.isatty():
        raise SaveError("cowardly refusing to save to a terminal: use -o FILE or redirect stdout")
    saver = Saver(client)
    try:
        contents = saver.collect([client.image(name) for name in args.images])
    except CtrdError as e:  # the manifest parsers'
        raise SaveError(e.detail) from None
    if not args.output:
        saver.write(contents, sys.stdout.buffer)
        sys.stdout.buffer.flush()
        return 0
    partial = f"{args.output}.partial-{os.getpid()}"
    try:
        with open(partial, "wb") as out:
            saver.write(contents, out)
        os.replace(partial, args.output)
    except OSError as e:
        raise SaveError(f"write {args.output}: {e.strerror}") from None
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return 0
