"""The durable event journal: numbering, replay, crash repair, and exit statuses."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shim import journal
from shim.journal import FILENAME, Journal, JournalCorrupt, JournalError, exit_status

REPO = Path(__file__).resolve().parents[3]
SHM = "/dev/shm"

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(), children, max_size=3)
    ),
    max_leaves=10,
)
TOPICS = st.sampled_from(["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/exec-added"])
EVENTS = st.tuples(TOPICS, st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=4))


@contextmanager
def journal_path() -> Iterator[Path]:
    # Not tmp_path: Hypothesis runs many examples per test function, each wants a fresh file.
    # On tmpfs when there is one, as bundles are (/run), so that the many fsyncs cost nothing.
    with tempfile.TemporaryDirectory(dir=SHM if os.path.isdir(SHM) else None) as directory:
        yield Path(directory) / FILENAME


def write(path: Path, events: list[tuple[str, dict]]) -> list[journal.Record]:
    with Journal(path) as j:
        return [j.append(topic, event) for topic, event in events]


def last_line_start(data: bytes) -> int:
    return data.rfind(b"\n", 0, len(data) - 1) + 1


@given(events=st.lists(EVENTS, max_size=8), more=st.lists(EVENTS, max_size=4))
def test_records_survive_a_reopen_and_numbering_continues(events, more):
    with journal_path() as path:
        first = write(path, events)
        assert [r.seq for r in first] == list(range(1, len(events) + 1))
        assert [(r.topic, r.event) for r in first] == events
        with Journal(path) as j:
            assert j.last_seq == len(events)
            assert j.since(0) == first
            later = [j.append(topic, event) for topic, event in more]
        assert [r.seq for r in later] == list(range(len(events) + 1, len(events) + len(more) + 1))
        assert journal.read(path) == first + later


@given(events=st.lists(EVENTS, min_size=1, max_size=8), seq=st.integers(-2, 10))
def test_since_returns_exactly_the_records_after_a_sequence_number(events, seq):
    with journal_path() as path:
        records = write(path, events)
        with Journal(path) as j:
            assert j.since(seq) == [r for r in records if r.seq > seq]


def test_append_returns_the_event_as_a_replay_will_read_it(tmp_path):
    with Journal(tmp_path / FILENAME) as j:
        record = j.append("/tasks/exit", {"pids": (1, 2)})
        assert record.event == {"pids": [1, 2]}
        assert j.since(0) == [record]


def test_a_record_carries_the_time_it_was_journaled(tmp_path):
    with Journal(tmp_path / FILENAME) as j:
        record = j.append("/tasks/exit", {"pid": 1, "exit_status": 0})
    assert abs(record.time_ns / 1e9 - time.time()) < 60


def test_a_record_is_a_crc_then_the_wire_event_on_one_line(tmp_path):
    path = tmp_path / FILENAME
    with Journal(path) as j:
        record = j.append("/tasks/exit", {"id": "c1", "pid": 42, "exit_status": 137})
    crc, payload = path.read_bytes().rstrip(b"\n").split(b" ", 1)
    assert payload == (
        b'{"seq":1,"topic":"/tasks/exit","event":{"id":"c1","pid":42,"exit_status":137},'
        b'"time_ns":%d}' % record.time_ns
    )
    assert int(crc, 16) == zlib.crc32(payload)


@settings(max_examples=40, deadline=None)  # a few hundred reopens per example
@given(events=st.lists(EVENTS, min_size=1, max_size=4))
def test_a_crash_at_any_byte_of_the_last_record_leaves_exactly_the_records_before_it(events):
    with journal_path() as path:
        records = write(path, events)
        data = path.read_bytes()
        last_start = last_line_start(data)
        for cut in range(last_start, len(data) + 1):
            path.write_bytes(data[:cut])
            kept = records if cut == len(data) else records[:-1]
            assert journal.read(path) == kept  # a reader ignores the torn tail...
            with Journal(path) as j:  # ...and the writer cuts it away
                assert j.last_seq == len(kept)
                assert j.since(0) == kept
                assert path.stat().st_size == (cut if cut == len(data) else last_start)
                assert j.append("/tasks/exit", {"cut": cut}).seq == len(kept) + 1
            assert journal.read(path)[:-1] == kept


@settings(deadline=None)
@given(events=st.lists(EVENTS, max_size=4), cut=st.integers(0, 10**6), garbage=st.binary())
def test_garbage_after_the_records_is_cut_away_and_numbering_continues(events, cut, garbage):
    with journal_path() as path:
        records = write(path, events)
        complete = path.read_bytes()
        data = complete
        if records and cut % 2:  # half the time, tear the last record before the garbage
            last_start = last_line_start(complete)
            data = complete[: last_start + cut % (len(complete) - last_start)]
        path.write_bytes(data + garbage)
        # The garbage may happen to complete the torn record (a newline after all but one byte).
        kept = records if (data + garbage).startswith(complete) else records[:-1]
        with Journal(path) as j:
            assert j.since(0) == kept
            assert j.append("/tasks/exit", {}).seq == len(kept) + 1
        assert [r.seq for r in journal.read(path)] == list(range(1, len(kept) + 2))


def test_damage_before_an_exit_record_is_reported_and_the_file_left_alone(tmp_path):
    path = tmp_path / FILENAME
    write(path, [("/tasks/start", {"pid": 1}), ("/tasks/exit", {"pid": 1}), ("/x", {})])
    data = path.read_bytes()
    damaged = data.replace(b'"pid":1', b'"pid":7', 1)
    path.write_bytes(damaged)
    with pytest.raises(JournalCorrupt, match=r"damaged record at byte 0 before a synced one"):
        Journal(path)
    with pytest.raises(JournalCorrupt):
        journal.read(path)
    assert path.read_bytes() == damaged


def test_a_torn_unsynced_tail_with_valid_records_after_the_damage_is_cut_at_the_damage(tmp_path):
    # A machine crash writes the unsynced tail back page by page, in any order: a hole of
    # zeros (or half a record), then records that look valid. None of them was synced.
    path = tmp_path / FILENAME
    events = [("/tasks/exit", {"pid": 1}), ("/tasks/exec-added", {"exec_id": "e1"})]
    events += [("/tasks/exec-started", {"exec_id": "e1"}), ("/tasks/exec-added", {"x": 2})]
    records = write(path, events)
    lines = path.read_bytes().splitlines(keepends=True)
    kept = len(lines[0])
    for hole in (b"\0" * len(lines[1]), lines[1][:7], lines[1][:-1] + b"\0"):
        path.write_bytes(lines[0] + hole + lines[2] + lines[3])
        assert journal.read(path) == records[:1]
        with Journal(path) as j:
            assert j.since(0) == records[:1]
            assert path.stat().st_size == kept
            assert j.append("/tasks/exec-added", {}).seq == 2


@pytest.mark.parametrize("glued", [False, True])
def test_an_exit_after_damage_in_the_unsynced_tail_is_corruption(tmp_path, glued):
    path = tmp_path / FILENAME
    write(path, [("/tasks/exec-added", {}), ("/tasks/exec-started", {}), ("/tasks/exit", {})])
    lines = path.read_bytes().splitlines(keepends=True)
    # The hole ends with a newline, or runs straight into the exit's line.
    hole = b"\0" * len(lines[1]) if glued else b"\0" * (len(lines[1]) - 1) + b"\n"
    damaged = lines[0] + hole + lines[2]
    path.write_bytes(damaged)
    with pytest.raises(
        JournalCorrupt, match=rf"at byte {len(lines[0])} before a synced one \(/tasks/exit 3\)"
    ):
        Journal(path)
    with pytest.raises(JournalCorrupt):
        journal.read(path)
    assert path.read_bytes() == damaged


def test_only_exits_are_fdatasynced(tmp_path, monkeypatch):
    synced: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(fd), real(fd))[1])
    with Journal(tmp_path / FILENAME) as j:
        for topic in ("/tasks/create", "/tasks/start", "/tasks/exec-added"):
            j.append(topic, {})
        j.append("/tasks/exec-started", {})
        assert synced == []
        j.append("/tasks/exit", {"pid": 1})
        assert len(synced) == 1


def test_a_gap_in_the_sequence_is_reported(tmp_path):
    path = tmp_path / FILENAME
    write(path, [("/a", {}), ("/b", {}), ("/c", {})])
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + lines[2])
    with pytest.raises(JournalCorrupt, match="record 3 where 2 belongs"):
        Journal(path)


def test_only_one_writer_at_a_time(tmp_path):
    path = tmp_path / FILENAME
    with Journal(path):
        with pytest.raises(JournalError, match="in use by another writer"):
            Journal(path)
        assert journal.read(path) == []
    Journal(path).close()


def test_a_closed_journal_refuses_use(tmp_path):
    j = Journal(tmp_path / FILENAME)
    j.close()
    j.close()
    with pytest.raises(JournalError, match="closed"):
        j.append("/a", {})
    with pytest.raises(JournalError, match="closed"):
        j.since(0)


@pytest.mark.parametrize(
    ("topic", "event"),
    [("", {}), ("/a", []), ("/a", {"x": float("nan")}), ("/a", {"x": object()})],
)
def test_an_event_that_cannot_be_journaled_is_refused_without_using_a_number(
    tmp_path, topic, event
):
    with Journal(tmp_path / FILENAME) as j:
        with pytest.raises(ValueError, match=r"."):
            j.append(topic, event)
        assert j.append("/ok", {}).seq == 1


def test_an_event_too_big_for_a_frame_is_refused(tmp_path):
    with Journal(tmp_path / FILENAME) as j:
        with pytest.raises(ValueError, match="would not fit a frame"):
            j.append("/big", {"x": "y" * (4 * 1024 * 1024)})
        assert j.last_seq == 0


def test_a_failed_write_is_undone_and_does_not_use_a_number(tmp_path):
    # A file size limit makes the kernel write part of the record, then fail with EFBIG.
    path = tmp_path / FILENAME
    script = f"""
