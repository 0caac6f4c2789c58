"""The shim's event journal: every event before it is announced, every exit durably.

The file (FILENAME in the bundle) is append-only, one record per line::

    <crc> <json>\\n

- json: the event message of `shim.protocol` exactly as it goes on the wire,
  ``{"seq":1,"topic":"/tasks/exit","event":{...},"time_ns":...}``, compact ASCII JSON (so it
  holds no raw newline);
- crc: `zlib.crc32` of the json bytes, as 8 lowercase hex digits.

Sequence numbers start at 1 and grow by one per line; a reopened journal continues them.

Invariants:

- `Journal.append` writes one whole line before it returns, and the caller announces the event
  only after that: a shim's crash can tear only a record it never announced.
- An exit (the SYNCED topics) is also fdatasynced before `append` returns: after a machine
  crash the daemon reports the real exit status from this file. The other records are not
  synced: a shim's or the daemon's crash leaves them in the page cache, whole; a machine crash
  takes the processes they describe with it; and the next exit's fdatasync makes them durable
  with it (the file is written in order). So every record up to the last exit is durable, and
  only the unsynced tail after it can be damaged by a machine crash: cut short, or with holes
  (pages written back out of order: zeros or a partial record, then records that look valid).
- On open, the records before the first damaged one (a partial line, a line whose CRC or
  content is wrong, garbage) are kept as they are, and the file is cut back to them, unless an
  intact record of a SYNCED topic follows the damage: that record was fdatasynced, and so was
  everything before it, so the damage is not a crash's doing. That raises JournalCorrupt and the
  file is left alone. So does a gap in the sequence numbers between intact records.
- After a machine crash the journal may therefore end before records that were announced (the
  lost unsynced tail, never an exit): whoever adds to a task's events after one (the daemon
  burying a task) numbers them past the last one it published, not past the journal's end.
- One writer: a `Journal` holds an exclusive flock on the file while it is open, so two shims
  never number over each other. `read` takes no lock and changes nothing (for the daemon, when
  the shim is gone); it stops at damage by the same rule, as it may also be a write in progress.
- A write that fails is undone (the file is cut back to its last record) and its sequence
  number is not used; a failed fdatasync leaves the journal refusing appends, because after one
  the kernel may have dropped the data and a retry would falsely succeed.

Size is not bounded: a container's journal is removed with its bundle. A long-lived container
that execs often grows it by a few hundred bytes per event; bounding it would mean compacting
away records the daemon has acknowledged (and a first sequence number other than 1).
Memory is bounded: records are read from the file when asked for, never held.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import re
import time
import zlib
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, BinaryIO

from shim.protocol import MAX_FRAME, Event, ProtocolError, dumps, loads, parse

if TYPE_CHECKING:
    from pathlib import Path  # not imported at run time: pathlib costs a shim 0.6 MB

FILENAME = "events.journal"
SYNCED = frozenset({"/tasks/exit"})
"""The topics `Journal.append` fdatasyncs before it returns (see the invariants)."""

Record = Event
"""A journal record is the event message it will be sent as."""

_HEX = b"0123456789abcdef"


class JournalError(Exception):
    """The journal cannot be used (held by another writer, closed, or failed)."""


class JournalCorrupt(JournalError):
    """The journal is damaged somewhere a crash cannot have damaged it."""


def exit_status(wait_status: int) -> int:
    """containerd's exit status for an `os.waitpid` status: the exit code, or 128 + signal."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    if os.WIFEXITED(wait_status):
        return os.WEXITSTATUS(wait_status)
    raise ValueError(f"wait status {wait_status:#x} is not an exit (stopped or continued)")


def _parse_line(line: bytes) -> Record | None:
    """The record a line holds, or None if it does not hold a complete, intact one."""
    if len(line) < 10 or line[8:9] != b" " or not line.endswith(b"\n"):
        return None
    crc, payload = line[:8], line[9:-1]
    if crc.strip(_HEX) or int(crc, 16) != zlib.crc32(payload):
        return None
    try:
        record = parse(loads(payload))
    except ProtocolError:
        return None
    return record if isinstance(record, Event) else None


def _scan(file: BinaryIO, name: str) -> Iterator[tuple[Record, int]]:
    """Each record with the offset just past it, stopping before the first damaged one;
    JournalCorrupt if an intact SYNCED record follows the damage."""
    end = 0
    for line in file:
        record = _parse_line(line)
        if record is None:
            _refuse_synced_after(line, file, name, end)
            return
        end += len(line)
        yield record, end


# Where an intact record may begin inside damaged bytes: damage need not end at a newline.
_RECORD_START = re.compile(rb"[0-9a-f]{8} \{")


