"""A container's log kept by its shim: docker's json-file format, rotated by size.

Used for the stdio URI `ctrd-log:///path?max-size=BYTES&max-files=N` (stdout and stderr both):
the process writes into pipes the shim reads, and each line becomes one JSON object::

    {"log":"hello\\n","stream":"stdout","time":"2026-11-28T02:00:00.123456789Z"}

as docker's json-file driver writes it, so tools that read those files read these. A line
longer than 16 KiB is cut into pieces, the last one ending with the newline (or none, for the
end of output without one). When a write would take the file past `max-size`, the file is
rotated: `path` becomes `path.1`, `path.1` becomes `path.2` ..., keeping `max-files` files in
all (1: the file is emptied instead). Nothing is lost at exit: the pipes are read until every
writer (the process and any child it left) has closed them.

With `format=cri` the log is the CRI's instead (`shim.crilog`: `RFC3339Nano stream P|F line`,
never rotated by the shim, reopened by path on request); both kinds take the same pumps.

A stream's URI may also name a FIFO, `...&tee=/path/fifo`: what the stream writes is then both
logged and copied there, as it comes, for a client attached to the container (docker keeps the
logs of attached containers too). The copy keeps the pace of its reader: while the FIFO is
full the pump reads no more from the process, which then blocks, as a process writing into the
FIFO itself would; the stream ends once the FIFO has taken everything. With `&tee-drop=1` the
tee never holds the process back: what the FIFO cannot take at once is dropped (the CRI's
attach: the daemon reads the FIFO only while a client is attached, the log keeps everything).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from typing import Protocol
from urllib.parse import parse_qsl, urlsplit

from shim import crilog, dirs

SCHEME = "ctrd-log"
PIECE = 16 * 1024
CHUNK = 1 << 16


def parse(uri: str) -> tuple[str, int, int]:
    """(path, max_size, max_files) of a `ctrd-log://` URI; max_size 0 means unbounded."""
    parts = urlsplit(uri)
    if parts.scheme != SCHEME or not parts.path.startswith("/"):
        raise ValueError(f'"{uri}" is not a ctrd-log:///absolute/path URI')
    options = dict(parse_qsl(parts.query))
    try:
        max_size = int(options.get("max-size", "0"))
        max_files = int(options.get("max-files", "1"))
    except ValueError:
        raise ValueError(f'"{uri}": max-size and max-files must be integers') from None
    if max_size < 0 or max_files < 1:
        raise ValueError(f'"{uri}": max-size must be >= 0 and max-files >= 1')
    return parts.path, max_size, max_files


class Log(Protocol):
    """What a pump writes to: a `LogFile` or a `crilog.CriLog`."""

    piece: int  # the most of an unfinished line held before some of it is written

    def partial_cut(self, data: bytes) -> int: ...

    def write(self, stream: str, data: bytes, final: bool = False) -> None: ...

    def reopen(self) -> None: ...

    def close(self) -> None: ...


def open_log(uri: str) -> Log:
    """The log a `ctrd-log://` URI names, opened: json-file, or the CRI's (`format=cri`)."""
    fmt = dict(parse_qsl(urlsplit(uri).query)).get("format", "json")
    if fmt == crilog.FORMAT:
        if urlsplit(uri).scheme != SCHEME:
            raise ValueError(f'"{uri}" is not a ctrd-log:///absolute/path URI')
        return crilog.CriLog(*crilog.parse(uri))
    if fmt != "json":
        raise ValueError(f'"{uri}": unknown log format "{fmt}" (json or cri)')
    return LogFile(*parse(uri))


def tee_of(uri: str) -> str:
    """The FIFO a `ctrd-log://` stream URI also copies to, or ""."""
    path = dict(parse_qsl(urlsplit(uri).query)).get("tee", "")
    if path and not path.startswith("/"):
        raise ValueError(f'"{uri}": tee must be an absolute path')
    return path


def tee_drops(uri: str) -> bool:
    """Whether a stream URI's tee drops what its FIFO cannot take (`tee-drop=1`)."""
    return dict(parse_qsl(urlsplit(uri).query)).get("tee-drop", "") in ("1", "true")


