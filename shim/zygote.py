"""The zygote: one pre-loaded Python process per state dir that forks a shim per container.

A shim started the ordinary way costs ~7 MB of private memory, most of it the interpreter and
the modules it imports, identical in every shim. The zygote imports all of that once, moves it
out of the garbage collector's reach (`gc.freeze()`, so collections in the children do not
touch, and so copy, those pages) and forks: a shim then costs what it changes, under 1 MB.
Forking is also faster than starting an interpreter, which a `ctr run` feels.

The daemon talks to the zygote over `<state>/zygote.sock` with the shim protocol (one request
per connection): `ping` -> {pid, version}, `spawn` {config} -> {pid}, `exit`. A spawned shim is
forked once and starts its own session, so it survives both the zygote and the daemon; the
zygote ignores SIGCHLD, so the kernel reaps the shims it outlives. (Forking twice, the usual
daemon's way, cost every container start another fork and the exit of the middle process,
~2 ms.) `version` identifies the shim's code, so a daemon that was upgraded replaces a zygote
still running the old code.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import os
import signal
import socket
import sys
import time
import traceback
from typing import Any

from shim import memory, protocol, task

SOCKET = "zygote.sock"
PID_FILE = "zygote.pid"
LOG = "zygote.log"
PR_SET_CHILD_SUBREAPER = 36


def code_version() -> str:
    """A digest of the shim's source files: equal iff the code is the same."""
    directory = os.path.dirname(os.path.abspath(__file__))
    digest = hashlib.sha256(sys.executable.encode())
    for name in sorted(os.listdir(directory)):
        if name.endswith(".py"):
            with open(os.path.join(directory, name), "rb") as f:
                digest.update(name.encode() + b"\0" + f.read())
    return digest.hexdigest()[:16]


def _read_request(conn: socket.socket) -> protocol.Request:
    decoder = protocol.Decoder()
    conn.settimeout(10)
    while True:
        data = conn.recv(1 << 16)
        if not data:
            raise protocol.ProtocolError("connection closed before a request")
        frames = decoder.feed(data)
        if frames:
            message = protocol.parse(frames[0])
            if not isinstance(message, protocol.Request):
                raise protocol.ProtocolError("expected a request")
            return message


def _listen(path: str) -> socket.socket:
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        sock.listen(64)
    except BaseException:
        sock.close()
        raise
    return sock


class Zygote:
    def __init__(self, listener: socket.socket) -> None:
        self.listener = listener
        self.version = code_version()
        self._prctl: Any = None
        try:
            import ctypes

            self._prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (ImportError, OSError):
            pass
        try:
            import setproctitle

            self._title: Any = setproctitle.setproctitle
        except ImportError:
            self._title = None

    def serve(self) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # shims that exit are reaped by the kernel
        gc.collect()
        gc.freeze()
        memory.mark_mergeable()  # the shims inherit the mark: see shim.memory
        while True:
            conn, _ = self.listener.accept()
            with conn:
                try:
                    request = _read_request(conn)
                except (OSError, protocol.ProtocolError) as e:
                    _log("bad_request", error=str(e))
                    continue
                try:
                    if request.method == "exit":
                        conn.sendall(protocol.encode(protocol.Response(request.id, {}).to_wire()))
                        return
                    if request.method == "ping":
                        result: Any = {"pid": os.getpid(), "version": self.version}
                    elif request.method == "spawn":
                        result = self.spawn(conn, task.Config(**request.params))
                    else:
                        raise ValueError(f"unknown method {request.method!r}")
                    reply = protocol.Response(request.id, result).to_wire()
                except (OSError, ValueError, TypeError) as e:
                    _log("spawn_failed", error=repr(e))
                    reply = protocol.ErrorResponse(request.id, protocol.INTERNAL, str(e)).to_wire()
                with contextlib.suppress(OSError):
                    conn.sendall(protocol.encode(reply))

    def spawn(self, conn: socket.socket, config: task.Config) -> dict[str, Any]:
        listener = _listen(config.socket)
        try:
            pid = os.fork()
        except BaseException:
            listener.close()
            raise
        if pid == 0:  # the shim: a session of its own, the zygote's sockets closed
            try:
                conn.close()
                self.listener.close()
                # A session leader opening a terminal would make it its controlling one: the
                # shim never opens one (a console's master fd comes over a socket).
                os.setsid()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the zygote ignores it
            except BaseException:
                with contextlib.suppress(BaseException):
                    traceback.print_exc()
                os._exit(1)
            self._become_shim(config, listener)
        listener.close()
        return {"pid": pid}

    def _become_shim(self, config: task.Config, listener: socket.socket) -> None:
        status = 0
        try:
            os.chdir(config.bundle)
            null = os.open(os.devnull, os.O_RDWR)
            log = os.open(
                os.path.join(config.bundle, "shim.log"),
                os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                0o600,
            )
            os.dup2(null, 0)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.close(null)
            os.close(log)
            if self._prctl is not None:
                self._prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
            if self._title is not None:
                self._title(f"shim {config.namespace} {config.id} {config.address}")
            task.serve(config, listener)
        except BaseException:
            status = 1
            with contextlib.suppress(BaseException):
                traceback.print_exc()
                sys.stderr.flush()
        os._exit(status)


def _log(event: str, **fields: Any) -> None:
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"{time.time():.3f} {event} {fields}\n")
        sys.stderr.flush()


def main(state: str) -> int:
    """Start a zygote for `state` in the background; returns once it accepts requests."""
    path = os.path.join(state, SOCKET)
    listener = _listen(path)
    pid = os.fork()
    if pid:
        listener.close()
        os.waitpid(pid, 0)
        return 0
    try:
        os.setsid()
        if os.fork():
            os._exit(0)
        os.chdir("/")
        null = os.open(os.devnull, os.O_RDWR)
        log = os.open(os.path.join(state, LOG), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(null)
        os.close(log)
        with open(os.path.join(state, PID_FILE), "w") as f:
            f.write(str(os.getpid()))
        Zygote(listener).serve()
        with contextlib.suppress(OSError):
            os.unlink(path)
            os.unlink(os.path.join(state, PID_FILE))
    except BaseException:
        with contextlib.suppress(BaseException):
            traceback.print_exc()
        os._exit(1)
    os._exit(0)
