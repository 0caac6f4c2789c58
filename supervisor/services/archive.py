"""ctrd.services.archive.v1: docker's archive API (`ctrctl cp`) over `supervisor.archive`.

Each call finds the container (NotFound, docker's 404 words), decides what its root is made of
(`_layout`: a task with a mounted bundle rootfs uses it and the spec it was started with;
otherwise the container's snapshot, spec and volumes), mounts that view for the call on a
worker thread (`view.mounted`), and translates: a missing path is NotFound ("Could not find
the file PATH in container ID", docker's words), docker's refusals are InvalidArgument with
docker's message alone, a read-only filesystem is FailedPrecondition. `Get` pulls the tar a
chunk at a time from its thread, so a slow client holds back the walk rather than the
daemon's memory; `Put` hands the client's chunks to the extracting thread through a small
bounded queue.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import queue
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from supervisor.api.ctrd.services.archive.v1 import archive_pb2 as pb
from supervisor.api.ctrd.services.archive.v1 import archive_pb2_grpc as pb_grpc
from supervisor.archive import ops, view
from supervisor.archive.paths import CopyError
from supervisor.archive.unpack import UnpackError
from supervisor.errors import CtrdError, FailedPrecondition, Internal, InvalidArgument, NotFound
from supervisor.metadata.containers import ContainerStore
from supervisor.runtime.manager import TaskManager
from supervisor.services import rpc
from supervisor.volumes.labels import VOLUMES_LABEL, wants_volumes
from supervisor.volumes.labels import parse as parse_volumes
from supervisor.volumes.local import VolumePaths

Context = grpc.aio.ServicerContext[Any, Any]
_QUEUE = 8  # chunks of a Put in flight between the stream and the extracting thread
_DONE = object()


class ArchiveService(pb_grpc.ArchiveServicer):
    def __init__(
        self,
        containers: Callable[[str], ContainerStore],
        tasks: TaskManager,
        snapshot_mounts: Callable[[str, str, str], Any],
        tmpmounts: Path,
        volumes_root: Path | None = None,
    ) -> None:
        self._containers = containers
        self._tasks = tasks
        self._snapshot_mounts = snapshot_mounts  # (ns, snapshotter, key) -> awaitable mounts
        self._tmp = tmpmounts
        self._volumes_root = volumes_root  # <root>/volumes: the volumes' data directories

    async def _layout(self, ns: str, cid: str) -> tuple[view.Layout, dict[str, Any]]:
        try:
            container = await self._containers(ns).get(cid)
        except NotFound:
            raise NotFound(f"No such container: {cid}", plain=True) from None
        spec = _spec(container.spec[1] if container.spec else b"")
        try:
            bundle = self._tasks.get(ns, cid).bundle
        except NotFound:  # no task (or one still being created): the snapshot
            bundle = None
        if bundle is not None and await asyncio.to_thread(os.path.ismount, bundle.rootfs):
            started = await asyncio.to_thread(_read_spec, bundle.path / "config.json")
            spec = started or spec
            binds = tuple(view.bind_mounts(spec))
            return view.Layout(bundle.rootfs, binds=binds), spec
        if not container.snapshot_key or not container.snapshotter:
            raise FailedPrecondition(f'container "{cid}" has no snapshot to copy from or to')
        mounts = await self._snapshot_mounts(ns, container.snapshotter, container.snapshot_key)
        found = [*view.bind_mounts(spec), *self._volumes(ns, container.labels)]
        found.sort(key=lambda bind: bind.target.count("/"))  # a parent before what is in it
        return view.Layout(None, tuple(mounts), tuple(found)), spec

    def _volumes(self, ns: str, labels: Mapping[str, str]) -> list[view.BindMount]:
        """A stopped container's volumes (label `ctrd.io/volumes`, `supervisor.volumes`): each
        volume's data directory bound on its target, as Tasks.Create would (a running task's
        spec has them already). A volume whose data is not there (one mounted only while in
        use, a tmpfs or NFS one) is left out."""
        if self._volumes_root is None or not wants_volumes(labels):
            return []
        try:
            wanted = parse_volumes(labels[VOLUMES_LABEL])
        except CtrdError:
            return []
        found = []
        for volume in wanted:
            data = VolumePaths(self._volumes_root, ns, volume.name).data
            if data.is_dir():
                found.append(view.BindMount(str(data), volume.target, volume.readonly, True))
        return found

    async def Stat(self, request: pb.StatRequest, context: Context) -> pb.StatResponse:
        ns = rpc.namespace(context)
        layout, _ = await self._layout(ns, request.container_id)

        def stat() -> ops.PathStat:
            with view.mounted(layout, self._tmp) as root:
                return ops.stat_path(root, request.path)

        try:
            found = await asyncio.to_thread(stat)
        except Exception as e:
            raise _translate(e, request.container_id, request.path) from e
        return pb.StatResponse(stat=_stat_message(found))

    async def Get(self, request: pb.GetRequest, context: Context) -> AsyncIterator[pb.GetResponse]:
        ns = rpc.namespace(context)
        layout, _ = await self._layout(ns, request.container_id)
        produced = _archived(layout, self._tmp, request.path)
        step: asyncio.Future[ops.PathStat | bytes | None] | None = None
        try:
            while True:
                # shielded: a client that goes away cancels us, not the thread inside the
                # generator, which must be done before the generator can be closed
                step = asyncio.ensure_future(asyncio.to_thread(next, produced, None))
                try:
                    item = await asyncio.shield(step)
                except Exception as e:
                    raise _translate(e, request.container_id, request.path) from e
                if item is None:
                    break
                if isinstance(item, ops.PathStat):
                    yield pb.GetResponse(stat=_stat_message(item))
                else:
                    yield pb.GetResponse(data=item)
        finally:
            if step is not None and not step.done():
                await asyncio.wait({step})
            await asyncio.to_thread(produced.close)

    async def Put(
        self, request_iterator: AsyncIterator[pb.PutRequest], context: Context
    ) -> pb.PutResponse:
        ns = rpc.namespace(context)
        first = await anext(aiter(request_iterator), None)
        if first is None:
            raise InvalidArgument("put: no request")
        layout, spec = await self._layout(ns, first.container_id)
        target = ops.Target(layout.binds, view.root_readonly(spec), view.owner(spec))
        chunks: queue.Queue[bytes | object] = queue.Queue(_QUEUE)

        def received() -> Iterator[bytes]:
            while (chunk := chunks.get()) is not _DONE:
                assert isinstance(chunk, bytes)
                yield chunk

        def extract() -> None:
            with view.mounted(layout, self._tmp) as root:
                ops.extract(
                    root,
                    first.path,
                    received(),
                    target,
                    no_overwrite_dir_non_dir=first.no_overwrite_dir_non_dir,
                    copy_uid_gid=first.copy_uid_gid,
                )

        work = asyncio.ensure_future(asyncio.to_thread(extract))
        try:
            await _feed(chunks, work, first.data, request_iterator)
            await work
        except CtrdError:
            raise
        except Exception as e:
            raise _translate(e, first.container_id, first.path) from e
        finally:
            if not work.done():  # the client went away: let the thread see the end
                await _put(chunks, work, _DONE)
                await asyncio.wait({work})
        return pb.PutResponse()


def _archived(
    layout: view.Layout, tmp: Path, path: str
) -> Generator[ops.PathStat | bytes, None, None]:
    """The stat, then the tar's chunks, with the view mounted until the last one."""
    with view.mounted(layout, tmp) as root:
        found, chunks = ops.archive(root, path)
        try:
            yield found
            yield from chunks
        finally:
            chunks.close()


