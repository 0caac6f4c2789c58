"""A process's stdio as the shim sets it up, and the one loop that moves bytes.

Without a terminal the shim copies no output: the runtime hands the fds the shim opened straight
to the process (runc's "pass-through" mode), so output written just before an exit is already
in the pipe when the process is reaped, and nothing can be lost. The shim opens

- stdin: the client's FIFO read-only and non-blocking (a FIFO without a writer yet would block
  the open), copied into a pipe the process reads, so that CloseIO (or the client closing the
  FIFO) is an EOF the process sees even while a client still holds the FIFO;
- stdout and stderr: the client's FIFO read-write, which never blocks or fails even when no
  client reads (a write-only open would fail with ENXIO), and which the shim keeps until the
  process exits, so the process never gets EPIPE when a client goes away (like containerd, the
  pipe then fills and blocks the writer until a client reads again). But first the shim waits,
  up to READER_WAIT, for the client's reading end: ctr and docker open it on a thread of their
  own, which may not have run yet, and a FIFO's contents go with its last open end, so output
  written before the reader came and let go of by the shim at the exit would be lost (the
  client, told of the exit, stops waiting for its open). containerd's shim waits for the reader
  without a limit, in Create;
- but a FIFO for stderr gets a pipe in between, which the shim copies into the FIFO only once
  the runtime has started the process: the runtime's own stderr is the process's, and when it
  fails it says why there (and to the shim, through its log). containerd's shim copies through
  pipes too, from the same moment, so a client never sees the runtime's words on its stderr;
  the copy ends at the pipe's end of file (every writer gone), and only then does `Io.done`
  hold, so what was written last is delivered;
- `file:///path`: the file, appended to (created 0640 with its directories);
- `ctrd-log:///path?max-size=N&max-files=N[&tee=/fifo[&tee-drop=1]]` (stdout and stderr
  both): pipes the shim reads into a log it keeps (`logfile`), each stream copied to its `tee`
  FIFO as well when a client is attached (a terminal's output too, to stdout's tee);
  `ctrd-log:///path?format=cri[&max-line=N]`: the same in the
  CRI's format (`crilog`), which `Io.reopen_log` opens again by its path;
- `binary:///path?k=v`: a logging program started with the process's stdout and stderr on its
  fds 3 and 4 and a readiness pipe on fd 5 (it closes it when ready), as containerd does;
- "": /dev/null.

`stdin_hold` (a create or exec parameter): the shim holds a write end of the stdin FIFO
itself, so the process's input ends only with CloseIO, never because clients come and go
(the CRI's attach: one client after another writes into the container's stdin).

With a terminal, the runtime passes the pty master over a console socket and the shim copies
master -> stdout and stdin -> master through `Reactor`. After the process exits, the copy goes
on until the master reports EIO (no slave left and everything read): only then is stdout
closed, and only then does `Io.done` hold, so the last line of output is always delivered.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import selectors
import socket
import stat
import struct
import termios
import time
from collections.abc import Callable
from urllib.parse import parse_qsl, urlsplit

from shim import logfile

CHUNK = 1 << 16
READER_WAIT = 1.0  # seconds an output FIFO may wait for its client's reading end
Callback = Callable[[], None]


class Reactor:
    """Readiness callbacks per fd over one selector; an fd may want reading, writing or both."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self._wants: dict[int, tuple[Callback | None, Callback | None]] = {}

    def want(self, fd: int, read: Callback | None = None, write: Callback | None = None) -> None:
        """Set the callbacks of `fd` (None: not interested); both None forgets the fd."""
        events = (selectors.EVENT_READ if read else 0) | (selectors.EVENT_WRITE if write else 0)
        known = fd in self._wants
        if not events:
            if known:
                del self._wants[fd]
                self.selector.unregister(fd)
            return
        self._wants[fd] = (read, write)
        if known:
            self.selector.modify(fd, events)
        else:
            self.selector.register(fd, events)

    def wants(self, fd: int) -> tuple[Callback | None, Callback | None]:
        return self._wants.get(fd, (None, None))

    def forget(self, fd: int) -> None:
        self.want(fd)

    def poll(self, timeout: float | None) -> None:
        for key, mask in self.selector.select(timeout):
            read, write = self._wants.get(key.fd, (None, None))
            if mask & selectors.EVENT_READ and read:
                read()
            # The read callback may have changed what the fd wants.
            read, write = self._wants.get(key.fd, (None, None))
            if mask & selectors.EVENT_WRITE and write:
                write()


