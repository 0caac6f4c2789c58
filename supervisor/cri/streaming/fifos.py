"""The daemon's ends of the FIFOs a shim's process is given for a streaming exec or attach.

- `OutputFifo(path)`: made (0600) and opened for reading, non-blocking, with a write end held
  too, so that the reader sees no end of file before the shim has opened the FIFO.
  `await read()` -> the next bytes. `release()` drops the held end and says the writer is done
  (its process has exited and the shim has drained its output): from then on `read` answers
  b"" as soon as the FIFO is empty, even if a child the process left behind still holds it
  open (such a child must not hold a client's stream open forever).
- `InputFifo(path)`: made and opened read-write (so the shim's non-blocking read end never
  sees an end of file before the client's), `await write(data)` (waits while the FIFO is
  full), `close()`: the end of input, which the shim passes on to the process.

`close()` on either removes its reader or writer from the event loop, closes every fd and
unlinks the path; it is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from pathlib import Path

CHUNK = 1 << 16


def _mkfifo(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    os.mkfifo(path, 0o600)


class _Fd:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._loop = asyncio.get_running_loop()
        self._fds: list[int] = []

    def _open(self, flags: int) -> int:
        fd = os.open(self.path, flags | os.O_NONBLOCK | os.O_CLOEXEC)
        self._fds.append(fd)
        return fd

    async def _ready(self, fd: int, writing: bool) -> None:
        future: asyncio.Future[None] = self._loop.create_future()

        def ready() -> None:
            if not future.done():
                future.set_result(None)

        add = self._loop.add_writer if writing else self._loop.add_reader
        remove = self._loop.remove_writer if writing else self._loop.remove_reader
        add(fd, ready)
        self._waiting = future
        try:
            await future
        finally:
            remove(fd)

    def close(self) -> None:
        waiting = getattr(self, "_waiting", None)
        if waiting is not None and not waiting.done():
            waiting.set_result(None)
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class OutputFifo(_Fd):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        _mkfifo(path)
        try:
            self._read = self._open(os.O_RDONLY)
            self._hold = self._open(os.O_WRONLY)
        except OSError:
            self.close()
            raise
        self._released = False

    async def read(self) -> bytes:
        while self._fds:
            try:
                return os.read(self._read, CHUNK)
            except BlockingIOError:
                if self._released:
                    return b""
                await self._ready(self._read, writing=False)
            except OSError as e:
                if e.errno != errno.EINTR:
                    return b""
        return b""

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        if self._hold in self._fds:
            self._fds.remove(self._hold)
            with contextlib.suppress(OSError):
                os.close(self._hold)
        waiting = getattr(self, "_waiting", None)
        if waiting is not None and not waiting.done():
            waiting.set_result(None)


class InputFifo(_Fd):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        _mkfifo(path)
        try:
            self._write = self._open(os.O_RDWR)
        except OSError:
            self.close()
            raise

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view and self._fds:
            try:
                written = os.write(self._write, view)
            except BlockingIOError:
                await self._ready(self._write, writing=True)
                continue
            view = view[written:]