import os, resource, signal
from pathlib import Path
from shim.journal import Journal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
j = Journal(Path({str(path)!r}))
j.append("/a", {{}})
resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize({str(path)!r}) + 120, -1))
try:
    j.append("/big", {{"x": "y" * 1000}})
except OSError as e:
    print("failed", e.errno, os.path.getsize({str(path)!r}))
j.append("/b", {{}})
"""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    size_after_first = len(path.read_bytes().splitlines(keepends=True)[0])
    assert result.stdout.split() == ["failed", str(errno.EFBIG), str(size_after_first)]
    assert [(r.seq, r.topic) for r in journal.read(path)] == [(1, "/a"), (2, "/b")]


def wait_status_of(child: Callable[[], object]) -> int:
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        try:
            child()
        finally:
            os._exit(99)
    _, status = os.waitpid(pid, 0)
    return status


@pytest.mark.parametrize("code", [0, 1, 2, 42, 126, 255])
def test_a_normal_exit_is_its_exit_code(code):
    assert exit_status(wait_status_of(lambda: os._exit(code))) == code


def kill_self(signum: int) -> None:
    if signum != signal.SIGKILL:  # undo any handler pytest's process had (none for SIGKILL)
        signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


@pytest.mark.parametrize(
    ("signum", "status"),
    [(signal.SIGKILL, 137), (signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)],
)
def test_death_by_a_signal_is_128_plus_the_signal(signum, status):
    assert exit_status(wait_status_of(lambda: kill_self(signum))) == status


def test_a_stopped_child_has_no_exit_status():
    pid = os.fork()
    if pid == 0:
        try:
            os.kill(os.getpid(), signal.SIGSTOP)
        finally:
            os._exit(0)
    try:
        _, status = os.waitpid(pid, os.WUNTRACED)
        with pytest.raises(ValueError, match="not an exit"):
            exit_status(status)
    finally:
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    assert exit_status(status) == 137
