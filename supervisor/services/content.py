"""containerd.services.content.v1.Content over the namespaced content store.

`Write` follows containerd's session exactly, quirks included, because clients depend on them:
the first message must name a ref; a message naming an expected digest that already exists
ends the session with AlreadyExists (clients treat it as success); WRITE at a non-zero offset
must be at the current offset (OutOfRange otherwise), at offset zero it restarts the ingest;
COMMIT verifies and publishes, and its reply is sent twice. containerd fills one reply message
for the whole session, so a reply keeps what an earlier one said (the STAT's times and total,
the last digest) unless the current message changes it: ours does the same.

One difference, for speed: containerd's WRITE replies carry the digest of the bytes so far;
when the client declared a total, ours carry it only once that total is written (the blob is
whole: the commit would wait for its hash anyway), because a chunk is still being hashed while
its reply goes out (the client sends the next chunk meanwhile). containerd's client keeps the
last non-empty digest it was sent, so nothing it does changes. Without a declared total every
reply carries the digest, as containerd's: a client that commits with the digest it was told
(`ctr content edit`) must be told it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import empty_pb2

from supervisor.api.containerd.events import content_pb2 as events_pb2
from supervisor.api.containerd.services.content.v1 import content_pb2 as pb
from supervisor.api.containerd.services.content.v1 import content_pb2_grpc as pb_grpc
from supervisor.content.protocol import Info, Status
from supervisor.errors import AlreadyExists, DataLoss, InvalidArgument, NotFound, OutOfRange
from supervisor.events import Exchange
from supervisor.metadata.content import ContentStore
from supervisor.services import rpc
from supervisor.services.convert import timestamp

Context = grpc.aio.ServicerContext[Any, Any]
LIST_BATCH = 100


def info_to_pb(info: Info) -> pb.Info:
    return pb.Info(
        digest=info.digest,
        size=info.size,
        created_at=timestamp(info.created_at),
        updated_at=timestamp(info.updated_at),
        labels=dict(info.labels),
    )


def status_to_pb(status: Status) -> pb.Status:
    return pb.Status(
        ref=status.ref,
        offset=status.offset,
        total=status.total,
        expected=status.expected,
        started_at=timestamp(status.started_at),
        updated_at=timestamp(status.updated_at),
    )


class ContentService(pb_grpc.ContentServicer):
    def __init__(self, store: Callable[[str, str | None], ContentStore], events: Exchange) -> None:
        self._store = store
        self._events = events

    def _for(self, context: Context) -> ContentStore:
        return self._store(rpc.namespace(context), rpc.lease(context))

    async def Info(self, request: pb.InfoRequest, context: Context) -> Any:
        return pb.InfoResponse(info=info_to_pb(await self._for(context).info(request.digest)))

    async def Update(self, request: pb.UpdateRequest, context: Context) -> Any:
        info = Info(request.info.digest, 0, 0, 0, dict(request.info.labels))
        updated = await self._for(context).update(info, list(request.update_mask.paths))
        return pb.UpdateResponse(info=info_to_pb(updated))

    async def List(
        self, request: pb.ListContentRequest, context: Context
    ) -> AsyncIterator[pb.ListContentResponse]:
        infos = await self._for(context).list(list(request.filters))
        for start in range(0, len(infos), LIST_BATCH):
            yield pb.ListContentResponse(
                info=[info_to_pb(i) for i in infos[start : start + LIST_BATCH]]
            )

    async def Delete(self, request: pb.DeleteContentRequest, context: Context) -> Any:
        store = self._for(context)
        await store.delete(request.digest)
        await self._events.publish(
            store.ns, "/content/delete", events_pb2.ContentDelete(digest=request.digest)
        )
        return empty_pb2.Empty()

    async def Read(
        self, request: pb.ReadContentRequest, context: Context
    ) -> AsyncIterator[pb.ReadContentResponse]:
        store = self._for(context)
        offset = request.offset  # out of range: the store says so, as for a missing blob
        async for chunk in store.read(request.digest, request.offset, request.size):
            yield pb.ReadContentResponse(offset=offset, data=chunk)
            offset += len(chunk)

    async def Status(self, request: pb.StatusRequest, context: Context) -> Any:
        return pb.StatusResponse(status=status_to_pb(await self._for(context).status(request.ref)))

    async def ListStatuses(self, request: pb.ListStatusesRequest, context: Context) -> Any:
        statuses = await self._for(context).list_statuses(list(request.filters))
        return pb.ListStatusesResponse(statuses=[status_to_pb(s) for s in statuses])

    async def Abort(self, request: pb.AbortRequest, context: Context) -> Any:
        await self._for(context).abort(request.ref)
        return empty_pb2.Empty()

    async def Write(
        self, requests: AsyncIterator[pb.WriteContentRequest], context: Context
    ) -> AsyncIterator[pb.WriteContentResponse]:
        store = self._for(context)
        iterator = aiter(requests)
        request = await anext(iterator, None)
        if request is None:
            return
        if not request.ref:
            raise InvalidArgument("first message must have a reference")
        ref, total, expected = request.ref, request.total, request.expected
        writer = await store.writer(ref, total, expected)
        msg = pb.WriteContentResponse()  # one for the session, as containerd's
        try:
            while True:
                status = await writer.status()
                msg.action, msg.offset = request.action, status.offset
                if request.expected:
                    expected = request.expected
                    try:
                        await store.info(expected)
                    except NotFound:
                        pass
                    else:
                        await writer.close()
                        # The session's ref: messages after the first carry none.
                        with contextlib.suppress(NotFound):
                            await store.abort(ref)
                        raise AlreadyExists(f"blob with expected digest {expected} exists")
                if request.total > 0:
                    total = request.total
                if request.action == pb.STAT:
                    msg.digest = await writer.digest()
                    msg.started_at.CopyFrom(timestamp(status.started_at))
                    msg.updated_at.CopyFrom(timestamp(status.updated_at))
                    msg.total = total
                else:  # WRITE or COMMIT
                    if request.offset > 0 and request.offset != status.offset:
                        raise OutOfRange(
                            f"write @{request.offset} must occur at current offset {status.offset}"
                        )
                    if request.offset == 0 and status.offset > 0:
                        await writer.truncate(0)
                        msg.offset = 0
                    data = request.data  # each access to a bytes field copies it: once
                    if data:
                        written = await writer.write(data)
                        if written != len(data):
                            raise DataLoss(f"wrote {written} of {len(data)} bytes")
                        msg.offset += written
                    if request.action == pb.COMMIT:
                        await writer.commit(total, expected, dict(request.labels))
                        msg.digest = await writer.digest()
                    elif total <= 0 or msg.offset == total:
                        msg.digest = await writer.digest()
                    else:
                        msg.digest = ""  # not known yet (see the module's doc), never stale
                reply = pb.WriteContentResponse()
                reply.CopyFrom(msg)  # the session's message changes after it is sent
                yield reply
                if request.action == pb.COMMIT:
                    yield reply  # containerd answers a commit twice; clients read the first
                    return
                request = await anext(iterator, None)
                if request is None:
                    yield reply
                    return
        finally:
            await writer.close()
