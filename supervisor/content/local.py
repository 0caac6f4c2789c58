"""The local blob store: the bytes on disk, shared by every namespace.

Layout under its root (`<ctrd root>/content`):

    blobs/<algorithm>/<hex>         immutable, read-only (0444), complete and verified
    ingest/<sha256 of ref>/         one resumable upload
        ref                         the client's ref, to list and check
        data                        the bytes so far
        startedat                   nanoseconds since the epoch
        total                       expected size, when known

A blob appears only through `rename(2)` of a fully written, fsynced and verified ingest file,
so a crash at any point leaves either no blob or a whole one; a half-written ingest is resumed
by the next writer on its ref (its digest state is rebuilt by re-reading the data). All file
work runs on worker threads: the event loop only awaits it.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import ctypes
import errno
import functools
import hashlib
import mmap
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from supervisor import digests, filters
from supervisor.content.protocol import Info, RefLocked, Status
from supervisor.errors import (
    AlreadyExists,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    Unavailable,
)

READ_CHUNK = 1 << 20
# Start writing data to disk every 8 MiB while an upload goes on, so that the fsync at commit
# finds little left to do instead of all of it (the page cache would otherwise hold gigabytes).
WRITEBACK_CHUNK = 8 << 20
# Past its first 64 MiB an upload bypasses the page cache (see `_DataFile`), in aligned
# stages of 8 MiB.
DIRECT_AFTER = 64 << 20
DIRECT_ALIGN = 4096
DIRECT_STAGE = 8 << 20


def info_adaptor(info: Info) -> filters.Adaptor:
    return filters.label_adaptor({"digest": info.digest, "size": str(info.size)}, dict(info.labels))


def status_adaptor(status: Status) -> filters.Adaptor:
    return filters.label_adaptor({"ref": status.ref}, {})


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.ingests = root / "ingest"
        self._locked: dict[str, float] = {}  # ref -> when its writer opened
        self._open: dict[str, LocalWriter] = {}  # ref -> its writer, once open
        for directory in (self.blobs / "sha256", self.ingests):
            directory.mkdir(parents=True, exist_ok=True)
        # An ingest being created when the daemon died; nobody can be writing it now (the
        # daemon holds the root's lock before it opens stores).
        for leftover in self.ingests.glob("*.tmp"):
            shutil.rmtree(leftover, ignore_errors=True)

    # -- blobs -------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        algorithm, encoded = digests.parse(digest)
        return self.blobs / algorithm / encoded

    async def info(self, digest: str) -> Info:
        path = self.blob_path(digest)
        try:
            st = await asyncio.to_thread(os.stat, path)
        except FileNotFoundError:
            raise NotFound(f"content digest {digest}") from None
        return Info(digest, st.st_size, st.st_mtime_ns, st.st_mtime_ns)

    async def exists(self, digest: str) -> bool:
        return await asyncio.to_thread(self.blob_path(digest).exists)

    async def update(self, info: Info, paths: Sequence[str]) -> Info:
        raise FailedPrecondition(
            "the local content store keeps no labels: update them in a namespace"
        )

    async def list(self, filter_texts: Sequence[str] = ()) -> builtins.list[Info]:
        selected = filters.parse_all(filter_texts)
        infos = await asyncio.to_thread(self._walk)
        return [i for i in infos if selected.matches(info_adaptor(i))]

    def _walk(self) -> builtins.list[Info]:
        out: list[Info] = []
        for algorithm_dir in sorted(self.blobs.iterdir()):
            with os.scandir(algorithm_dir) as entries:
                for entry in entries:
                    with contextlib.suppress(FileNotFoundError):
                        st = entry.stat()
                        digest = f"{algorithm_dir.name}:{entry.name}"
                        out.append(Info(digest, st.st_size, st.st_mtime_ns, st.st_mtime_ns))
        return out

    def digests_on_disk(self) -> set[str]:
        """Every blob's digest; for the garbage collector (blocking, call from a thread)."""
        return {info.digest for info in self._walk()}

    async def delete(self, digest: str) -> None:
        try:
            await asyncio.to_thread(os.unlink, self.blob_path(digest))
        except FileNotFoundError:
            raise NotFound(f"content digest {digest}") from None

    async def read(self, digest: str, offset: int = 0, size: int = 0) -> AsyncIterator[bytes]:
        # The open and the first chunk in one trip to a thread: most reads are of a manifest,
        # an index or a config, a few KiB read whole (a client reads several for each run).
        f, chunk, end = await asyncio.to_thread(self._open_at, digest, offset, size)
        try:
            position = offset
            while chunk:
                position += len(chunk)
                yield chunk
                if position >= end:
                    break
                chunk = await asyncio.to_thread(
                    os.pread, f.fileno(), min(READ_CHUNK, end - position), position
                )
        finally:
            f.close()

    def _open_at(self, digest: str, offset: int, size: int) -> tuple[BinaryIO, bytes, int]:
        """The blob open, its first chunk from `offset`, and where the read ends."""
        try:
            f = open(self.blob_path(digest), "rb")  # noqa: SIM115 - the caller closes it
        except FileNotFoundError:
            raise NotFound(f"content digest {digest}") from None
        try:
            length = os.fstat(f.fileno()).st_size
            if offset < 0 or offset > length:
                raise OutOfRange(f"read offset {offset} of content {digest} (size {length})")
            end = length if size <= 0 else min(length, offset + size)
            first = os.pread(f.fileno(), min(READ_CHUNK, end - offset), offset) if end else b""
        except BaseException:
            f.close()
            raise
        return f, first, end

    # -- ingests -----------------------------------------------------------------------------

    def ingest_dir(self, ref: str) -> Path:
        return self.ingests / hashlib.sha256(ref.encode()).hexdigest()

    async def writer(self, ref: str, total: int = 0, expected: str = "") -> LocalWriter:
        if not ref:
            raise InvalidArgument("ref must not be empty")
        if expected:
            digests.validate(expected)
        if ref in self._locked:
            since = self._locked[ref]
            raise RefLocked(
                f'ref "{ref}" locked for {time.time() - since:.1f}s '
                f"(since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(since))})"
            )
        self._locked[ref] = time.time()
        try:
            if expected and await self.exists(expected):
                raise AlreadyExists(f"content {expected}")
            writer = await asyncio.to_thread(self._open_writer, ref, total, expected)
        except BaseException:
            self._locked.pop(ref, None)
            raise
        self._open[ref] = writer
        return writer

    def _open_writer(self, ref: str, total: int, expected: str) -> LocalWriter:
        directory = self.ingest_dir(ref)
        algorithm = digests.parse(expected)[0] if expected else "sha256"
        hasher = hashlib.new(algorithm)
        if directory.exists():
            stored_ref = (directory / "ref").read_text()
            if stored_ref != ref:
                raise FailedPrecondition(f'ingest "{ref}" collides with "{stored_ref}"')
            stored_total = _read_int(directory / "total")
            if total and stored_total and total != stored_total:
                raise FailedPrecondition(
                    f'ingest "{ref}": unexpected total {total}, the ingest has {stored_total}'
                )
            total = total or stored_total
            if total and not stored_total:
                _write_atomic(directory / "total", str(total))
            offset = 0
            with open(directory / "data", "rb") as f:
                while block := f.read(READ_CHUNK):
                    hasher.update(block)
                    offset += len(block)
            started = _read_int(directory / "startedat")
        else:
            tmp = directory.with_name(directory.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            started = time.time_ns()
            (tmp / "ref").write_text(ref)
            (tmp / "startedat").write_text(str(started))
            if total:
                (tmp / "total").write_text(str(total))
            (tmp / "data").touch()
            os.utime(tmp / "data", ns=(started, started))  # updated_at starts at started_at
            os.rename(tmp, directory)  # an ingest appears whole or not at all
            offset = 0
        fd = os.open(directory / "data", os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        if total and not offset:  # a fresh ingest (reserving touches mtime: not on resume)
            _reserve(fd, total)
        return LocalWriter(self, ref, directory, fd, hasher, offset, total, started)

    def is_locked(self, ref: str) -> bool:
        return ref in self._locked

    def _release(self, ref: str) -> None:
        self._locked.pop(ref, None)
        self._open.pop(ref, None)

    async def status(self, ref: str) -> Status:
        try:
            return await asyncio.to_thread(self._status, self.ingest_dir(ref))
        except FileNotFoundError:
            raise NotFound(f'ingest "{ref}"') from None

    def _status(self, directory: Path) -> Status:
        st = os.stat(directory / "data")
        ref = (directory / "ref").read_text()
        writer = self._open.get(ref)
        return Status(
            ref=ref,
            # An open writer is ahead of its file by the bytes it still stages.
            offset=writer.offset if writer is not None else st.st_size,
            total=_read_int(directory / "total"),
            started_at=_read_int(directory / "startedat"),
            updated_at=st.st_mtime_ns,
        )

    async def list_statuses(self, filter_texts: Sequence[str] = ()) -> builtins.list[Status]:
        selected = filters.parse_all(filter_texts)

        def walk() -> builtins.list[Status]:
            out = []
            for directory in sorted(self.ingests.iterdir()):
                if directory.name.endswith(".tmp"):
                    continue
                with contextlib.suppress(FileNotFoundError):  # vanished while listing
                    out.append(self._status(directory))
            return out

        return [s for s in await asyncio.to_thread(walk) if selected.matches(status_adaptor(s))]

    def ingest_dirs(self) -> dict[Path, str]:
        """Every ingest directory and its ref ("" when unreadable); for the collector.

        A `.tmp` directory is an ingest being created (its ref is locked, but the file naming
        it may not be written yet): it is never listed. One a crash left is removed at start.
        """
        out = {}
        for directory in self.ingests.iterdir():
            if directory.name.endswith(".tmp"):
                continue
            try:
                out[directory] = (directory / "ref").read_text()
            except OSError:
                out[directory] = ""
        return out

    async def abort(self, ref: str) -> None:
        directory = self.ingest_dir(ref)
        if ref in self._locked:
            raise Unavailable(f'ref "{ref}" is being written')
        if not await asyncio.to_thread(directory.exists):
            raise NotFound(f'ingest "{ref}"')
        await asyncio.to_thread(shutil.rmtree, directory, True)


class LocalWriter:
    """One open ingest. Not safe for concurrent use: a writer belongs to one upload."""

    def __init__(
        self,
        store: LocalStore,
        ref: str,
        directory: Path,
        fd: int,
        hasher: hashlib._Hash,
        offset: int,
        total: int,
        started_at: int,
    ) -> None:
        self._store = store
        self._ref = ref
        self._dir = directory
        self._fd = fd
        self._file = _DataFile(directory / "data", fd, offset)
        self._hasher = hasher
        self._offset = offset  # every byte accepted (the file catches up as they are written)
        self._total = total
        self._started_at = started_at
        self._updated_at: int | None = None  # known once written; read from the file before
        self._pending: asyncio.Future[None] | None = None  # the file write in flight
        self._closed = False

    @property
    def ref(self) -> str:
        return self._ref

    @property
    def offset(self) -> int:
        return self._offset

    async def status(self) -> Status:
        self._check_open()
        if self._updated_at is None:
            self._updated_at = await asyncio.to_thread(lambda: os.fstat(self._fd).st_mtime_ns)
        return Status(self._ref, self._offset, self._total, self._started_at, self._updated_at)

    async def digest(self) -> str:
        await self._settle()
        return self._digest()

    def _digest(self) -> str:
        return f"{self._hasher.name}:{self._hasher.hexdigest()}"

    async def write(self, data: bytes) -> int:
        """Accept a chunk; it is hashed and written while the client sends the next one.

        One chunk is in flight at most: a write first waits for the one before, whose error
        surfaces here (and fails the writer). `commit` and `digest` wait for it too. The
        offset counts every byte accepted.
        """
        self._check_open()
        if not data:
            return 0
        await self._settle()
        self._pending = asyncio.get_running_loop().run_in_executor(None, self._absorb, data)
        self._offset += len(data)
        self._updated_at = time.time_ns()
        return len(data)

    def _absorb(self, data: bytes) -> None:
        self._file.append(data)
        self._hasher.update(data)

    async def _settle(self) -> None:
        """Wait for the write in flight; if it failed, the writer is done for."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        try:
            await pending
        except OSError as e:
            await self.close()
            raise DataLoss(f'writing "{self._ref}" failed: {e}') from e

    async def truncate(self, size: int) -> None:
        self._check_open()
        if size != 0:
            raise InvalidArgument("an ingest can only be truncated to 0")
        await self._settle()
        await asyncio.to_thread(self._file.truncate)
        self._hasher = hashlib.new(self._hasher.name)
        self._offset = 0
        self._updated_at = time.time_ns()

    async def commit(
        self, size: int, expected: str, labels: Mapping[str, str] | None = None
    ) -> str:
        self._check_open()
        if expected:
            digests.validate(expected)
        try:
            await self._settle()
            return await asyncio.to_thread(self._commit, size, expected)
        finally:
            await self.close()

    def _commit(self, size: int, expected: str) -> str:
        self._file.drain()
        os.fsync(self._fd)
        if size > 0 and size != self._offset:
            raise FailedPrecondition(
                f'"{self._ref}" failed size validation: {self._offset} != {size}'
            )
        digest = self._digest()
        if expected and digests.parse(expected)[0] != self._hasher.name:
            algorithm = digests.parse(expected)[0]
            hasher = hashlib.new(algorithm)
            with open(self._dir / "data", "rb") as f:
                while block := f.read(READ_CHUNK):
                    hasher.update(block)
            digest = f"{algorithm}:{hasher.hexdigest()}"
        if expected and expected != digest:
            raise FailedPrecondition(f"unexpected commit digest {digest}, expected {expected}")
        target = self._store.blob_path(digest)
        if target.exists():
            shutil.rmtree(self._dir, ignore_errors=True)
            raise AlreadyExists(f"content {digest}")
        target.parent.mkdir(parents=True, exist_ok=True)
        data = self._dir / "data"
        os.chmod(data, 0o444)
        self._updated_at = time.time_ns()  # the blob's mtime (its created_at) is commit time
        os.utime(self._fd, ns=(self._updated_at, self._updated_at))
        os.rename(data, target)
        _fsync_dir(target.parent)
        shutil.rmtree(self._dir, ignore_errors=True)
        return digest

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        pending, self._pending = self._pending, None
        if pending is not None:
            with contextlib.suppress(OSError):
                await pending
        # What is still staged goes to the file, for the next writer to resume from.
        await asyncio.to_thread(self._file.close)
        with contextlib.suppress(OSError):
            if self._updated_at is not None:  # kept for the status of a resumed ingest
                os.utime(self._fd, ns=(self._updated_at, self._updated_at))
            os.close(self._fd)
        self._store._release(self._ref)

    def _check_open(self) -> None:
        if self._closed:
            raise FailedPrecondition(f'writer for "{self._ref}" is closed')


class _DataFile:
    """An ingest's data file, appended to by one thread at a time.

    The first `DIRECT_AFTER` bytes go through the page cache, with writeback started every
    `WRITEBACK_CHUNK` so that the commit's fsync finds little left. Past them a large upload
    bypasses the page cache (O_DIRECT): its bytes are copied into an aligned stage and written
    `DIRECT_STAGE` at a time on a thread of their own while the next stage fills. Copying into
    fresh page-cache pages costs ~3 s of CPU per GiB on this project's VMs, as much as the
    upload itself; writing around the cache costs almost no CPU and the blob does not push
    gigabytes of useful cache out. Small blobs, which are usually read again at once (layers
    being unpacked), stay in the cache. The bytes still staged reach the file at `drain` (the
    commit) or `close`; a crash loses them, and the next writer resumes from what the file
    holds. Filesystems that refuse O_DIRECT keep the page cache throughout.
    """

    def __init__(self, path: Path, fd: int, size: int) -> None:
        self._path = path
        self._fd = fd  # O_APPEND, through the page cache
        self._size = size  # bytes written, or being written, to the file
        self._flushed = size  # where writeback was last started
        self._direct: int | None = None  # the O_DIRECT descriptor, once past DIRECT_AFTER
        self._direct_refused = False
        self._stages: list[mmap.mmap] = []  # the one filling, the one being written
        self._staged = 0
        self._io: ThreadPoolExecutor | None = None
        self._writing: Future[None] | None = None
        self._failed = False  # a stage was lost: what is staged after it must not follow it

    def append(self, data: bytes) -> None:
        view = memoryview(data)
        if self._direct is None and not self._direct_refused:
            boundary = max(DIRECT_AFTER, -(-self._size // DIRECT_ALIGN) * DIRECT_ALIGN)
            if self._size + len(view) > boundary:
                head = boundary - self._size
                self._write_cached(view[:head])
                view = view[head:]
                self._open_direct()
        if self._direct is None:
            self._write_cached(view)
            return
        while view:
            count = min(len(view), DIRECT_STAGE - self._staged)
            self._stages[0][self._staged : self._staged + count] = view[:count]
            self._staged += count
            view = view[count:]
            if self._staged == DIRECT_STAGE:
                self._write_stage()

    def drain(self) -> None:
        """Put every byte accepted into the file (the staged tail through the cache)."""
        self._wait()
        if self._staged:
            self._write_cached(memoryview(self._stages[0])[: self._staged])
            self._staged = 0

    def truncate(self) -> None:
        self._wait()
        self._end_direct()
        os.ftruncate(self._fd, 0)
        self._size = self._flushed = 0
        self._failed = False

    def close(self) -> None:
        try:
            if not self._failed:
                self.drain()
        except OSError:
            pass  # the upload fails; the file keeps what was written in order
        finally:
            self._end_direct()

    def _write_cached(self, view: memoryview) -> None:
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
            self._size += written
        if self._size - self._flushed >= WRITEBACK_CHUNK:
            _start_writeback(self._fd, self._flushed, self._size - self._flushed)
            self._flushed = self._size

    def _open_direct(self) -> None:
        try:
            self._direct = os.open(self._path, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
        except OSError:
            self._direct_refused = True
            return
        self._stages = [mmap.mmap(-1, DIRECT_STAGE), mmap.mmap(-1, DIRECT_STAGE)]
        self._io = ThreadPoolExecutor(1, thread_name_prefix="ingest-direct")

    def _write_stage(self) -> None:
        """Hand the full stage to the writing thread and fill the other one meanwhile."""
        self._wait()
        assert self._io is not None
        stage = self._stages[0]
        self._stages.reverse()
        self._staged = 0
        self._writing = self._io.submit(self._write_direct, stage, self._size)
        self._size += DIRECT_STAGE

    def _write_direct(self, stage: mmap.mmap, offset: int) -> None:
        view = memoryview(stage)
        assert self._direct is not None
        while view:
            if self._direct_refused:  # the descriptor appends; the file ends at `offset`
                written = os.write(self._fd, view)
            else:
                try:
                    written = os.pwrite(self._direct, view, offset)
                except OSError as e:
                    if e.errno != errno.EINVAL:
                        raise
                    # Opened, but its writes refused (alignment): through the cache from now.
                    self._direct_refused = True
                    continue
            view = view[written:]
            offset += written

    def _wait(self) -> None:
        writing, self._writing = self._writing, None
        if writing is not None:
            try:
                writing.result()
            except BaseException:
                self._failed = True
                raise

    def _end_direct(self) -> None:
        if self._io is not None:
            self._io.shutdown()
            self._io = None
        if self._direct is not None:
            os.close(self._direct)
            self._direct = None
        self._stages = []  # unmapped once unreferenced (a failed write's traceback may hold one)
        self._staged = 0
        self._direct_refused = False


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text() or 0)
    except FileNotFoundError:
        return 0


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


_FALLOC_FL_KEEP_SIZE = 1


@functools.cache
def _fallocate() -> Callable[[int, int, int, int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.fallocate
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return fn


_SYNC_FILE_RANGE_WRITE = 2


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to begin writing a range out, without waiting (best effort)."""
    sync_file_range = _sync_file_range()
    if sync_file_range is not None:
        sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def _reserve(fd: int, total: int) -> None:
    """Allocate an ingest's blocks up front, keeping its size (so appends and offsets hold).

    One allocation instead of thousands is several times faster on ext4 right after large
    deletions, and a full disk fails the upload at its start rather than at its end. Best
    effort: filesystems without fallocate just allocate as the data arrives.
    """
    fallocate = _fallocate()
    if fallocate is not None:
        fallocate(fd, _FALLOC_FL_KEEP_SIZE, 0, total)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as e:  # some filesystems refuse fsync on directories
        if e.errno != errno.EINVAL:
            raise
    finally:
        os.close(fd)
