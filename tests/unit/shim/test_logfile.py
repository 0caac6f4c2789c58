"""The shim's log file: docker's json-file lines, pieces of long lines, rotation by size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shim import logfile


def entries(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_lines_become_entries_and_long_lines_pieces(tmp_path: Path):
    log = logfile.LogFile(str(tmp_path / "log.json"))
    log.write("stdout", b"a\nb\n")
    log.write("stderr", b"x" * (logfile.PIECE + 10) + b"\n")
    log.close()
    got = entries(tmp_path / "log.json")
    assert [(e["stream"], e["log"]) for e in got] == [
        ("stdout", "a\n"), ("stdout", "b\n"),
        ("stderr", "x" * logfile.PIECE), ("stderr", "x" * 10 + "\n"),
    ]  # fmt: skip
    assert all(e["time"].endswith("Z") and len(e["time"]) == 30 for e in got)


def test_rotation_keeps_max_files_each_within_max_size(tmp_path: Path):
    path = tmp_path / "log.json"
    log = logfile.LogFile(str(path), max_size=300, max_files=3)
    for n in range(100):
        log.write("stdout", f"{n}\n".encode())
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["log.json", "log.json.1", "log.json.2"]
    assert all(p.stat().st_size <= 300 for p in tmp_path.iterdir())
    kept = [int(e["log"]) for name in ("log.json.2", "log.json.1", "log.json")
            for e in entries(tmp_path / name)]  # fmt: skip
    assert kept == list(range(kept[0], 100))


def test_one_file_is_emptied_instead_of_rotated(tmp_path: Path):
    path = tmp_path / "log.json"
    log = logfile.LogFile(str(path), max_size=200, max_files=1)
    for n in range(50):
        log.write("stdout", f"{n}\n".encode())
    log.close()
    assert [p.name for p in tmp_path.iterdir()] == ["log.json"]
    assert entries(path)[-1]["log"] == "49\n"


@pytest.mark.parametrize(
    "uri",
    ["file:///x", "ctrd-log://relative", "ctrd-log:///x?max-size=big", "ctrd-log:///x?max-files=0"],
)
def test_bad_uris_are_refused(uri):
    with pytest.raises(ValueError, match=r"ctrd-log|max-"):
        logfile.parse(uri)


def test_a_uri_names_the_path_and_limits():
    assert logfile.parse("ctrd-log:///var/log/c.json?max-size=100&max-files=2") == (
        "/var/log/c.json", 100, 2,
    )  # fmt: skip
    assert logfile.parse("ctrd-log:///a") == ("/a", 0, 1)


def test_a_tee_gets_every_byte_and_holds_the_stream_back_while_full(tmp_path: Path):
    """The source pipe stops being read while the tee is full, and nothing is lost."""
    import contextlib
    import os

    from shim.stdio import Reactor

    reactor = Reactor()
    src_r, src_w = os.pipe()
    tee_r, tee_w = os.pipe()
    for fd in (src_w, tee_w, tee_r):
        os.set_blocking(fd, False)
    log = logfile.LogFile(str(tmp_path / "log.json"), 0, 1)
    ended: list[bool] = []
    pump = logfile.Pump(
        lambda fd, cb: reactor.want(fd, read=cb), src_r, "stdout", log,
        lambda: ended.append(True), tee=tee_w,
        want_write=lambda fd, cb: reactor.want(fd, write=cb),
    )  # fmt: skip
    data = b"".join(b"line %d\n" % n for n in range(100_000))  # ~790 kB: both pipes fill
    sent, received = 0, bytearray()

    def step(read_tee: bool) -> None:
        nonlocal sent
        if sent < len(data):
            with contextlib.suppress(BlockingIOError):
                sent += os.write(src_w, data[sent : sent + 65536])
            if sent == len(data):
                os.close(src_w)
        reactor.poll(0)
        if read_tee:
            with contextlib.suppress(BlockingIOError):
                received.extend(os.read(tee_r, 65536))

    for _ in range(200):  # nobody reads the tee: it fills, then the source pipe does
        step(read_tee=False)
    assert sent < len(data)  # the process would be blocked now, as on a full FIFO
    held = sent
    for _ in range(50):
        step(read_tee=False)
    assert sent == held
    for _ in range(100_000):  # a reader comes: everything flows, to the end
        step(read_tee=True)
        if ended:
            break
    assert ended == [True]
    assert pump.finished
    with contextlib.suppress(BlockingIOError):
        received.extend(os.read(tee_r, 1 << 20))
    assert bytes(received) == data
    log.close()
    assert "".join(e["log"] for e in entries(tmp_path / "log.json")).encode() == data
    for fd in (src_r, tee_r, tee_w):
        os.close(fd)


def test_a_tee_must_be_an_absolute_path():
    assert logfile.tee_of("ctrd-log:///l/log.json?max-size=1&tee=/run/x/stdout") == (
        "/run/x/stdout"
    )
    assert logfile.tee_of("ctrd-log:///l/log.json") == ""
    with pytest.raises(ValueError, match="tee must be an absolute path"):
        logfile.tee_of("ctrd-log:///l/log.json?tee=relative")


def test_a_tee_nobody_can_read_is_dropped_and_the_log_goes_on(tmp_path: Path):
    """Even while the pump waits for a full tee: the reader going away ends the copy only."""
    import contextlib
    import os

    from shim.stdio import Reactor

    reactor = Reactor()
    src_r, src_w = os.pipe()
    tee_r, tee_w = os.pipe()
    for fd in (src_w, tee_w):
        os.set_blocking(fd, False)
    log = logfile.LogFile(str(tmp_path / "log.json"), 0, 1)
    ended: list[bool] = []
    logfile.Pump(
        lambda fd, cb: reactor.want(fd, read=cb), src_r, "stdout", log,
        lambda: ended.append(True), tee=tee_w,
        want_write=lambda fd, cb: reactor.want(fd, write=cb),
    )  # fmt: skip
    data = b"".join(b"%07d\n" % n for n in range(30_000))  # 240 kB: more than the tee holds
    sent = 0
    while tee_w not in reactor.selector.get_map():  # until the pump waits for the tee
        with contextlib.suppress(BlockingIOError):
            sent += os.write(src_w, data[sent : sent + 4096])
        reactor.poll(0)
    os.close(tee_r)  # the client goes away (its end: EPIPE from now on)
    while sent < len(data):
        with contextlib.suppress(BlockingIOError):
            sent += os.write(src_w, data[sent : sent + 4096])
        reactor.poll(0)
    os.close(src_w)
    for _ in range(50):
        reactor.poll(0)
    assert ended == [True]
    assert reactor.selector.get_map() == {}  # nothing left to watch: no busy loop
    log.close()
    assert "".join(e["log"] for e in entries(tmp_path / "log.json")).encode() == data
    os.close(src_r)
    os.close(tee_w)