async def _feed(
    chunks: queue.Queue[bytes | object],
    work: asyncio.Future[None],
    data: bytes,
    rest: AsyncIterator[pb.PutRequest],
) -> None:
    if data:
        await _put(chunks, work, data)
    async for request in rest:
        if request.data and not await _put(chunks, work, request.data):
            return  # the extraction ended (failed): what is left is not read
    await _put(chunks, work, _DONE)


async def _put(
    chunks: queue.Queue[bytes | object], work: asyncio.Future[None], item: object
) -> bool:
    """Hand `item` to the thread; False when the thread is done and will take no more."""
    while not work.done():
        try:
            chunks.put_nowait(item)
            return True
        except queue.Full:
            await asyncio.sleep(0.002)
    return False


def _spec(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _read_spec(path: Path) -> dict[str, Any]:
    try:
        return _spec(path.read_bytes())
    except OSError:
        return {}


def _stat_message(found: ops.PathStat) -> pb.PathStat:
    mtime = Timestamp()
    mtime.FromNanoseconds(found.mtime_ns)
    return pb.PathStat(
        name=found.name,
        size=found.size,
        mode=found.mode,
        mtime=mtime,
        link_target=found.link_target,
    )


def _translate(error: Exception, cid: str, path: str) -> CtrdError:
    if isinstance(error, CtrdError):
        return error
    if isinstance(error, (UnpackError, CopyError)):
        return InvalidArgument(str(error), plain=True)
    if isinstance(error, FileNotFoundError):
        return NotFound(f"Could not find the file {path} in container {cid}", plain=True)
    if isinstance(error, OSError):
        shown = f"{os.strerror(error.errno)}" if error.errno else str(error)
        if error.errno == errno.EROFS:
            return FailedPrecondition(f"{path}: {shown}", plain=True)
        if error.errno in (errno.ENOTDIR, errno.ELOOP, errno.EEXIST, errno.ENOTEMPTY):
            return InvalidArgument(f"{path}: {shown}", plain=True)
        return Internal(f"{path}: {shown}", plain=True)
    return Internal(f"{type(error).__name__}: {error}", plain=True)