def _refuse_synced_after(damaged: bytes, rest: Iterable[bytes], name: str, at: int) -> None:
    """Raise JournalCorrupt if an intact record of a SYNCED topic lies past the damaged line
    `damaged` (at byte `at`) or in `rest`, the lines after it."""
    for line in itertools.chain([damaged], rest):
        for start in _RECORD_START.finditer(line):
            if line is damaged and start.start() == 0:
                continue  # the damaged record itself
            record = _parse_line(line[start.start() :])
            if record is not None and record.topic in SYNCED:
                raise JournalCorrupt(
                    f"{name}: damaged record at byte {at} before a synced one "
                    f"({record.topic} {record.seq})"
                )


def _checked(records: Iterator[tuple[Record, int]], name: str) -> Iterator[tuple[Record, int]]:
    """`records`, refusing a sequence number that does not follow the previous one."""
    expected = 1
    for record, end in records:
        if record.seq != expected:
            raise JournalCorrupt(f"{name}: record {record.seq} where {expected} belongs")
        expected += 1
        yield record, end


def read(path: Path) -> list[Record]:
    """Every complete record of the journal at `path`, in order, without changing the file."""
    name = os.fspath(path)
    with open(name, "rb") as file:
        return [record for record, _ in _checked(_scan(file, name), name)]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_directory(name: str) -> None:
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    """The writer of one journal: opening it repairs a torn tail; `append` of an exit is
    durable."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._name = os.fspath(path)
        fd = os.open(self._name, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise JournalError(f"{self._name}: in use by another writer") from None
            self._fd = fd
            last_seq, size = 0, 0
            for record, end in self._records():
                last_seq, size = record.seq, end
            if os.fstat(fd).st_size > size:
                os.ftruncate(fd, size)
                os.fsync(fd)
            # The file's directory entry must be as durable as the records in it.
            _fsync_directory(os.path.dirname(self._name) or ".")
        except BaseException:
            os.close(fd)
            raise
        self._last_seq = last_seq
        self._size = size
        self._failure: str | None = None

    @property
    def last_seq(self) -> int:
        """The sequence number of the last record (0 when there is none)."""
        return self._last_seq

    def append(self, topic: str, event: dict[str, Any]) -> Record:
        """Record an event under the next sequence number (durably when its topic is SYNCED);
        announce it only after.

        Returns the record as stored, which is what to send. Raises ValueError if the event is
        not JSON or would not fit a frame, OSError if the write failed (nothing was recorded),
        JournalError if the journal is unusable.
        """
        self._usable()
        if self._failure is not None:
            raise JournalError(f"{self._name}: refuses appends since {self._failure}")
        if not isinstance(topic, str) or not topic or not isinstance(event, dict):
            raise ValueError(f"an event is a non-empty topic and a dict: {topic!r}, {event!r}")
        record = Record(self._last_seq + 1, topic, event, time.time_ns())
        try:
            payload = dumps(record.to_wire())
        except ProtocolError as e:
            raise ValueError(str(e)) from None
        if len(payload) > MAX_FRAME:
            raise ValueError(f"event of {len(payload)} bytes would not fit a frame")
        # What a replay will read back (tuples become lists...), so live and replay agree.
        record = record._replace(event=loads(payload)["event"])
        line = b"%08x %s\n" % (zlib.crc32(payload), payload)
        try:
            _write_all(self._fd, line)
        except OSError as e:
            try:
                os.ftruncate(self._fd, self._size)
            except OSError as again:
                self._failure = f"a failed write ({e}) could not be undone ({again})"
            raise
        if topic in SYNCED:
            try:
                # fdatasync flushes the new size with the data (this record's and the unsynced
                # ones before it), which is all an append needs.
                os.fdatasync(self._fd)
            except OSError as e:
                self._failure = f"a failed fdatasync ({e})"
                raise
        self._size += len(line)
        self._last_seq = record.seq
        return record

    def since(self, seq: int) -> list[Record]:
        """Every record with a sequence number greater than `seq`, in order."""
        self._usable()
        if seq >= self._last_seq:
            return []
        return [record for record, _ in self._records() if record.seq > seq]

    def close(self) -> None:
        """Close the file and release the lock; closing twice is harmless."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _usable(self) -> None:
        if self._fd < 0:
            raise JournalError(f"{self._name}: closed")

    def _records(self) -> Iterator[tuple[Record, int]]:
        os.lseek(self._fd, 0, os.SEEK_SET)
        with open(self._fd, "rb", closefd=False) as file:
            yield from _checked(_scan(file, self._name), self._name)
