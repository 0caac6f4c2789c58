"""The content store conformance suite, run against every implementation of `Store`.

A port of containerd's content testsuite (design notes, conformance-suites.md §B), written once
and run against:

- `local`: `LocalStore` on a temporary directory: the bytes only, no labels, no namespaces;
- `local-direct`: the same with the page cache bypassed after 8 KiB in stages of 12 KiB (the
  daemon's 64 MiB and 8 MiB, scaled down so that these small blobs cross both);
- `namespaced`: `ContentStore` over a `Database` in a temporary directory, built as the daemon
  builds it (shared sharing policy);
- `remote`: `RemoteStore` over gRPC to a live daemon (the `ctrd` fixture).

Which case runs where is explicit in each case's parametrization, never a runtime skip:

| cases | implementations | why |
| --- | --- | --- |
| Writer, UpdateStatus, CommitExists, Resume, Resume*, SmallBlob, CommitErrorState | all | |
| (ours) an open writer's staged bytes in the store's statuses | local-direct | |
| Labels | namespaced, remote | the local store keeps no labels (its Update is checked apart) |
| CrossNamespaceShare, CrossNamespaceAppend | namespaced, remote | namespaces live above local |
| (ours) list, status, abort, delete round trip | all | |
| (ours) Update refused with FailedPrecondition | local | what local does instead of Labels |

The Writer and UpdateStatus cases commit with labels everywhere; the local store's Info then
has none. The Isolate cases (CrossNamespaceIsolate, SharedNamespaceIsolate) are left out: ctrd
has only the shared policy. Times are checked against windows measured around each call, in ns.

The last part drives the Content service on the wire with raw stubs (live daemon only): the
error codes of §B's last paragraph, the shared policy as a client sees it, and the lease header
a `RemoteStore` sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from supervisor.api.containerd.services.content.v1 import content_pb2 as pb
from supervisor.api.containerd.services.content.v1 import content_pb2_grpc as pb_grpc
from supervisor.api.containerd.services.leases.v1 import leases_pb2, leases_pb2_grpc
from supervisor.client.content import RemoteStore
from supervisor.content import local
from supervisor.content.local import LocalStore
from supervisor.content.protocol import Info, Status, Store, Writer
from supervisor.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from supervisor.metadata.content import ContentStore
from supervisor.metadata.db import Database

NS = "testsuite"
OTHER_NS = "testsuite-other"
GC_ROOT = "containerd.io/gc.root"
Window = tuple[int, int]
Stores = Callable[..., Store]  # stores(ns=NS) -> the store as that namespace sees it


# -- the implementations ---------------------------------------------------------------------


@dataclass(frozen=True)
class Subject:
    """One implementation under test, opened afresh for each case."""

    name: str
    keeps_labels: bool
    open: Callable[[], contextlib.AbstractAsyncContextManager[Stores]]

    def run(self, scenario: Callable[[Stores], Awaitable[None]]) -> None:
        async def main() -> None:
            async with self.open() as stores:
                await scenario(stores)

        asyncio.run(main())

    def labels(self, labels: dict[str, str]) -> dict[str, str]:
        """The labels Info shows after a commit with `labels`."""
        return labels if self.keeps_labels else {}


@contextlib.asynccontextmanager
async def local_stores(root: Path) -> AsyncIterator[Stores]:
    store = LocalStore(root / "content")
    yield lambda ns=NS: store


@contextlib.asynccontextmanager
async def namespaced_stores(root: Path) -> AsyncIterator[Stores]:
    db = await Database.open(root / "meta.db")
    blobs = LocalStore(root / "content")  # one backend for every namespace, as in the daemon
    try:
        yield lambda ns=NS: ContentStore(db, blobs, ns)
    finally:
        await db.close()


@contextlib.asynccontextmanager
async def remote_stores(address: str) -> AsyncIterator[Stores]:
    async with grpc.aio.insecure_channel(f"unix:{address}") as channel:
        yield lambda ns=NS: RemoteStore(channel, ns)


ALL = [
    "local",
    "local-direct",
    "namespaced",
    pytest.param("remote", marks=pytest.mark.integration),
]
WITH_LABELS = ["namespaced", pytest.param("remote", marks=pytest.mark.integration)]
WITH_NAMESPACES = WITH_LABELS


@pytest.fixture
def subject(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Subject:
    name = request.param
    if name == "local":
        return Subject(name, False, lambda: local_stores(tmp_path))
    if name == "local-direct":
        monkeypatch.setattr(local, "DIRECT_AFTER", 8 << 10)
        monkeypatch.setattr(local, "DIRECT_STAGE", 12 << 10)
        return Subject(name, False, lambda: local_stores(tmp_path))
    if name == "namespaced":
        return Subject(name, True, lambda: namespaced_stores(tmp_path))
    assert name == "remote"
    address = request.getfixturevalue("ctrd").address
    return Subject(name, True, lambda: remote_stores(address))


# -- helpers -----------------------------------------------------------------------------------


def content(size: int) -> tuple[bytes, str]:
    data = os.urandom(size)
    return data, digest_of(data)


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def within(value: int, window: Window, what: str) -> None:
    low, high = window
    assert low <= value <= high, f"{what} {value} not within [{low}, {high}]"


async def write_in_chunks(writer: Writer, data: bytes, chunk: int) -> None:
    for start in range(0, len(data), chunk):
        assert await writer.write(data[start : start + chunk]) == len(data[start : start + chunk])


async def check_status(
    writer: Writer,
    *,
    ref: str,
    offset: int,
    total: int,
    digest: str,
    started: Window,
    updated: Window,
) -> Status:
    status = await writer.status()
    assert await writer.digest() == digest
    assert (status.ref, status.offset, status.total) == (ref, offset, total)
    within(status.started_at, started, "started_at")
    within(status.updated_at, updated, "updated_at")
    return status


async def check_info(
    store: Store,
    digest: str,
    *,
    size: int,
    labels: dict[str, str],
    created: Window,
    updated: Window,
) -> Info:
    info = await store.info(digest)
    assert (info.digest, info.size, dict(info.labels)) == (digest, size, labels)
    within(info.created_at, created, "created_at")
    within(info.updated_at, updated, "updated_at")
    return info


async def read_all(store: Store, digest: str, offset: int = 0, size: int = 0) -> bytes:
    return b"".join([chunk async for chunk in store.read(digest, offset, size)])


class PlainReader:
    """A source that can only be read forward (containerd: a bare io.Reader)."""

    def __init__(self, data: bytes) -> None:
        self._io = io.BytesIO(data)

    def read(self, n: int) -> bytes:
        return self._io.read(n)


class ReaderAt:
    """A source read by position (containerd: io.ReaderAt), never by a cursor."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def pread(self, n: int, offset: int) -> bytes:
        return self._data[offset : offset + n]


