"""The shim's CRI log: `RFC3339Nano stream P|F content` records, splits, ends of output,
carriage returns, reopening after a rename, and the pump feeding it from a pipe."""

from __future__ import annotations

import os
import re
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from shim import crilog, logfile
from shim.stdio import Reactor

# Go's RFC3339Nano as containerd's and kubelet's parsers take it, in UTC: no trailing zero in
# the fraction, no empty fraction.
RFC3339NANO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{0,8}[1-9])?Z")
RECORD = re.compile(rb"(\S+) (stdout|stderr) ([PF]) (.*)")


def parsed(data: bytes) -> list[tuple[str, str, bytes]]:
    """(stream, tag, content) of each record; every time checked against the strict form."""
    assert data.endswith(b"\n") or not data
    out = []
    for line in data.split(b"\n")[:-1]:
        match = RECORD.fullmatch(line)
        assert match, line
        assert RFC3339NANO_UTC.fullmatch(match[1].decode()), match[1]
        out.append((match[2].decode(), match[3].decode(), match[4]))
    return out


def records(data: bytes, max_line: int = 8, final: bool = False, stream: str = "stdout"):
    return parsed(crilog.records(crilog.timestamp(1), stream, data, max_line, final))


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (1_765_008_000_000_000_000, "2025-12-06T08:00:00Z"),
        (1_765_008_000_100_000_000, "2025-12-06T08:00:00.1Z"),
        (1_765_008_000_123_456_789, "2025-12-06T08:00:00.123456789Z"),
        (1_765_008_000_000_000_010, "2025-12-06T08:00:00.00000001Z"),
    ],
)
def test_timestamps_are_go_rfc3339nano_in_utc_with_trailing_zeros_trimmed(ns, text):
    assert crilog.timestamp(ns).decode() == text
    assert RFC3339NANO_UTC.fullmatch(text)
    seconds = datetime.strptime(text[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    fraction = text[19:-1].lstrip(".")
    assert int(seconds) * 10**9 + int(fraction.ljust(9, "0") if fraction else 0) == ns


def test_short_lines_are_full_records_and_empty_lines_kept():
    assert records(b"a\n\nbc\n") == [
        ("stdout", "F", b"a"), ("stdout", "F", b""), ("stdout", "F", b"bc"),
    ]  # fmt: skip
    assert records(b"", final=True) == []


def test_long_lines_are_cut_into_partials_and_a_full_end():
    assert records(b"0123456789abcdefXY\n", max_line=8, stream="stderr") == [
        ("stderr", "P", b"01234567"), ("stderr", "P", b"89abcdef"), ("stderr", "F", b"XY"),
    ]  # fmt: skip
    # exactly two pieces: no empty F after them
    assert records(b"0123456789abcdef\n", max_line=8) == [
        ("stdout", "P", b"01234567"), ("stdout", "F", b"89abcdef"),
    ]  # fmt: skip
    assert records(b"x" * 100 + b"\n", max_line=0) == [("stdout", "F", b"x" * 100)]


def test_crlf_is_stripped_like_lf_and_a_lone_cr_is_content():
    assert records(b"a\r\nb\rc\n\r\r\n") == [
        ("stdout", "F", b"a"), ("stdout", "F", b"b\rc"), ("stdout", "F", b"\r"),
    ]  # fmt: skip
    assert records(b"0123456789\r\n", max_line=8) == [
        ("stdout", "P", b"01234567"), ("stdout", "F", b"89"),
    ]  # fmt: skip


def test_a_line_still_being_written_is_partial_and_its_end_at_eof_is_full():
    assert records(b"done\nhalf", final=False) == [
        ("stdout", "F", b"done"),
        ("stdout", "P", b"half"),
    ]
    assert records(b"done\nlast", final=True) == [
        ("stdout", "F", b"done"),
        ("stdout", "F", b"last"),
    ]


def test_uris_name_the_path_and_line_size_and_refuse_rotation():
    assert crilog.parse("ctrd-log:///var/log/pods/x/0.log?format=cri") == (
        "/var/log/pods/x/0.log", 16384,
    )  # fmt: skip
    assert crilog.parse("ctrd-log:///l?format=cri&max-line=100") == ("/l", 100)
    assert crilog.parse("ctrd-log:///l?format=cri&max-line=-1") == ("/l", 0)
    for bad in ("ctrd-log:///l?format=cri&max-size=10", "ctrd-log:///l?format=cri&max-line=x"):
        with pytest.raises(ValueError, match="max-"):
            crilog.parse(bad)
    with pytest.raises(ValueError, match="unknown log format"):
        logfile.open_log("ctrd-log:///l?format=syslog")


def test_the_file_is_made_0640_with_its_directories_and_appended_to(tmp_path: Path):
    path = tmp_path / "pods" / "p" / "c" / "0.log"
    log = logfile.open_log(f"ctrd-log://{path}?format=cri")
    assert isinstance(log, crilog.CriLog)
    log.write("stdout", b"one\n")
    log.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    log = crilog.CriLog(str(path))
    log.write("stderr", b"two\n")
    log.close()
    assert [r[2] for r in parsed(path.read_bytes())] == [b"one", b"two"]


def test_reopen_after_a_rename_writes_to_the_path_and_the_renamed_file_stops(tmp_path: Path):
    path = tmp_path / "0.log"
    log = crilog.CriLog(str(path))
    log.write("stdout", b"before\n")
    os.rename(path, tmp_path / "0.log.20261206-080000")
    log.write("stdout", b"still old\n")  # kubelet renamed it, but has not asked yet
    fds = len(os.listdir("/proc/self/fd"))
    log.reopen()
    assert len(os.listdir("/proc/self/fd")) == fds  # the old file is closed
    log.write("stdout", b"after\n")
    log.close()
    assert [r[2] for r in parsed((tmp_path / "0.log.20261206-080000").read_bytes())] == [
        b"before", b"still old",
    ]  # fmt: skip
    assert [r[2] for r in parsed(path.read_bytes())] == [b"after"]


def pump(path: Path, chunks: list[bytes], max_line: int) -> list[tuple[str, str, bytes]]:
    """Feed `chunks` through a pipe and a pump into a CRI log; its records."""
    reactor = Reactor()
    read_end, write_end = os.pipe()
    log = crilog.CriLog(str(path), max_line)
    ended: list[bool] = []
    logfile.Pump(
        lambda fd, cb: reactor.want(fd, read=cb), read_end, "stdout", log,
        lambda: ended.append(True),
    )  # fmt: skip
    for chunk in chunks:
        os.write(write_end, chunk)
        reactor.poll(0)
    os.close(write_end)
    while not ended:
        reactor.poll(1)
    log.close()
    os.close(read_end)
    return parsed(path.read_bytes())


def test_a_pump_writes_whole_pieces_of_a_line_as_it_comes_and_joins_back(tmp_path: Path):
    chunks = [b"abc", b"defghij", b"klmnop", b"qr\r", b"\nshort\n", b"tail-without-newline"]
    got = pump(tmp_path / "0.log", chunks, max_line=4)
    assert all(len(content) <= 4 for _, _, content in got)
    assert all(len(content) == 4 for _, tag, content in got if tag == "P")
    lines, current = [], b""
    for _, tag, content in got:
        current += content
        if tag == "F":
            lines.append(current)
            current = b""
    assert current == b""  # the output's last fragment was written F, not P
    assert lines == [b"abcdefghijklmnopqr", b"short", b"tail-without-newline"]
    # a piece exactly at the limit waits for its newline: no empty F record
    assert [t for _, t, c in got if c == b""] == []


def test_unlimited_lines_still_cut_what_the_shim_holds(tmp_path: Path):
    big = b"y" * (crilog.UNLIMITED_HOLD * 2 + 10)
    got = pump(tmp_path / "0.log", [big[i : i + 65536] for i in range(0, len(big), 65536)], 0)
    assert b"".join(c for _, _, c in got) == big
    assert got[-1][1] == "F"
    assert all(len(c) <= crilog.UNLIMITED_HOLD for _, _, c in got)