class Pipe:
    """Copy src -> dst through a bounded buffer, non-blocking; `done` runs once at the end.

    The end is EOF or EIO on src (then the buffer is flushed first) or an error on dst (then
    what is left is dropped: nobody can read it).
    """

    def __init__(
        self, reactor: Reactor, src: int, dst: int, done: Callback, on_read: Callback | None = None
    ) -> None:
        self._reactor = reactor
        self.src = src
        self.dst = dst
        self._done = done
        self._buffer = bytearray()
        self._eof = False
        self.finished = False
        self._set_read(True)

    def _set_read(self, on: bool) -> None:
        self._update(self.src, read=self._read if on else None)

    def _set_write(self, on: bool) -> None:
        self._update(self.dst, write=self._write if on else None)

    def _update(self, fd: int, **change: Callback | None) -> None:
        read, write = self._reactor.wants(fd)
        if "read" in change:
            read = change["read"]
        if "write" in change:
            write = change["write"]
        self._reactor.want(fd, read=read, write=write)

    def _read(self) -> None:
        try:
            data = os.read(self.src, CHUNK)
        except BlockingIOError:
            return
        except OSError:  # EIO: the pty has no slave left and nothing more to read
            data = b""
        if not data:
            self._eof = True
            self._set_read(False)
            if not self._buffer:
                self._finish()
            return
        self._buffer += data
        self._set_read(False)  # one chunk in flight at a time: the writer sets the pace
        self._write()

    def _write(self) -> None:
        if self.finished:
            return
        try:
            written = os.write(self.dst, self._buffer)
        except BlockingIOError:
            written = 0
        except OSError:
            self._buffer.clear()
            self._set_write(False)
            self._set_read(False)
            self._finish()
            return
        del self._buffer[:written]
        if self._buffer:
            self._set_write(True)
            return
        self._set_write(False)
        if self._eof:
            self._finish()
        else:
            self._set_read(True)

    def end_after_pending(self) -> None:
        """The source gets nothing more: copy what it holds now and what is buffered, then end.

        A client writes its input before it calls CloseIO, so that input is in the FIFO by
        then, however far behind the copy is.
        """
        if self.finished or self._eof:
            return
        self._set_read(False)
        while True:
            try:
                data = os.read(self.src, CHUNK)
            except OSError:  # EAGAIN: all read
                break
            if not data:
                break
            self._buffer += data
        self._eof = True
        if self._buffer:
            self._write()  # ends once the buffer is written
        else:
            self._finish()

    def stop(self) -> None:
        """Stop copying now (what is buffered is dropped)."""
        if not self.finished:
            self._set_read(False)
            self._set_write(False)
            self._buffer.clear()
            self._finish()

    def _finish(self) -> None:
        if not self.finished:
            self.finished = True
            self._done()


def _open_output(uri: str, namespace: str, cid: str, io: Io) -> int:
    """The fd a process writes one output stream to."""
    if not uri:
        return io.own(os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC))
    parts = urlsplit(uri)
    if parts.scheme == "file":
        os.makedirs(os.path.dirname(parts.path) or "/", exist_ok=True)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        return io.own(os.open(parts.path, flags, 0o640))
    if parts.scheme in ("", "fifo"):
        return io.own(_open_fifo(parts.path if parts.scheme else uri, io.reader_deadline))
    raise ValueError(f'unsupported stdio URI "{uri}"')


def _open_fifo(path: str, deadline: float) -> int:
    """An output FIFO, read-write, once its reader is there or at `deadline` (see the module's
    doc). A write-only open without blocking succeeds only when there is a reader; it is held
    until the read-write one is open, since a reader it woke would otherwise see an end of file
    as it closes."""
    probe = -1
    while probe < 0:
        try:
            probe = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            if e.errno != errno.ENXIO or time.monotonic() >= deadline:
                break  # no reader yet: the read-write open below says what else is wrong
            time.sleep(0.002)
    try:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)
    finally:
        if probe >= 0:
            os.close(probe)


