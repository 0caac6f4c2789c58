"""The content store of a live daemon, over gRPC: `Store` as a client sees it.

`RemoteStore` speaks containerd.services.content.v1.Content on a `grpc.aio.Channel`, bound at
construction to one namespace and, optionally, one lease (sent with every call as the
`containerd-namespace` and `containerd-lease` headers). A failed call raises the typed error of
its status code (`supervisor.errgrpc.from_rpc_error`), so callers write `except NotFound`
whichever store they hold.

`RemoteWriter` drives one `Write` session as containerd's client does: every request gets
exactly one reply before the next is sent. The session opens with STAT (ref, total, expected)
to learn the offset to resume from; WRITE carries the offset the data goes to, and offset 0
makes the server restart a non-empty ingest, which is all `truncate(0)` needs; COMMIT carries
total, expected and labels. Ending the session (commit, close, or an error) releases the ref on
the server and keeps the ingest; `close` waits for the session's end so that the ref is free
when it returns.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import field_mask_pb2

from supervisor import errgrpc
from supervisor.api.containerd.services.content.v1 import content_pb2 as pb
from supervisor.api.containerd.services.content.v1 import content_pb2_grpc as pb_grpc
from supervisor.client.rpc import headers, typed_errors
from supervisor.content.protocol import Info, Status
from supervisor.errors import DataLoss, FailedPrecondition, InvalidArgument

if TYPE_CHECKING:
    from supervisor.content.protocol import Store, Writer

# Half of containerd's 16 MiB message limit, as its client does: room for the envelope.
MAX_WRITE = 8 << 20


def info_from_pb(info: pb.Info) -> Info:
    return Info(
        digest=info.digest,
        size=info.size,
        created_at=info.created_at.ToNanoseconds(),
        updated_at=info.updated_at.ToNanoseconds(),
        labels=dict(info.labels),
    )


def status_from_pb(status: pb.Status) -> Status:
    return Status(
        ref=status.ref,
        offset=status.offset,
        total=status.total,
        started_at=status.started_at.ToNanoseconds(),
        updated_at=status.updated_at.ToNanoseconds(),
        expected=status.expected,
    )


class RemoteStore:
    def __init__(self, channel: grpc.aio.Channel, namespace: str, lease: str | None = None) -> None:
        self.namespace = namespace
        self.lease = lease
        self._stub: Any = pb_grpc.ContentStub(channel)  # generated, untyped
        self._metadata = headers(namespace, lease)

    # -- blobs -------------------------------------------------------------------------------

    async def info(self, digest: str) -> Info:
        with typed_errors():
            response: pb.InfoResponse = await self._stub.Info(
                pb.InfoRequest(digest=digest), metadata=self._metadata
            )
        return info_from_pb(response.info)

    async def update(self, info: Info, paths: Sequence[str]) -> Info:
        request = pb.UpdateRequest(
            info=pb.Info(digest=info.digest, labels=dict(info.labels)),
            update_mask=field_mask_pb2.FieldMask(paths=list(paths)),
        )
        with typed_errors():
            response: pb.UpdateResponse = await self._stub.Update(request, metadata=self._metadata)
        return info_from_pb(response.info)

    async def list(self, filters: Sequence[str] = ()) -> builtins.list[Info]:
        call = self._stub.List(
            pb.ListContentRequest(filters=list(filters)), metadata=self._metadata
        )
        out: builtins.list[Info] = []
        with typed_errors():
            response: pb.ListContentResponse
            async for response in call:
                out.extend(info_from_pb(i) for i in response.info)
        return out

    async def delete(self, digest: str) -> None:
        with typed_errors():
            await self._stub.Delete(pb.DeleteContentRequest(digest=digest), metadata=self._metadata)

    async def read(self, digest: str, offset: int = 0, size: int = 0) -> AsyncIterator[bytes]:
        call = self._stub.Read(
            pb.ReadContentRequest(digest=digest, offset=offset, size=size),
            metadata=self._metadata,
        )
        try:
            with typed_errors():
                response: pb.ReadContentResponse
                async for response in call:
                    yield response.data
        finally:
            call.cancel()  # the reader may stop early; a finished call ignores this

    # -- ingests -----------------------------------------------------------------------------

    async def writer(self, ref: str, total: int = 0, expected: str = "") -> RemoteWriter:
        if not ref:
            raise InvalidArgument("ref must not be empty")
        call = self._stub.Write(metadata=self._metadata)
        writer = RemoteWriter(ref, call)
        try:
            await writer._negotiate(total, expected)
        except BaseException:
            call.cancel()
            raise
        return writer

    async def status(self, ref: str) -> Status:
        with typed_errors():
            response: pb.StatusResponse = await self._stub.Status(
                pb.StatusRequest(ref=ref), metadata=self._metadata
            )
        return status_from_pb(response.status)

    async def list_statuses(self, filters: Sequence[str] = ()) -> builtins.list[Status]:
        with typed_errors():
            response: pb.ListStatusesResponse = await self._stub.ListStatuses(
                pb.ListStatusesRequest(filters=list(filters)), metadata=self._metadata
            )
        return [status_from_pb(s) for s in response.statuses]

    async def abort(self, ref: str) -> None:
        with typed_errors():
            await self._stub.Abort(pb.AbortRequest(ref=ref), metadata=self._metadata)


class RemoteWriter:
    """One `Write` session. Not safe for concurrent use: a writer belongs to one upload."""

    def __init__(
        self,
        ref: str,
        call: grpc.aio.StreamStreamCall[pb.WriteContentRequest, pb.WriteContentResponse],
    ) -> None:
        self._ref = ref
        self._call = call
        self._offset = 0  # where the next write goes; 0 restarts the ingest
        self._digest = ""  # as of the last reply that carried one
        self._digest_stale = True  # written since: ask the server
        self._closed = False

    @property
    def ref(self) -> str:
        return self._ref

    async def _negotiate(self, total: int, expected: str) -> None:
        response = await self._exchange(
            pb.WriteContentRequest(action=pb.STAT, ref=self._ref, total=total, expected=expected)
        )
        self._offset = response.offset

    async def _exchange(self, request: pb.WriteContentRequest) -> pb.WriteContentResponse:
        """Send one request and read its reply; a failure ends the session."""
        if self._closed:
            raise FailedPrecondition(f'writer for "{self._ref}" is closed')
        try:
            await self._call.write(request)
            response = await self._call.read()
        except grpc.aio.AioRpcError as e:
            self._closed = True
            raise errgrpc.from_rpc_error(e) from None
        except asyncio.InvalidStateError:  # the server ended the session before our request
            self._closed = True
            raise errgrpc.from_status(await self._call.code(), await self._call.details()) from None
        if not isinstance(response, pb.WriteContentResponse):  # EOF: no reply at all
            self._closed = True
            raise DataLoss(f'write session for "{self._ref}" ended without a reply')
        if response.digest:
            self._digest = response.digest
            self._digest_stale = False
        return response

    async def status(self) -> Status:
        response = await self._exchange(pb.WriteContentRequest(action=pb.STAT))
        return Status(
            ref=self._ref,
            offset=response.offset,
            total=response.total,
            started_at=response.started_at.ToNanoseconds(),
            updated_at=response.updated_at.ToNanoseconds(),
        )

    async def digest(self) -> str:
        """WRITE replies may omit the digest (ctrd's do): a STAT gets the current one."""
        if self._digest_stale and not self._closed:
            await self._exchange(pb.WriteContentRequest(action=pb.STAT))
        return self._digest

    async def write(self, data: bytes) -> int:
        written = 0
        view = memoryview(data)
        for start in range(0, len(data), MAX_WRITE):
            chunk = bytes(view[start : start + MAX_WRITE])
            response = await self._exchange(
                pb.WriteContentRequest(action=pb.WRITE, offset=self._offset, data=chunk)
            )
            # After truncate(0) the server restarts the ingest, so this holds at offset 0 too.
            accepted = response.offset - self._offset
            self._offset = response.offset
            self._digest_stale = not response.digest
            written += accepted
            if accepted != len(chunk):
                raise DataLoss(f'"{self._ref}": wrote {accepted} of {len(chunk)} bytes')
        return written

    async def truncate(self, size: int) -> None:
        if size != 0:
            raise InvalidArgument("an ingest can only be truncated to 0")
        if self._closed:
            raise FailedPrecondition(f'writer for "{self._ref}" is closed')
        self._offset = 0  # the server truncates when the next WRITE or COMMIT is at offset 0
        self._digest_stale = True

    async def commit(
        self, size: int, expected: str, labels: Mapping[str, str] | None = None
    ) -> str:
        try:
            response = await self._exchange(
                pb.WriteContentRequest(
                    action=pb.COMMIT,
                    offset=self._offset,
                    total=size,
                    expected=expected,
                    labels=dict(labels or {}),
                )
            )
        finally:
            await self.close()
        if size > 0 and response.offset != size:
            raise FailedPrecondition(f'"{self._ref}": unexpected size {response.offset} != {size}')
        if expected and response.digest != expected:
            raise FailedPrecondition(
                f'"{self._ref}": unexpected digest {response.digest} != {expected}'
            )
        self._offset = response.offset
        return response.digest

    async def close(self) -> None:
        if self._closed:
            if not self._call.done():
                self._call.cancel()
            return
        self._closed = True
        try:
            with typed_errors():
                await self._call.done_writing()
                # The server releases the ref before it ends the session: read to the end.
                while isinstance(await self._call.read(), pb.WriteContentResponse):
                    pass
        finally:
            self._call.cancel()  # only if something above failed; a finished call ignores it


if TYPE_CHECKING:  # mypy proves the remote store and writer are the protocols' implementations
    _store: type[Store] = RemoteStore
    _writer: type[Writer] = RemoteWriter