def remainder(source: Any, offset: int, chunk: int = 1024) -> list[bytes]:
    """What is left of `source` after `offset`, as content.Copy finds it for a resumed ingest."""
    if isinstance(source, ReaderAt):  # a section of the source
        out = []
        while block := source.pread(chunk, offset):
            out.append(block)
            offset += len(block)
        return out
    if isinstance(source, io.BytesIO):  # a seeker
        source.seek(offset)
    else:  # a plain reader: read the prefix and drop it
        assert len(source.read(offset)) == offset
    return list(iter(lambda: source.read(chunk), b""))


async def copy(
    writer: Writer,
    source: Any,
    size: int,
    expected: str,
    labels: dict[str, str] | None = None,
) -> None:
    """containerd's content.Copy: resume at the writer's offset, commit, AlreadyExists is fine."""
    offset = (await writer.status()).offset
    for block in remainder(source, offset):
        await writer.write(block)
    with contextlib.suppress(AlreadyExists):
        await writer.commit(size, expected, labels)


async def write_blob(
    store: Store, ref: str, data: bytes, expected: str, labels: dict[str, str] | None = None
) -> None:
    """containerd's content.WriteBlob."""
    try:
        writer = await store.writer(ref, len(data), expected)
    except AlreadyExists:
        return
    try:
        await copy(writer, io.BytesIO(data), len(data), expected, labels)
    finally:
        await writer.close()