def _timestamp(now_ns: int) -> str:
    seconds, nanos = divmod(now_ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{nanos:09d}Z"


class LogFile:
    piece = PIECE

    def __init__(self, path: str, max_size: int = 0, max_files: int = 1) -> None:
        self.path = path
        self.max_size = max_size
        self.max_files = max_files
        dirs.make_dirs(os.path.dirname(path), mode=0o700, parent_mode=0o700)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._size = os.fstat(self._fd).st_size

    def partial_cut(self, data: bytes) -> int:
        """How much of an unfinished line to write now: all of it, in pieces."""
        return len(data)

    def write(self, stream: str, data: bytes, final: bool = False) -> None:
        """One entry per line of `data` (which holds whole lines, or a final piece)."""
        now = _timestamp(time.time_ns())
        out = bytearray()
        for line in data.splitlines(keepends=True):
            for start in range(0, len(line), PIECE):
                piece = line[start : start + PIECE].decode("utf-8", errors="replace")
                entry = (
                    json.dumps(
                        {"log": piece, "stream": stream, "time": now}, separators=(",", ":")
                    ).encode()
                    + b"\n"
                )
                if self.max_size and self._size + len(out) + len(entry) > self.max_size:
                    self._write(out)
                    out.clear()
                    if self._size:
                        self._rotate()
                out += entry
        self._write(out)

    def _write(self, out: bytes | bytearray) -> None:
        view = memoryview(out)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._size += len(out)

    def _rotate(self) -> None:
        os.close(self._fd)
        if self.max_files > 1:
            for n in range(self.max_files - 1, 0, -1):
                source = self.path if n == 1 else f"{self.path}.{n - 1}"
                if os.path.exists(source):
                    os.replace(source, f"{self.path}.{n}")
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        else:
            flags = os.O_WRONLY | os.O_TRUNC | os.O_CREAT | os.O_CLOEXEC
        self._fd = os.open(self.path, flags, 0o600)
        self._size = 0

    def reopen(self) -> None:
        """Open the path again (created if it was moved away) and close the old file."""
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        fd = os.open(self.path, flags, 0o600)
        old, self._fd = self._fd, fd
        self._size = os.fstat(fd).st_size
        if old >= 0:
            with contextlib.suppress(OSError):
                os.close(old)

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1


class Pump:
    """Read one stream's pipe (non-blocking) into the log, line by line, until EOF; with a
    `tee` fd, copy what is read there too, reading on only once it has taken it all."""

    def __init__(
        self,
        want: Callable[[int, Callable[[], None] | None], None],
        fd: int,
        stream: str,
        log: Log,
        done: Callable[[], None],
        tee: int = -1,
        want_write: Callable[[int, Callable[[], None] | None], None] | None = None,
        tee_drop: bool = False,
    ) -> None:
        self._want = want
        self.fd = fd
        self.stream = stream
        self._log = log
        self._done = done
        self._pending = b""
        self._tee = tee
        self._want_write = want_write
        self._tee_drop = tee_drop
        self._unsent = bytearray()  # read, logged, not yet taken by the tee
        self._eof = False
        self.finished = False
        os.set_blocking(fd, False)
        want(fd, self._read)

    def _read(self) -> None:
        try:
            data = os.read(self.fd, CHUNK)
        except BlockingIOError:
            return
        except OSError:  # EIO from a pty master: no writer left
            data = b""
        if not data:
            self._eof = True
            self._want(self.fd, None)
            if not self._unsent:
                self.finish()
            return
        if self._tee >= 0:
            self._unsent += data
        data = self._pending + data
        cut = data.rfind(b"\n") + 1
        if not cut and len(data) >= self._log.piece:
            cut = self._log.partial_cut(data)  # a long line without a newline yet
        self._pending = data[cut:]
        if cut:
            self._log.write(self.stream, data[:cut])
        if self._unsent:
            self._send()

    def _send(self) -> None:
        """Give the tee what it takes; while it holds back, read nothing more."""
        assert self._want_write is not None
        try:
            written = os.write(self._tee, self._unsent)
        except BlockingIOError:
            written = len(self._unsent) if self._tee_drop else 0
        except OSError:  # nobody can read it any more: only the log goes on
            written = len(self._unsent)
            self._want_write(self._tee, None)
            self._tee = -1
        del self._unsent[:written]
        if self._tee_drop:  # what the FIFO did not take at once, all or part, is dropped
            self._unsent.clear()
        if self._unsent:
            self._want(self.fd, None)
            self._want_write(self._tee, self._send)
            return
        if self._tee >= 0:
            self._want_write(self._tee, None)
        if self._eof:
            self.finish()
        elif not self.finished:
            self._want(self.fd, self._read)

    def finish(self) -> None:
        """The end of the stream (or of the shim's interest in it): what is pending goes to
        the log, what the tee has not taken is dropped."""
        if self.finished:
            return
        self.finished = True
        self._want(self.fd, None)
        if self._tee >= 0 and self._want_write is not None:
            self._want_write(self._tee, None)
        self._unsent.clear()
        if self._pending:
            self._log.write(self.stream, self._pending, final=True)
            self._pending = b""
        self._done()
