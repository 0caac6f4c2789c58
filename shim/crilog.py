"""A container's log in the CRI's format, as kubelet reads it (`ctrd-log:///path?format=cri`).

One record per line of output::

    2026-12-06T08:00:00.123456789Z stdout F hello

- the time is RFC 3339 with nanoseconds, in UTC (`Z`), trailing zeros of the fraction trimmed
  and the dot dropped when nothing is left, as Go's `time.RFC3339Nano` formats it (containerd
  writes local time; UTC reads the same everywhere);
- the stream is `stdout` or `stderr` (a terminal's output is all `stdout`);
- the tag is `F` for the end of a line and `P` for a part of one: a line whose content is longer
  than `max-line` bytes (default 16 KiB; `[cri] max_container_log_line_size`) is cut into `P`
  records of `max-line` bytes and a last `F`. Joining a stream's `P` records with the `F` that
  follows gives the line back. Kubelet does that join, naive collectors may not;
- the content is the line's bytes as written, without its `\\n` or `\\r\\n` (never decoded).

Output that ends without a newline (the process exited, or closed the stream, in the middle of
a line) is written as `F`: it is the last of its line. containerd tags it `P`, so a reader
joining parts waits forever for a line that never ends; both read the same content.

A `max-line` of 0 or less means no limit, as containerd's; the shim still holds at most
UNLIMITED_HOLD bytes of an unfinished line before it writes them as `P`, so that a process
writing without newlines cannot grow the shim without end.

The file is opened `O_APPEND|O_CREAT`, mode 0640, its directories made (0755). The shim never
rotates it: kubelet does (`containerLogMaxSize`), by renaming the file and asking for a
`ReopenContainerLog`, which `reopen` serves: the path is opened again (created if missing) and
the old file closed, so the renamed file stops growing and new records go to the path. Both
streams write through one `CriLog` in the shim's one thread; each write(2) holds whole records
(those of one read from one stream), so records of the two streams never interleave, and a
reader never sees half a record unless the disk fills.
"""

from __future__ import annotations

import contextlib
import os
import time
from urllib.parse import parse_qsl, urlsplit

FORMAT = "cri"
DEFAULT_MAX_LINE = 16 * 1024
UNLIMITED_HOLD = 1 << 20  # bytes of an unfinished line held when max-line is unlimited
FILE_MODE = 0o640
DIR_MODE = 0o755


def parse(uri: str) -> tuple[str, int]:
    """(path, max_line) of a `ctrd-log:///path?format=cri[&max-line=N]` URI; max_line 0 means
    no limit. ValueError for options the CRI's log does not take (rotation is kubelet's)."""
    parts = urlsplit(uri)
    if not parts.path.startswith("/"):
        raise ValueError(f'"{uri}" is not a ctrd-log:///absolute/path URI')
    options = dict(parse_qsl(parts.query))
    for refused in ("max-size", "max-files"):
        if refused in options:
            raise ValueError(f'"{uri}": {refused} does not go with format=cri (kubelet rotates)')
    try:
        max_line = int(options.get("max-line", str(DEFAULT_MAX_LINE)))
    except ValueError:
        raise ValueError(f'"{uri}": max-line must be an integer') from None
    return parts.path, max(max_line, 0)


def timestamp(now_ns: int) -> bytes:
    """`now_ns` as Go's RFC3339Nano in UTC: `2026-12-06T08:00:00.1Z`, `...:00Z`."""
    seconds, nanos = divmod(now_ns, 1_000_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    if nanos:
        text += f".{nanos:09d}".rstrip("0")
    return (text + "Z").encode()


def _pieces(full: bytes, part: bytes, content: bytes, max_line: int, ended: bool) -> bytes:
    """The records of one line's content (or of a part of it, when not `ended`)."""
    if not max_line or len(content) <= max_line:
        return (full if ended else part) + content + b"\n"
    out = bytearray()
    last = (len(content) - 1) // max_line * max_line
    for start in range(0, len(content), max_line):
        out += (full if ended and start == last else part) + content[start : start + max_line]
        out += b"\n"
    return bytes(out)


def records(stamp: bytes, stream: str, data: bytes, max_line: int, final: bool = False) -> bytes:
    """The records of `data`: whole lines, each ending in a newline, except perhaps the last
    piece, which is a part of a line still being written (`P`), or at `final` its end (`F`)."""
    head = stamp + b" " + stream.encode()
    full, part = head + b" F ", head + b" P "
    lines = data.replace(b"\r\n", b"\n").split(b"\n")  # a lone \r is content
    tail = lines.pop()  # after the last newline: b"" when data ends with one
    if (not tail or final) and (
        not max_line or max(map(len, lines), default=0) <= max_line >= len(tail)
    ):  # the common case, in a few C calls: no line to cut, no part of one
        if tail:
            lines.append(tail)
        return full + (b"\n" + full).join(lines) + b"\n" if lines else b""
    out = bytearray()
    for line in lines:
        out += _pieces(full, part, line, max_line, True)
    if tail:
        out += _pieces(full, part, tail, max_line, final)
    return bytes(out)


class CriLog:
    """The CRI log of one container: records appended to `path`, reopened on demand."""

    def __init__(self, path: str, max_line: int = DEFAULT_MAX_LINE) -> None:
        self.path = path
        self.max_line = max_line
        self.piece = max_line or UNLIMITED_HOLD  # what the pump holds of an unfinished line
        self._fd = self._open()

    def _open(self) -> int:
        os.makedirs(os.path.dirname(self.path) or "/", mode=DIR_MODE, exist_ok=True)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        return os.open(self.path, flags, FILE_MODE)

    def partial_cut(self, data: bytes) -> int:
        """How much of `data`, an unfinished line, to write now: whole pieces only, never its
        last byte (nor a `\\r` before it), so that a newline coming next ends a piece, not an
        empty record."""
        held = len(data) - 1 - data.endswith(b"\r")
        return held - held % self.piece

    def write(self, stream: str, data: bytes, final: bool = False) -> None:
        """Append the records of `data` (see `records`) in one write."""
        out = records(timestamp(time.time_ns()), stream, data, self.max_line, final)
        view = memoryview(out)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def reopen(self) -> None:
        """Open the path again (created if it was renamed away) and close the old file."""
        fd = self._open()
        old, self._fd = self._fd, fd
        if old >= 0:
            with contextlib.suppress(OSError):
                os.close(old)

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