def gc_root() -> dict[str, str]:
    return {GC_ROOT: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


# -- the suite ---------------------------------------------------------------------------------


@pytest.mark.parametrize("subject", ALL, indirect=True)
def test_writers_with_or_without_size_and_digest_commit_verified_blobs(subject: Subject):
    async def scenario(stores: Stores) -> None:
        store = stores()
        labels = {"name": "value", **gc_root()}
        blobs = [content(256) for _ in range(4)] + [content(32 << 20)]
        digests = [digest for _, digest in blobs]
        writers = [
            await store.writer("c1"),
            await store.writer("c2", total=256),
            await store.writer("c3", expected=digests[2]),
            await store.writer("c4", total=256, expected=digests[3]),
            await store.writer("c5", total=32 << 20, expected=digests[4]),
        ]
        for writer, (data, digest) in zip(writers, blobs, strict=True):
            if len(data) <= 256:
                await write_in_chunks(writer, data, 32)
            else:  # one call: the remote writer must split it under the message limit
                assert await writer.write(data) == len(data)
            before = time.time_ns()
            assert await writer.commit(0, "", labels) == digest
            after = time.time_ns()
            assert await writer.digest() == digest
            await check_info(
                store,
                digest,
                size=len(data),
                labels=subject.labels(labels),
                created=(before, after),
                updated=(before, after),
            )
        assert digest_of(await read_all(store, digests[4])) == digests[4]

    subject.run(scenario)


@pytest.mark.parametrize("subject", ALL, indirect=True)
def test_status_follows_each_write_with_a_fixed_start(subject: Subject):
    async def scenario(stores: Stores) -> None:
        store = stores()
        data, digest = content(256)
        before_start = time.time_ns()
        writer = await store.writer("c1", total=256, expected=digest)
        started = (before_start, time.time_ns())
        await check_status(
            writer,
            ref="c1",
            offset=0,
            total=256,
            digest=digest_of(b""),
            started=started,
            updated=started,
        )
        for end in (64, 192, 256):
            status = await writer.status()
            before = time.time_ns()
            await writer.write(data[status.offset : end])
            after = time.time_ns()
            await check_status(
                writer,
                ref="c1",
                offset=end,
                total=256,
                digest=digest_of(data[:end]),
                started=started,
                updated=(before, after),
            )
        labels = gc_root()
        before = time.time_ns()
        await writer.commit(0, "", labels)
        after = time.time_ns()
        await check_info(
            store,
            digest,
            size=256,
            labels=subject.labels(labels),
            created=(before, after),
            updated=(before, after),
        )

    subject.run(scenario)


@pytest.mark.parametrize("subject", ALL, indirect=True)
def test_committing_bytes_that_exist_is_already_exists_with_or_without_digest(subject: Subject):
    async def scenario(stores: Stores) -> None:
        store = stores()
        data, digest = content(256)
        await write_blob(store, "c1", data, digest)
        for i, expected in enumerate((digest, "")):
            writer = await store.writer(f"c1-commitexists-{i}")
            await writer.write(data)
            with pytest.raises(AlreadyExists):
                await writer.commit(len(data), expected)
            await writer.close()

    subject.run(scenario)


@pytest.mark.parametrize("subject", ALL, indirect=True)
def test_a_closed_writer_resumes_where_it_stopped(subject: Subject):
    async def scenario(stores: Stores) -> None:
        store = stores()
        data, digest = content(256)
        first, second = data[:128], data[128:]
        before_start = time.time_ns()
        writer = await store.writer("cb", total=256, expected=digest)
        started = (before_start, time.time_ns())
        await writer.write(first)
        updated = (started[1], time.time_ns())
        expected = {"ref": "cb", "offset": 128, "total": 256, "digest": digest_of(first)}
        before_close = await check_status(writer, **expected, started=started, updated=updated)
        await writer.close()

        writer = await store.writer("cb", total=256, expected=digest)
        reopened = await check_status(writer, **expected, started=started, updated=updated)
        assert (reopened.started_at, reopened.updated_at) == (
            before_close.started_at,
            before_close.updated_at,
        )
        before = time.time_ns()
        await writer.write(second)
        updated = (before, time.time_ns())
        expected.update(offset=256, digest=digest)
        await check_status(writer, **expected, started=started, updated=updated)
        before = time.time_ns()
        assert await writer.commit(0, "") == digest
        committed = (before, time.time_ns())
        await writer.close()
        await check_info(store, digest, size=256, labels={}, created=committed, updated=committed)

    subject.run(scenario)


async def finish_by_truncating(writer: Writer, data: bytes, size: int, digest: str) -> None:
    await writer.truncate(0)
    await write_in_chunks(writer, data, 1024)
    await writer.commit(size, digest)


async def finish_by_writing_the_rest(writer: Writer, data: bytes, size: int, digest: str) -> None:
    offset = (await writer.status()).offset
    await write_in_chunks(writer, data[offset:], 1024)
    await writer.commit(size, digest)


def finish_by_copying(source: Callable[[bytes], Any]) -> Callable[..., Awaitable[None]]:
    async def finish(writer: Writer, data: bytes, size: int, digest: str) -> None:
        await copy(writer, source(data), size, digest)

    return finish


FINISHES = {
    "truncate": finish_by_truncating,
    "discard": finish_by_writing_the_rest,
    "copy": finish_by_copying(PlainReader),
    "copy_seeker": finish_by_copying(io.BytesIO),
    "copy_reader_at": finish_by_copying(ReaderAt),
}


@pytest.mark.parametrize("subject", ALL, indirect=True)
@pytest.mark.parametrize("size", [500, 5000, 50000])
@pytest.mark.parametrize("finish", list(FINISHES))
def test_an_ingest_resumed_after_any_prefix_commits(subject: Subject, finish: str, size: int):
    async def scenario(stores: Stores) -> None:
        store = stores()
        for percent in (0, 10, 50, 90, 100):
            data, digest = content(size)
            written = size * percent // 100
            ref = f"ref-{size}-{percent}"
            writer = await store.writer(ref, total=size, expected=digest)
            await writer.write(data[:written])
            await writer.close()

            writer = await store.writer(ref, total=size, expected=digest)
            assert (await writer.status()).offset == written, f"{percent}% of {size}"
            before = time.time_ns()
            await FINISHES[finish](writer, data, size, digest)
            after = time.time_ns()
            await writer.close()
            window = (before, after)
            await check_info(store, digest, size=size, labels={}, created=window, updated=window)

    subject.run(scenario)


@pytest.mark.parametrize("subject", ALL, indirect=True)
def test_reading_a_small_blob_past_its_end_returns_exactly_the_blob(subject: Subject):
    async def scenario(stores: Stores) -> None:
        store = stores()
        blob = b"foobar"
        digest = digest_of(blob)
        writer = await store.writer("small", total=len(blob), expected=digest)
        await writer.write(blob)
        await writer.commit(len(blob), digest)
        assert await read_all(store, digest, 0, len(blob) + 1) == blob
        assert await read_all(store, digest, 3, 10) == b"bar"
        assert await read_all(store, digest, len(blob)) == b""

    subject.run(scenario)


@pytest.mark.parametrize("subject", WITH_LABELS, indirect=True)
def test_labels_are_replaced_whole_or_key_by_key_and_only_bump_updated(subject: Subject):
    async def scenario(stores: Stores) -> None:
        store = stores()
        data, digest = content(256)
        writer = await store.writer("c1-checklabels", total=256, expected=digest)
        await writer.write(data)
        root = gc_root()
        labels = {"k1": "v1", "k2": "v2", **root}
        before = time.time_ns()
        await writer.commit(0, "", labels)
        created = (before, time.time_ns())
        await check_info(store, digest, size=256, labels=labels, created=created, updated=created)

        labels = {"k1": "newvalue", "k3": "v3", **root}
        before = time.time_ns()
        returned = await store.update(Info(digest, 256, 0, 0, labels), [])
        updated = (before, time.time_ns())
        info = await check_info(
            store, digest, size=256, labels=labels, created=created, updated=updated
        )
        assert returned == info

        before = time.time_ns()
        returned = await store.update(
            Info(digest, 256, 0, 0, {"k1": "v1", **root}), ["labels.k3", "labels.k1"]
        )
        updated = (before, time.time_ns())
        info = await check_info(
            store, digest, size=256, labels={"k1": "v1", **root}, created=created, updated=updated
        )
        assert returned == info

    subject.run(scenario)


@pytest.mark.parametrize("subject", ["local"], indirect=True)
def test_the_local_store_keeps_no_labels_so_update_is_failed_precondition(subject: Subject):
    async def scenario(stores: Stores) -> None:
        store = stores()
        data, digest = content(16)
        await write_blob(store, "c1", data, digest, {"k1": "v1"})
        assert (await store.info(digest)).labels == {}
        with pytest.raises(FailedPrecondition):
            await store.update(Info(digest, 16, 0, 0, {"k1": "v2"}), [])

    subject.run(scenario)


@pytest.mark.parametrize("subject", ALL, indirect=True)
def test_failed_commits_release_the_ref_and_keep_or_drop_the_ingest_as_they_should(
    subject: Subject,
):
    async def scenario(stores: Stores) -> None:
        store = stores()
        c1, d1 = content(256)
        _, d2 = content(256)
        await write_blob(store, "c1", c1, d1)
        ref = "c1-commiterror-state"

        writer = await store.writer(ref)
        await writer.write(c1)
        with pytest.raises(Unavailable):
            await store.writer(ref)
        with pytest.raises(AlreadyExists):
            await writer.commit(len(c1), d1)

        writer = await store.writer(ref)
        await writer.write(c1)
        with pytest.raises(AlreadyExists):
            await writer.commit(len(c1), "")

        writer = await store.writer(ref)
        assert (await writer.status()).offset == 0  # AlreadyExists dropped the ingest
        await writer.write(c1 + b"more")
        with pytest.raises(FailedPrecondition):
            await writer.commit(len(c1) + 4, d2)
        await writer.close()

        writer = await store.writer(ref)
        assert (await writer.status()).offset == len(c1) + 4  # a wrong digest kept the data
        with pytest.raises(FailedPrecondition):
            await writer.commit(len(c1), "")  # wrong size
        await writer.close()

        writer = await store.writer(ref)
        assert await writer.commit(len(c1) + 4, "") == digest_of(c1 + b"more")

        writer = await store.writer(ref)
        await writer.write(c1)
        with pytest.raises(AlreadyExists):
            await writer.commit(len(c1), d1)

        writer = await store.writer(ref)
        await writer.truncate(0)
        await writer.close()
        writer = await store.writer(ref)
        await writer.close()

    subject.run(scenario)


@pytest.mark.parametrize("subject", WITH_NAMESPACES, indirect=True)
def test_a_blob_in_one_namespace_is_complete_for_a_writer_in_another(subject: Subject):
    async def scenario(stores: Stores) -> None:
        one, two = stores(NS), stores(OTHER_NS)
        data, digest = content(1000)
        t1 = time.time_ns()
        await write_blob(one, "ref-1000", data, digest)
        with pytest.raises(NotFound):
            await two.info(digest)

        writer = await two.writer("ref-1000", total=1000, expected=digest)
        t2 = time.time_ns()
        status = await check_status(
            writer, ref="ref-1000", offset=1000, total=1000, digest=digest,
            started=(t1, t2), updated=(t1, t2),
        )  # fmt: skip
        assert await writer.status() == status  # nothing moves while nothing is written
        assert await writer.commit(1000, digest) == digest
        t3 = time.time_ns()
        for store in (one, two):
            await check_info(
                store, digest, size=1000, labels={}, created=(t1, t3), updated=(t1, t3)
            )
        assert await read_all(two, digest) == data

    subject.run(scenario)


@pytest.mark.parametrize("subject", WITH_NAMESPACES, indirect=True)
def test_appending_to_a_shared_blob_makes_a_new_blob_in_that_namespace_only(subject: Subject):
    async def scenario(stores: Stores) -> None:
        one, two = stores(NS), stores(OTHER_NS)
        data, digest = content(1000)
        extra = b"appended bytes"
        data2 = data + extra
        digest2 = digest_of(data2)
        t1 = time.time_ns()
        await write_blob(one, "ref-1000", data, digest)

        writer = await two.writer("ref-1000", total=1000, expected=digest)
        t2 = time.time_ns()
        await check_status(
            writer, ref="ref-1000", offset=1000, total=1000, digest=digest,
            started=(t1, t2), updated=(t1, t2),
        )  # fmt: skip
        assert await writer.write(extra) == len(extra)
        assert await writer.commit(len(data2), digest2) == digest2
        t3 = time.time_ns()

        await check_info(one, digest, size=1000, labels={}, created=(t1, t3), updated=(t1, t3))
        await check_info(
            two, digest2, size=len(data2), labels={}, created=(t1, t3), updated=(t1, t3)
        )
        with pytest.raises(NotFound):
            await one.info(digest2)
        with pytest.raises(NotFound):
            await two.info(digest)
        assert await read_all(two, digest2) == data2

    subject.run(scenario)


@pytest.mark.parametrize("subject", ALL, indirect=True)
def test_ingests_and_blobs_are_listed_aborted_and_deleted(subject: Subject):
    async def scenario(stores: Stores) -> None:
        store = stores()
        data, digest = content(100)
        writer = await store.writer("partial", total=100)
        await writer.write(data[:40])
        await writer.close()
        statuses = await store.list_statuses(["ref==partial"])
        assert [(s.ref, s.offset, s.total) for s in statuses] == [("partial", 40, 100)]
        assert (await store.status("partial")).offset == 40
        await store.abort("partial")
        assert await store.list_statuses() == []
        with pytest.raises(NotFound):
            await store.status("partial")
        with pytest.raises(NotFound):
            await store.abort("partial")

        await write_blob(store, "whole", data, digest)
        assert [i.digest for i in await store.list([f"digest=={digest}"])] == [digest]
        await store.delete(digest)
        with pytest.raises(NotFound):
            await store.info(digest)
        with pytest.raises(NotFound):
            await store.delete(digest)
        assert await store.list() == []

    subject.run(scenario)


@pytest.mark.parametrize("subject", ["local-direct"], indirect=True)
def test_statuses_count_the_bytes_an_open_writer_still_stages(subject: Subject):
    async def scenario(stores: Stores) -> None:
        store = stores()
        assert isinstance(store, LocalStore)
        data, digest = content(30 << 10)  # 8 KiB cached, a 12 KiB stage written, 10 KiB staged
        writer = await store.writer("staged", total=len(data), expected=digest)
        await write_in_chunks(writer, data, 1000)
        assert (await writer.status()).offset == len(data)
        file = store.ingest_dir("staged") / "data"
        assert file.stat().st_size < len(data)  # the stage is not in the file yet
        assert (await store.status("staged")).offset == len(data)
        assert [s.offset for s in await store.list_statuses()] == [len(data)]
        await writer.close()
        assert file.read_bytes() == data  # closing puts the staged bytes in the file

        writer = await store.writer("staged", total=len(data), expected=digest)
        assert await writer.commit(len(data), digest) == digest
        assert await read_all(store, digest) == data

    subject.run(scenario)


# -- the Content service on the wire -----------------------------------------------------------

integration = pytest.mark.integration


def md(ns: str = NS) -> tuple[tuple[str, str], ...]:
    return (("containerd-namespace", ns),)


def on_the_wire(ctrd: Any, scenario: Callable[[Any, grpc.aio.Channel], Awaitable[None]]) -> None:
    async def main() -> None:
        async with grpc.aio.insecure_channel(f"unix:{ctrd.address}") as channel:
            await scenario(pb_grpc.ContentStub(channel), channel)

    asyncio.run(main())


async def rpc_error(awaitable: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await awaitable
    return e.value


async def exchange(call: Any, request: pb.WriteContentRequest) -> pb.WriteContentResponse:
    await call.write(request)
    return await call.read()


async def read_to_end(call: Any) -> None:
    """Read a server stream to its end."""
    async for _ in call:
        pass


async def end_session(call: Any) -> None:
    """End a write session and read its last replies: the server has released the ref then."""
    await call.done_writing()
    while await call.read() is not grpc.aio.EOF:
        pass


async def put(stub: Any, data: bytes, ns: str = NS, ref: str = "put") -> str:
    """Write and commit a blob in one session; returns its digest."""
    digest = digest_of(data)
    call = stub.Write(metadata=md(ns))
    await exchange(call, pb.WriteContentRequest(action=pb.STAT, ref=ref, total=len(data)))
    response = await exchange(
        call,
        pb.WriteContentRequest(
            action=pb.COMMIT, offset=0, data=data, total=len(data), expected=digest
        ),
    )
    assert (response.offset, response.digest) == (len(data), digest)
    await end_session(call)
    return digest


@integration
def test_write_at_an_offset_other_than_the_current_one_is_out_of_range(ctrd):
    async def scenario(stub: Any, channel: grpc.aio.Channel) -> None:
        for offset in (5, 100):
            call = stub.Write(metadata=md())
            await exchange(call, pb.WriteContentRequest(action=pb.STAT, ref=f"r{offset}"))
            reply = await exchange(
                call, pb.WriteContentRequest(action=pb.WRITE, offset=0, data=b"0123456789")
            )
            assert reply.offset == 10
            error = await rpc_error(
                exchange(call, pb.WriteContentRequest(action=pb.WRITE, offset=offset, data=b"x"))
            )
            assert error.code() == grpc.StatusCode.OUT_OF_RANGE
            assert error.details() == (
                f"write @{offset} must occur at current offset 10: out of range"
            )

    on_the_wire(ctrd, scenario)


@integration
def test_a_write_session_whose_first_message_has_no_ref_is_invalid_argument(ctrd):
    async def scenario(stub: Any, channel: grpc.aio.Channel) -> None:
        call = stub.Write(metadata=md())
        error = await rpc_error(exchange(call, pb.WriteContentRequest(action=pb.STAT, total=3)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "first message must have a reference" in error.details()

    on_the_wire(ctrd, scenario)


@integration
def test_reading_from_past_the_end_is_out_of_range(ctrd):
    async def scenario(stub: Any, channel: grpc.aio.Channel) -> None:
        digest = await put(stub, b"0123456789")
        request = pb.ReadContentRequest(digest=digest, offset=11)
        error = await rpc_error(read_to_end(stub.Read(request, metadata=md())))
        assert error.code() == grpc.StatusCode.OUT_OF_RANGE
        # At the very end there is nothing left to read, which is no error.
        at_end = stub.Read(pb.ReadContentRequest(digest=digest, offset=10), metadata=md())
        assert b"".join([r.data async for r in at_end]) == b""

    on_the_wire(ctrd, scenario)


@integration
def test_abort_and_status_of_an_unknown_ref_are_not_found(ctrd):
    async def scenario(stub: Any, channel: grpc.aio.Channel) -> None:
        for call in (
            stub.Abort(pb.AbortRequest(ref="nothere"), metadata=md()),
            stub.Status(pb.StatusRequest(ref="nothere"), metadata=md()),
        ):
            error = await rpc_error(call)
            assert error.code() == grpc.StatusCode.NOT_FOUND
            assert "nothere" in error.details()

    on_the_wire(ctrd, scenario)


@integration
def test_info_and_delete_of_an_unknown_digest_are_not_found_naming_it(ctrd):
    async def scenario(stub: Any, channel: grpc.aio.Channel) -> None:
        digest = digest_of(b"never written")
        for call in (
            stub.Info(pb.InfoRequest(digest=digest), metadata=md()),
            stub.Delete(pb.DeleteContentRequest(digest=digest), metadata=md()),
        ):
            error = await rpc_error(call)
            assert error.code() == grpc.StatusCode.NOT_FOUND
            assert digest in error.details()

    on_the_wire(ctrd, scenario)


@integration
@pytest.mark.parametrize(
    "digest", ["sha256:abc", "nodigest", "md5:" + "0" * 32, "sha256:" + "G" * 64]
)
def test_a_malformed_digest_is_invalid_argument_everywhere(ctrd, digest: str):
    async def scenario(stub: Any, channel: grpc.aio.Channel) -> None:
        write = stub.Write(metadata=md())
        for call in (
            stub.Info(pb.InfoRequest(digest=digest), metadata=md()),
            stub.Delete(pb.DeleteContentRequest(digest=digest), metadata=md()),
            read_to_end(stub.Read(pb.ReadContentRequest(digest=digest), metadata=md())),
            exchange(write, pb.WriteContentRequest(action=pb.STAT, ref="r", expected=digest)),
        ):
            error = await rpc_error(call)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
            assert digest in error.details()

    on_the_wire(ctrd, scenario)


@integration
def test_a_second_writer_on_a_ref_being_written_is_unavailable(ctrd):
    async def scenario(stub: Any, channel: grpc.aio.Channel) -> None:
        first = stub.Write(metadata=md())
        await exchange(first, pb.WriteContentRequest(action=pb.STAT, ref="busy"))
        second = stub.Write(metadata=md())
        error = await rpc_error(
            exchange(second, pb.WriteContentRequest(action=pb.STAT, ref="busy"))
        )
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "busy" in error.details()
        # The same ref in another namespace is another ingest.
        other = stub.Write(metadata=md(OTHER_NS))
        await exchange(other, pb.WriteContentRequest(action=pb.STAT, ref="busy"))
        await end_session(other)
        # Once the first session ends the ref is free again.
        await end_session(first)
        again = stub.Write(metadata=md())
        reply = await exchange(again, pb.WriteContentRequest(action=pb.STAT, ref="busy"))
        assert reply.offset == 0
        await end_session(again)

    on_the_wire(ctrd, scenario)


@integration
def test_commit_with_a_wrong_digest_is_failed_precondition_and_keeps_the_ingest_to_resume(ctrd):
    async def scenario(stub: Any, channel: grpc.aio.Channel) -> None:
        data = b"some bytes to keep"
        wrong = digest_of(b"other bytes")
        call = stub.Write(metadata=md())
        await exchange(call, pb.WriteContentRequest(action=pb.STAT, ref="kept"))
        commit = pb.WriteContentRequest(
            action=pb.COMMIT, offset=0, data=data, total=len(data), expected=wrong
        )
        error = await rpc_error(exchange(call, commit))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        # containerd's words (its local writer's), which name no ref
        expected_words = f"unexpected commit digest {digest_of(data)}, expected {wrong}"
        assert error.details() == f"{expected_words}: failed precondition"

        status = (await stub.Status(pb.StatusRequest(ref="kept"), metadata=md())).status
        assert (status.ref, status.offset) == ("kept", len(data))

        call = stub.Write(metadata=md())
        reply = await exchange(call, pb.WriteContentRequest(action=pb.STAT, ref="kept"))
        assert (reply.offset, reply.digest) == (len(data), digest_of(data))
        commit = pb.WriteContentRequest(
            action=pb.COMMIT, offset=len(data), total=len(data), expected=digest_of(data)
        )
        assert (await exchange(call, commit)).digest == digest_of(data)
        await end_session(call)
        info = (await stub.Info(pb.InfoRequest(digest=digest_of(data)), metadata=md())).info
        assert info.size == len(data)
        error = await rpc_error(stub.Status(pb.StatusRequest(ref="kept"), metadata=md()))
        assert error.code() == grpc.StatusCode.NOT_FOUND

    on_the_wire(ctrd, scenario)


@integration
def test_a_commit_expecting_a_blob_that_exists_is_already_exists_and_drops_the_ingest(ctrd):
    async def scenario(stub: Any, channel: grpc.aio.Channel) -> None:
        data = b"already here"
        digest = await put(stub, data)
        call = stub.Write(metadata=md())
        await exchange(call, pb.WriteContentRequest(action=pb.STAT, ref="again"))
        commit = pb.WriteContentRequest(
            action=pb.COMMIT, offset=0, data=data, total=len(data), expected=digest
        )
        error = await rpc_error(exchange(call, commit))
        assert error.code() == grpc.StatusCode.ALREADY_EXISTS
        error = await rpc_error(stub.Status(pb.StatusRequest(ref="again"), metadata=md()))
        assert error.code() == grpc.StatusCode.NOT_FOUND

    on_the_wire(ctrd, scenario)


@integration
def test_a_namespace_sees_only_its_blobs_but_a_writer_expecting_one_completes_without_bytes(ctrd):
    async def scenario(stub: Any, channel: grpc.aio.Channel) -> None:
        data = os.urandom(4096)
        digest = await put(stub, data, ns=NS)
        error = await rpc_error(stub.Info(pb.InfoRequest(digest=digest), metadata=md(OTHER_NS)))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        listed = stub.List(pb.ListContentRequest(), metadata=md(OTHER_NS))
        assert [i for r in [r async for r in listed] for i in r.info] == []

        call = stub.Write(metadata=md(OTHER_NS))
        stat = pb.WriteContentRequest(
            action=pb.STAT, ref="shared", total=len(data), expected=digest
        )
        reply = await exchange(call, stat)
        assert (reply.offset, reply.total, reply.digest) == (len(data), len(data), digest)
        commit = pb.WriteContentRequest(
            action=pb.COMMIT, offset=len(data), total=len(data), expected=digest
        )
        reply = await exchange(call, commit)
        assert (reply.offset, reply.digest) == (len(data), digest)
        await end_session(call)
        info = (await stub.Info(pb.InfoRequest(digest=digest), metadata=md(OTHER_NS))).info
        assert info.size == len(data)
        read = stub.Read(pb.ReadContentRequest(digest=digest), metadata=md(OTHER_NS))
        assert b"".join([r.data async for r in read]) == data

    on_the_wire(ctrd, scenario)


@integration
def test_a_remote_store_records_its_writes_under_its_lease(ctrd):
    async def scenario(stub: Any, channel: grpc.aio.Channel) -> None:
        leases = leases_pb2_grpc.LeasesStub(channel)
        await leases.Create(leases_pb2.CreateRequest(id="pull"), metadata=md())
        store = RemoteStore(channel, NS, lease="pull")
        data, digest = content(64)
        await write_blob(store, "leased", data, digest)
        resources = await leases.ListResources(
            leases_pb2.ListResourcesRequest(id="pull"), metadata=md()
        )
        assert [(r.type, r.id) for r in resources.resources] == [("content", digest)]
        with pytest.raises(InvalidArgument):
            RemoteStore(channel, "not a namespace")

    on_the_wire(ctrd, scenario)
