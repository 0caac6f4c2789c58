"""A log's `tee-drop` copy (the CRI's attach FIFOs): the process is never held back by a tee
nobody reads; the log keeps every byte."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from shim import logfile
from shim.stdio import Reactor


def test_tee_drop_is_read_from_the_uri():
    assert logfile.tee_drops("ctrd-log:///l?format=cri&tee=/f&tee-drop=1")
    assert not logfile.tee_drops("ctrd-log:///l?format=cri&tee=/f")


def test_a_dropping_tee_never_holds_the_stream_back(tmp_path: Path):
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
        want_write=lambda fd, cb: reactor.want(fd, write=cb), tee_drop=True,
    )  # fmt: skip
    data = b"".join(b"line %d\n" % n for n in range(100_000))  # ~790 kB: far past a pipe's
    sent = 0
    for _ in range(100_000):  # nobody reads the tee, and yet everything flows to the end
        if sent < len(data):
            with contextlib.suppress(BlockingIOError):
                sent += os.write(src_w, data[sent : sent + 65536])
            if sent == len(data):
                os.close(src_w)
        reactor.poll(0)
        if ended:
            break
    assert ended == [True]
    teed = bytearray()
    with contextlib.suppress(BlockingIOError):
        os.set_blocking(tee_r, False)
        while chunk := os.read(tee_r, 1 << 16):
            teed += chunk
    assert 0 < len(teed) < len(data)  # what the tee took before it was full; the rest dropped
    log.close()
    logged = "".join(
        json.loads(line)["log"] for line in (tmp_path / "log.json").read_text().splitlines()
    )
    assert logged.encode() == data
    for fd in (src_r, tee_r, tee_w):
        os.close(fd)


def test_a_dropping_tee_that_takes_part_of_a_read_drops_the_rest(tmp_path: Path):
    """A FIFO with a little room takes part of a read: the rest is dropped, the stream goes on
    (it used to wait for the FIFO to be writable again, which nobody reading it never is)."""
    reactor = Reactor()
    src_r, src_w = os.pipe()
    tee_r, tee_w = os.pipe()
    os.set_blocking(tee_w, False)
    os.write(tee_w, b"x")  # one of the FIFO's 16 pages taken: a 64 KiB write goes in part
    log = logfile.LogFile(str(tmp_path / "log.json"), 0, 1)
    ended: list[bool] = []
    logfile.Pump(
        lambda fd, cb: reactor.want(fd, read=cb), src_r, "stdout", log,
        lambda: ended.append(True), tee=tee_w,
        want_write=lambda fd, cb: reactor.want(fd, write=cb), tee_drop=True,
    )  # fmt: skip
    data = b"y" * 65535 + b"\n"
    os.write(src_w, data)
    os.close(src_w)
    for _ in range(100):
        reactor.poll(0.01)
        if ended:
            break
    assert ended == [True]
    log.close()
    logged = "".join(
        json.loads(line)["log"] for line in (tmp_path / "log.json").read_text().splitlines()
    )
    assert logged.encode() == data
    for fd in (src_r, tee_r, tee_w):
        os.close(fd)
