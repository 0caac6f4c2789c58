"""containerd.services.diff.v1.Diff: apply layers into snapshots, and make layers from them.

Apply reads the layer from this namespace's content (it must be visible here), verifies it
against the descriptor's digest and extracts it into the target the mounts name, without
mounting anything (see `supervisor.diff.apply`). Targets are confined to the snapshotters'
own directories: a request naming any other directory is refused, so no client can make the
daemon unpack over the host.

Diff mounts both sides read-only under `<root>/tmpmounts`, walks them (`supervisor.diff.walk`),
compresses the tar as asked (gzip by default, or none) and commits it to the content store
labelled `containerd.io/uncompressed=<diffID>`, as containerd's walking differ does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import tempfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from snapshotter.mount import temp_mount
from snapshotter.protocol import Mount
from supervisor.api.containerd.services.diff.v1 import diff_pb2 as pb
from supervisor.api.containerd.services.diff.v1 import diff_pb2_grpc as pb_grpc
from supervisor.api.containerd.types import descriptor_pb2
from supervisor.content.local import LocalStore
from supervisor.content.protocol import Info
from supervisor.errors import AlreadyExists, InvalidArgument, Unimplemented
from supervisor.metadata.content import ContentStore
from supervisor.services import rpc
from supervisor.services.snapshots import mount_from_pb

Context = grpc.aio.ServicerContext[Any, Any]
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
_GZIP_TYPES = {LAYER_GZIP, "application/vnd.docker.image.rootfs.diff.tar.gzip"}
_TAR_TYPES = {LAYER_TAR, "application/vnd.docker.image.rootfs.diff.tar"}
CHUNK = 1 << 20


def _read_only(mounts: Sequence[Mount]) -> list[Mount]:
    """The same mounts, made read-only: a diff must not change what it compares."""
    out = []
    for m in mounts:
        options = tuple(o for o in m.options if o != "rw")
        if m.type == "overlay":
            # Without upperdir/workdir an overlay is read-only and leaves no work dir behind.
            values = [o for o in options if not o.startswith(("upperdir=", "workdir="))]
            upper = [o[len("upperdir=") :] for o in options if o.startswith("upperdir=")]
            lower = [o for o in values if o.startswith("lowerdir=")]
            if upper and lower:
                values = [o for o in values if not o.startswith("lowerdir=")]
                values.append(f"lowerdir={upper[0]}:{lower[0][len('lowerdir=') :]}")
            options = tuple(values)
        elif "ro" not in options:
            options = (*options, "ro")
        out.append(Mount(m.type, m.source, options, m.target))
    return out


def _compress(tar: Path, media_type: str, out: Path) -> None:
    if media_type in _TAR_TYPES:
        os.link(tar, out)
        return
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)  # 31: a gzip wrapper
    with open(tar, "rb") as src, open(out, "wb") as dst:
        while chunk := src.read(CHUNK):
            dst.write(compressor.compress(chunk))
        dst.write(compressor.flush())


class DiffService(pb_grpc.DiffServicer):
    def __init__(
        self,
        content: Callable[[str, str | None], ContentStore],
        blobs: LocalStore,
        snapshot_roots: Sequence[Path],
        scratch: Path,
    ) -> None:
        self._content = content
        self._blobs = blobs
        self._roots = [root.resolve() for root in snapshot_roots]
        self._scratch = scratch
        scratch.mkdir(parents=True, exist_ok=True)

    def _confine(self, path: Path) -> None:
        resolved = path.resolve()
        if not any(resolved.is_relative_to(root) for root in self._roots):
            raise InvalidArgument(f'apply: "{path}" is not a snapshot of this daemon')

    async def Apply(self, request: pb.ApplyRequest, context: Context) -> Any:
        store = self._content(rpc.namespace(context), rpc.lease(context))
        digest = request.diff.digest
        await store.info(digest)
        from supervisor.diff.apply import Directory, OverlayUpper, apply_layer, target_from_mounts

        target = target_from_mounts([mount_from_pb(m) for m in request.mounts])
        if isinstance(target, Directory):
            self._confine(target.path)
        elif isinstance(target, OverlayUpper):
            for path in (target.upper, *target.lowers):
                self._confine(path)
        applied = await asyncio.to_thread(
            apply_layer, self._blobs.blob_path(digest), request.diff.media_type, target, digest
        )
        return pb.ApplyResponse(
            applied=descriptor_pb2.Descriptor(
                media_type=LAYER_TAR, digest=applied.diff_id, size=applied.size
            )
        )

    async def Diff(self, request: pb.DiffRequest, context: Context) -> Any:
        store = self._content(rpc.namespace(context), rpc.lease(context))
        media_type = request.media_type or LAYER_GZIP
        if media_type not in _GZIP_TYPES | _TAR_TYPES:
            raise Unimplemented(f'diff: media type "{media_type}" (tar or tar+gzip)')
        left = _read_only([mount_from_pb(m) for m in request.left])
        right = _read_only([mount_from_pb(m) for m in request.right])
        work = Path(tempfile.mkdtemp(prefix="diff-", dir=self._scratch))
        try:
            written = await asyncio.to_thread(self._write_diff, left, right, work)
            await asyncio.to_thread(_compress, work / "layer.tar", media_type, work / "blob")
            labels = {**request.labels, "containerd.io/uncompressed": written}
            ref = request.ref or f"diff-{secrets.token_hex(8)}"
            digest, size = await self._commit(store, ref, work / "blob", labels)
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)
        return pb.DiffResponse(
            diff=descriptor_pb2.Descriptor(media_type=media_type, digest=digest, size=size)
        )

    def _write_diff(self, left: list[Mount], right: list[Mount], work: Path) -> str:
        from supervisor.diff.walk import diff_directories

        with (
            temp_mount(left, self._scratch) as lower,
            temp_mount(right, self._scratch) as upper,
            open(work / "layer.tar", "wb") as out,
        ):
            return diff_directories(lower, upper, out).diff_id

    async def _commit(
        self, store: ContentStore, ref: str, blob: Path, labels: dict[str, str]
    ) -> tuple[str, int]:
        f = await asyncio.to_thread(open, blob, "rb")
        with f:
            size = os.fstat(f.fileno()).st_size
            writer = await store.writer(ref, size)
            try:
                while chunk := await asyncio.to_thread(f.read, CHUNK):
                    await writer.write(chunk)
                with contextlib.suppress(AlreadyExists):
                    return await writer.commit(size, "", labels), size
                digest = await writer.digest()  # the same bytes exist: label them all the same
                await store.update(
                    Info(digest, size, 0, 0, labels), [f"labels.{key}" for key in labels]
                )
                return digest, size
            finally:
                await writer.close()