def _start_logger(uri: str, namespace: str, cid: str, io: Io) -> tuple[int, int]:
    """Start a `binary://` logging program; the write ends of its stdout and stderr pipes."""
    parts = urlsplit(uri)
    args = [parts.path]
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        args += [key, value] if value else [key]
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    env = dict(os.environ, CONTAINER_ID=cid, CONTAINER_NAMESPACE=namespace)
    actions = [
        (os.POSIX_SPAWN_DUP2, null, 0),
        (os.POSIX_SPAWN_DUP2, null, 1),
        (os.POSIX_SPAWN_DUP2, null, 2),
        (os.POSIX_SPAWN_DUP2, out_r, 3),
        (os.POSIX_SPAWN_DUP2, err_r, 4),
        (os.POSIX_SPAWN_DUP2, ready_w, 5),
    ]
    try:
        os.posix_spawn(parts.path, args, env, file_actions=actions)
    finally:
        for fd in (out_r, err_r, ready_w, null):
            os.close(fd)
    try:
        os.read(ready_r, 1)  # EOF once the logger closed fd 5: it is ready
    finally:
        os.close(ready_r)
    return io.own(out_w), io.own(err_w)


class Io:
    """The stdio of one process: the fds its runtime gets, and the shim's side of them."""

    def __init__(
        self,
        reactor: Reactor,
        stdin: str,
        stdout: str,
        stderr: str,
        terminal: bool,
        namespace: str,
        cid: str,
        hold_stdin: bool = False,
    ) -> None:
        self.reactor = reactor
        self.hold_stdin = hold_stdin
        self.stdin, self.stdout, self.stderr, self.terminal = stdin, stdout, stderr, terminal
        self._owned: list[int] = []
        self.master = -1
        self._pipes: list[Pipe] = []
        self._out_fd = -1
        self._in_fd = -1
        self._pipe_r = self._pipe_w = -1  # the process's stdin pipe, without a terminal
        self._stdin_closed = False  # CloseIO came
        self._log: logfile.Log | None = None  # the shim's own log (ctrd-log://)
        self._log_open = 0
        self._log_closed = False
        self._pumps: list[logfile.Pump] = []
        self._given: list[int] = []  # fds only the process must hold, once it runs
        self._err_r = self._err_fifo = -1  # stderr's pipe and its FIFO (see the module's doc)
        self.done = not terminal  # pass-through needs no draining
        self._on_done: list[Callback] = []
        self.size: tuple[int, int] | None = None
        self.reader_deadline = time.monotonic() + READER_WAIT  # shared by stdout and stderr
        try:
            self.fds = self._open(namespace, cid)
        except BaseException:
            self.close()
            raise

    def own(self, fd: int) -> int:
        self._owned.append(fd)
        return fd

    def _open(self, namespace: str, cid: str) -> tuple[int, int, int]:
        null_in = self.own(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        null_out = self.own(os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC))
        stdin = null_in
        if self.stdin:
            stdin = self.own(os.open(self.stdin, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
            if self.hold_stdin:  # no client's close ends the input: only CloseIO does
                self.own(os.open(self.stdin, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC))
        if self.terminal:
            if self.stdin:
                self._in_fd = stdin
            if self.stdout.startswith(logfile.SCHEME + ":"):
                self._log = logfile.open_log(self.stdout)
            elif self.stdout:
                self._out_fd = _open_output(self.stdout, namespace, cid, self)
                os.set_blocking(self._out_fd, False)
            return (null_in, null_out, null_out)
        if self.stdin:
            # The process reads a pipe the shim fills from the FIFO: closing the pipe's write
            # end (CloseIO, or the client closing the FIFO) is an EOF the process sees even
            # while a client still holds the FIFO open.
            read_end, self._pipe_w = os.pipe2(os.O_CLOEXEC)
            self._pipe_r = self.own(read_end)
            self.own(self._pipe_w)
            os.set_blocking(self._pipe_w, False)
            self._in_fd = stdin
            self._copy_stdin(self._pipe_w)
            stdin = read_end
        if self.stdout.startswith("binary://"):
            out, err = _start_logger(self.stdout, namespace, cid, self)
            return (stdin, out, err)
        if self.stdout.startswith(logfile.SCHEME + ":"):
            out, err = self._open_log(self.stdout)
            return (stdin, out, err)
        out = _open_output(self.stdout, namespace, cid, self)
        if self.stderr and self.stderr == self.stdout:
            err = out
        else:
            err = _open_output(self.stderr, namespace, cid, self)
        if urlsplit(self.stderr).scheme in ("", "fifo") and self.stderr:
            if err == out:  # the copy's end must be its own (it is made non-blocking)
                err = self.own(os.open(f"/proc/self/fd/{out}", os.O_RDWR | os.O_CLOEXEC))
            err = self._through_pipe(err)
        return (stdin, out, err)

    def _through_pipe(self, fifo: int) -> int:
        """The end of a new pipe the process writes stderr to; copied into `fifo` from
        `runtime_started` on (see the module's doc)."""
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        self._err_r, self._err_fifo = self.own(read_end), fifo
        self._given.append(self.own(write_end))
        self.done = False
        return write_end

    def _open_log(self, uri: str) -> tuple[int, int]:
        """Pipes into the shim's log file for stdout and stderr; the ends the process gets."""
        self._log = logfile.open_log(uri)
        self._log_open = 2
        ends = []
        for stream in ("stdout", "stderr"):
            read_end, write_end = os.pipe2(os.O_CLOEXEC)
            self.own(read_end)
            self._given.append(self.own(write_end))
            uri = self.stdout if stream == "stdout" else self.stderr
            tee_fd = self._open_tee(uri)
            pump = logfile.Pump(
                self._want_read, read_end, stream, self._log, self._stream_done(tee_fd),
                tee=tee_fd, want_write=self._want_write, tee_drop=logfile.tee_drops(uri),
            )  # fmt: skip
            self._pumps.append(pump)
            ends.append(write_end)
        self.done = False
        return ends[0], ends[1]

    def _open_tee(self, uri: str) -> int:
        """The FIFO a logged stream is copied to as well (`tee=`), or -1."""
        tee = logfile.tee_of(uri)
        if not tee:
            return -1
        # Opened read-write: never blocks or fails, whether a client reads or not.
        tee_fd = self.own(os.open(tee, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC))
        if not stat.S_ISFIFO(os.fstat(tee_fd).st_mode):
            raise ValueError(f'tee "{tee}" is not a FIFO')
        return tee_fd

    def _want_read(self, fd: int, read: Callback | None) -> None:
        self.reactor.want(fd, read=read)

    def _want_write(self, fd: int, write: Callback | None) -> None:
        self.reactor.want(fd, write=write)

    def _stream_done(self, tee: int) -> Callback:
        """What ends a logged stream: its tee FIFO closes (the attached client's EOF)."""

        def done() -> None:
            if tee >= 0:
                self._close(tee)
            self._log_done()

        return done

    def _log_done(self) -> None:
        self._log_open -= 1
        if self._log_open == 0:
            if self._log is not None:
                self._log.close()
                self._log_closed = True
            self._output_done()

    def reopen_log(self) -> bool:
        """Open the shim's log again by its path (kubelet renamed it to rotate it); False when
        there is no log, or its streams have ended."""
        if self._log is None or self._log_closed:
            return False
        self._log.reopen()
        return True

    def attach_console(self, master: int) -> None:
        """Start copying through the pty master the runtime handed over."""
        self.master = self.own(master)
        os.set_blocking(master, False)
        if self.size is not None:
            self.resize(*self.size)
        if self._log is not None:  # the terminal's output goes to the log, as stdout
            self._log_open = 1
            tee = self._open_tee(self.stdout)
            self._pumps.append(
                logfile.Pump(
                    self._want_read,
                    master,
                    "stdout",
                    self._log,
                    self._stream_done(tee),
                    tee=tee,
                    want_write=self._want_write,
                    tee_drop=logfile.tee_drops(self.stdout),
                )
            )
            if self._in_fd >= 0:
                self._copy_stdin(master)
            return
        if self._out_fd < 0:
            self._out_fd = self.own(os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC))
        self._pipes.append(Pipe(self.reactor, master, self._out_fd, self._output_done))
        if self._in_fd >= 0:
            self._copy_stdin(master)

    def resize(self, width: int, height: int) -> None:
        self.size = (width, height)
        if self.master >= 0:
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))

    def close_stdin(self) -> None:
        """The client will send no more input: what it sent is delivered, then the end of it
        (with a terminal whose console has not come yet, once it comes)."""
        self._stdin_closed = True
        for pipe in self._pipes:
            if pipe.src == self._in_fd:
                pipe.end_after_pending()  # and `_input_done` once it ends
                return
        if not (self.terminal and self.master < 0):
            self._input_done()

    def _copy_stdin(self, dst: int) -> None:
        pipe = Pipe(self.reactor, self._in_fd, dst, self._input_done)
        self._pipes.append(pipe)
        if self._stdin_closed:
            pipe.end_after_pending()

    def _input_done(self) -> None:
        if self._in_fd >= 0:
            self._close(self._in_fd)
            self._in_fd = -1
        if self._pipe_w >= 0:
            self._close(self._pipe_w)
            self._pipe_w = -1

    def _output_done(self) -> None:
        self.done = True
        if self._out_fd >= 0:
            self._close(self._out_fd)
            self._out_fd = -1
        callbacks, self._on_done = self._on_done, []
        for callback in callbacks:
            callback()

    @property
    def logged(self) -> bool:
        """Whether the shim copies the output into a log it keeps (`ctrd-log://`): its
        readers (kubelet, `ctrctl logs`) read it once the exit is known, so a logged init's
        exit is announced only once `done` holds (`shim.task`)."""
        return self._log is not None

    def when_done(self, callback: Callback) -> None:
        if self.done:
            callback()
        else:
            self._on_done.append(callback)

    def runtime_started(self) -> None:
        """The runtime has given the process its ends of the pipes: the shim closes its
        copies, so that the process's exit (and its children's) is an EOF the shim sees."""
        if self._pipe_r >= 0:
            self._close(self._pipe_r)
            self._pipe_r = -1
        for fd in self._given:
            self._close(fd)
        self._given.clear()
        if self._err_r >= 0 and not any(p.src == self._err_r for p in self._pipes):
            os.set_blocking(self._err_r, False)
            os.set_blocking(self._err_fifo, False)
            self._pipes.append(Pipe(self.reactor, self._err_r, self._err_fifo, self._err_done))

    def _err_done(self) -> None:
        """stderr's copy ended (every writer gone, or its FIFO failed): the output is done."""
        for fd in (self._err_r, self._err_fifo):
            self._close(fd)
        self._err_r = self._err_fifo = -1
        self._output_done()

    def process_exited(self) -> None:
        """Close the shim's copies of the pass-through fds: the readers get EOF. A log is
        read on until its pipes' EOF (what the process wrote last is still in them)."""
        if self.terminal or self._log is not None:
            return
        if self._err_r < 0 or not any(p.src == self._err_r for p in self._pipes):
            self.close()
            return
        # Everything but stderr's copy, which ends at its end of file (`_err_done`).
        for pipe in [p for p in self._pipes if p.src != self._err_r]:
            pipe.stop()
            self._pipes.remove(pipe)
        for fd in set(self._owned) - {self._err_r, self._err_fifo}:
            self._close(fd)
        self._in_fd = self._pipe_r = self._pipe_w = -1

    def _close(self, fd: int) -> None:
        self.reactor.forget(fd)
        if fd in self._owned:
            self._owned.remove(fd)
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        """Stop every copy and close every fd (idempotent)."""
        for pipe in self._pipes:
            pipe.stop()
        self._pipes.clear()
        for pump in self._pumps:
            pump.finish()
        self._pumps.clear()
        if self._log is not None:
            self._log.close()
            self._log_closed = True
        for fd in set(self._owned):
            self.reactor.forget(fd)
            with contextlib.suppress(OSError):
                os.close(fd)
        self._owned.clear()
        self._in_fd = self._out_fd = self.master = self._pipe_r = self._pipe_w = -1
        self._err_r = self._err_fifo = -1
        if not self.done:
            self._output_done()


def console_socket(path: str) -> socket.socket:
    """A listening socket for the runtime to send a pty master over."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(1)
    except BaseException:
        sock.close()
        raise
    return sock


def receive_master(sock: socket.socket, path: str) -> int:
    """The pty master the runtime sent (it has exited, so the fd is waiting)."""
    try:
        sock.settimeout(5)
        conn, _ = sock.accept()
        with conn:
            _, fds, _, _ = socket.recv_fds(conn, 4096, 1)
        if not fds:
            raise OSError(errno.EPROTO, "the runtime sent no terminal")
        return fds[0]
    finally:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
