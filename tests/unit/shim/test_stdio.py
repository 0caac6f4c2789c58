"""CloseIO on a process's stdin (shim.stdio.Io.close_stdin), on real FIFOs, pipes and a pty."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shim import stdio


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "stdin"
    os.mkfifo(path)
    return path


@pytest.fixture
def reactor() -> Iterator[stdio.Reactor]:
    reactor = stdio.Reactor()
    yield reactor
    reactor.selector.close()


def until(reactor: stdio.Reactor, done: Callable[[], bool], timeout: float = 10) -> None:
    """Run the shim's loop until `done()` holds."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        reactor.poll(0.01)


def read_to_end(fd: int, reactor: stdio.Reactor) -> bytes:
    """What the process reads from `fd` up to its end, while the shim's loop runs."""
    os.set_blocking(fd, False)
    chunks: list[bytes] = []
    ended = False

    def more() -> bool:
        nonlocal ended
        try:
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
            ended = True
        except BlockingIOError:
            pass
        return ended

    until(reactor, more)
    return b"".join(chunks)


def test_input_written_before_closeio_reaches_the_process(fifo, reactor):
    io = stdio.Io(reactor, str(fifo), "", "", False, "ns", "c")
    client = os.open(fifo, os.O_WRONLY)
    try:
        os.write(client, b"to-cat\n")
        io.close_stdin()  # before the shim's loop ever ran: the input is still in the FIFO
        assert read_to_end(io.fds[0], reactor) == b"to-cat\n"
    finally:
        os.close(client)
        io.close()


def test_closeio_after_more_than_a_fifo_holds_delivers_all_of_it(fifo, reactor):
    io = stdio.Io(reactor, str(fifo), "", "", False, "ns", "c")
    data = os.urandom(3 << 20)
    client = os.open(fifo, os.O_WRONLY)
    writer = threading.Thread(target=lambda: os.write(client, data) and None)
    writer.start()
    try:
        received = bytearray()
        os.set_blocking(io.fds[0], False)

        def written() -> bool:
            with contextlib.suppress(BlockingIOError):
                received.extend(os.read(io.fds[0], 1 << 16))
            return not writer.is_alive()

        until(reactor, written)
        io.close_stdin()  # the client still holds the FIFO: the process must see the end anyway
        received += read_to_end(io.fds[0], reactor)
        assert len(received) == len(data)
        assert received == data
    finally:
        writer.join()
        os.close(client)
        io.close()


def test_closeio_before_the_console_comes_delivers_the_input_once_it_does(fifo, reactor):
    io = stdio.Io(reactor, str(fifo), "", "", True, "ns", "c")
    client = os.open(fifo, os.O_WRONLY)
    master, slave = os.openpty()
    try:
        os.write(client, b"typed\n")
        io.close_stdin()
        io.attach_console(master)  # the io owns the master from here
        os.set_blocking(slave, False)
        line = bytearray()

        def arrived() -> bool:
            with contextlib.suppress(BlockingIOError):
                line.extend(os.read(slave, 1024))
            return line.endswith(b"\n")

        until(reactor, arrived)
        assert bytes(line) == b"typed\n"
    finally:
        os.close(client)
        os.close(slave)
        io.close()


def _client_reader(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_NONBLOCK)


def _read_now(fd: int) -> bytes:
    with contextlib.suppress(BlockingIOError):
        return os.read(fd, 1 << 16)
    return b""


def test_what_the_runtime_says_on_stderr_before_it_fails_never_reaches_the_client(
    tmp_path, reactor
):
    path = tmp_path / "stderr"
    os.mkfifo(path)
    client = _client_reader(path)
    io = stdio.Io(reactor, "", "", str(path), False, "ns", "c")
    try:
        os.write(io.fds[2], b"exec failed: unable to start container process\n")  # runc's words
        reactor.poll(0.05)
        io.close()  # the runtime failed: the shim lets go of the process's stdio
        assert _read_now(client) == b""
    finally:
        os.close(client)


def test_stderr_reaches_the_client_once_the_process_runs_and_io_is_done_at_its_end(
    tmp_path, reactor
):
    path = tmp_path / "stderr"
    os.mkfifo(path)
    client = _client_reader(path)
    io = stdio.Io(reactor, "", "", str(path), False, "ns", "c")
    process_end = os.dup(io.fds[2])  # what the runtime hands the process
    try:
        io.runtime_started()
        os.write(process_end, b"last words\n")
        io.process_exited()  # reaped before the shim copied its last words
        assert not io.done
        os.close(process_end)
        process_end = -1
        received = bytearray()

        def copied() -> bool:
            received.extend(_read_now(client))
            return io.done

        until(reactor, copied)
        received.extend(_read_now(client))
        assert bytes(received) == b"last words\n"
    finally:
        if process_end >= 0:
            os.close(process_end)
        os.close(client)
        io.close()


def test_stdout_stays_blocking_when_stderr_names_the_same_fifo(tmp_path, reactor):
    path = tmp_path / "output"
    os.mkfifo(path)
    client = _client_reader(path)
    io = stdio.Io(reactor, "", str(path), str(path), False, "ns", "c")
    try:
        io.runtime_started()  # the stderr copy starts: its end of the FIFO is non-blocking
        assert os.get_blocking(io.fds[1])  # the process's stdout is not
    finally:
        os.close(client)
        io.close()
