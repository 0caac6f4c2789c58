"""The shim proper: one container's processes, their stdio and exits, and the event stream.

One thread, one selector loop (`stdio.Reactor`): the listening socket, the daemon's
connections, the pty copies, and a self-pipe that SIGCHLD writes to. Requests are handled to
completion in turn (a runtime command blocks the loop for its few milliseconds), except `wait`
and a `delete` that waits for output to drain: those are answered later.

Exits: the shim is a child subreaper, so every process of the container ends up its child.
Each reaped pid is matched to the process it belongs to; its exit is journaled (`journal`)
and only then announced to the event subscribers and to whoever waits. An exec's exit is
always announced before its container's init exit: when the init dies first, its exit is held
until the execs it took with it are reaped. Statuses are containerd's (128 + n for signal n).
The exit of a started init whose output the shim logs (`ctrd-log://`) is announced only once
everything the container wrote is in the log: when its pipes reach their end of file, or after
EXIT_DRAIN_TIMEOUT (a process left holding them, in a pod's shared PID namespace, must not hold
the exit for good: containerd's shim waits 2 s for its copies too). Its readers (kubelet and
critest read the CRI log as soon as the container is EXITED; `ctrctl logs` after a wait) see
the whole output; until then the process is still running to every call, with its exit status
and time those of its reaping.

Every event is journaled before it is sent, with its sequence number; `events {"after": n}`
replays the journal past n and then follows live events. After its init process is deleted
the shim flushes what it has to send, removes its socket and exits.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from shim import journal, memory, oom, protocol, runc, stdio
from shim.protocol import Request
from shim.states import CREATED, PAUSED, RUNNING, STOPPED, refusal

DRAIN_TIMEOUT = 10.0  # how long a delete waits for a terminal's output to drain
EXIT_DRAIN_TIMEOUT = 2.0  # how long a logged init's exit waits for its output to be logged
FLUSH_TIMEOUT = 5.0  # how long an exiting shim tries to deliver what it has to send
# How long a shim with no task stays without a daemon connection: its daemon died (or gave up)
# between spawning it and the runtime's create, and nothing would ever stop it.
ORPHAN_TIMEOUT = 30.0
PID_FILE = "init.pid"
ADDRESS_FILE = "address"
SHIM_PID_FILE = "shim.pid"


class Config(NamedTuple):
    namespace: str
    id: str
    bundle: str
    socket: str  # the path this shim listens on
    address: str  # the daemon's address, for `ps` and logs
    runtime: str  # runtime binary, by name or path
    runtime_root: str  # the runtime's state root (`--root`)
    native_exec: bool = False  # runc's execs done by the shim when it can (shim.nsexec)


class ShimError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _not_found(what: str) -> ShimError:
    return ShimError(protocol.NOT_FOUND, what)


def _precondition(what: str) -> ShimError:
    return ShimError(protocol.FAILED_PRECONDITION, what)


def _refuse(process: Process, is_init: bool, operation: str) -> None:
    """Raise containerd's words (code UNKNOWN, as its shim's) if the process's state refuses
    the operation (`shim.states`)."""
    words = refusal(is_init, process.status, operation)
    if words is not None:
        raise ShimError(protocol.UNKNOWN, words)


class Process:
    def __init__(self, exec_id: str, io: stdio.Io, spec: Any = None) -> None:
        self.exec_id = exec_id
        self.io = io
        self.spec = spec
        self.pid = 0
        self.status = CREATED
        self.exit_status = 0
        self.exited_at = 0
        self.exit_held = False  # reaped, its exit waits for the output (see the module's doc)
        self.waiters: list[Callable[[], None]] = []

    def state(self) -> dict[str, Any]:
        return {
            "exec_id": self.exec_id,
            "pid": self.pid,
            "status": self.status,
            "stdin": self.io.stdin,
            "stdout": self.io.stdout,
            "stderr": self.io.stderr,
            "terminal": self.io.terminal,
            "exit_status": self.exit_status,
            "exited_at": self.exited_at,
        }

    def exit_info(self) -> dict[str, Any]:
        return {"pid": self.pid, "exit_status": self.exit_status, "exited_at": self.exited_at}


class Connection:
    """One daemon connection: frames in, frames out through a buffer, never blocking."""

    def __init__(self, shim: Shim, sock: socket.socket) -> None:
        self.shim = shim
        self.sock = sock
        sock.setblocking(False)
        self.fd = sock.fileno()
        self.decoder = protocol.Decoder()
        self.out = bytearray()
        self.subscribed = False
        self.closed = False
        shim.reactor.want(self.fd, read=self._read)

    def send(self, message: dict[str, Any]) -> None:
        if self.closed:
            return
        self.out += protocol.encode(message)
        self._flush()

    def _flush(self) -> None:
        try:
            sent = self.sock.send(self.out)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.close()
            return
        del self.out[:sent]
        self.shim.reactor.want(self.fd, read=self._read, write=self._flush if self.out else None)

    def _read(self) -> None:
        try:
            data = self.sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        try:
            for raw in self.decoder.feed(data):
                message = protocol.parse(raw)
                if not isinstance(message, Request):
                    raise protocol.ProtocolError("the daemon sent something other than a request")
                self.shim.handle(self, message)
        except protocol.ProtocolError as e:
            self.shim.log("protocol_error", error=str(e))
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.shim.reactor.forget(self.fd)
            self.sock.close()
            self.shim.connections.discard(self)
            if not self.shim.connections:
                self.shim.alone_since = time.monotonic()


DEFER = object()  # a handler's result: the answer will be sent later


class Shim:
    def __init__(self, config: Config, listener: socket.socket) -> None:
        self.config = config
        self.reactor = stdio.Reactor()
        self.listener = listener
        self.connections: set[Connection] = set()
        self.journal = journal.Journal(os.path.join(config.bundle, journal.FILENAME))  # type: ignore[arg-type]
        try:
            binary = runc.find(config.runtime)
            self._runtime_error = ""
        except runc.RuntimeFailed as e:  # reported by create, so the client learns why
            binary, self._runtime_error = config.runtime, str(e)
        self.runtime = runc.Runtime(
            binary, config.runtime_root, config.bundle, self._reaped, config.native_exec
        )
        self.init: Process | None = None
        self.execs: dict[str, Process] = {}
        self.deleted = False
        self.exiting = False
        self._exits: dict[int, int] = {}  # reaped pid -> wait status, not yet matched
        self._held_init_exit: tuple[int, int] | None = None
        self._timers: list[tuple[float, Callable[[], None]]] = []
        self._console_count = 0
        self._host_pid = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        listener.setblocking(False)
        self.reactor.want(listener.fileno(), read=self._accept)
        self.reactor.want(self._wake_r, read=self._signalled)
        self._terminate = False
        self._oom: oom.Watcher | None = None
        try:
            self._socket_inode = os.stat(config.socket).st_ino
        except OSError:
            self._socket_inode = -1
        self.alone_since = time.monotonic()  # since when no daemon is connected
        self.after(ORPHAN_TIMEOUT, self._check_orphaned)

    # -- the loop ---------------------------------------------------------------------------

    def serve(self) -> None:
        signal.set_wakeup_fd(self._wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        self._reap()
        deadline: float | None = None
        while True:
            if self.exiting:
                pending = any(c.out for c in self.connections) or self._draining()
                if deadline is None:
                    deadline = time.monotonic() + FLUSH_TIMEOUT
                if not pending or time.monotonic() > deadline:
                    break
            self.reactor.poll(self._timeout())
            self._run_timers()
        self._cleanup()

    def _draining(self) -> bool:
        return any(not p.io.done for p in self._processes())

    def _timeout(self) -> float | None:
        if self.exiting:
            return 0.05
        if not self._timers:
            return None
        return max(0.0, min(t for t, _ in self._timers) - time.monotonic())

    def after(self, seconds: float, callback: Callable[[], None]) -> None:
        self._timers.append((time.monotonic() + seconds, callback))

    def _run_timers(self) -> None:
        now = time.monotonic()
        due = [t for t in self._timers if t[0] <= now]
        if due:
            self._timers = [t for t in self._timers if t[0] > now]
            for _, callback in due:
                callback()

    def _check_orphaned(self) -> None:
        """A shim with no task and no daemon for ORPHAN_TIMEOUT exits (nothing of it runs)."""
        if self.init is not None or self.exiting:
            return  # a task: its daemon or the next one deletes it
        alone = time.monotonic() - self.alone_since
        if not self.connections and alone >= ORPHAN_TIMEOUT:
            self.log("orphaned", alone=round(alone, 1))
            self.exiting = True
            return
        self.after(ORPHAN_TIMEOUT / 3, self._check_orphaned)

    def _on_term(self, *_: object) -> None:
        self._terminate = True

    def _signalled(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 4096):
                pass
        self._reap()
        if self._terminate:
            self._terminate = False
            if not any(p.status in (RUNNING, PAUSED) for p in self._processes()):
                self.log("terminated")
                self.exiting = True

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        self.connections.add(Connection(self, sock))

    def _watch_oom(self, pid: int) -> None:
        watcher = oom.watch(pid)
        if watcher is None:
            return
        self._oom = watcher

        def woke() -> None:
            if watcher.read():
                with contextlib.suppress(ShimError):
                    self.emit("/tasks/oom", {"container_id": self.config.id})
            else:  # the cgroup is gone
                self.reactor.forget(watcher.fileno())
                watcher.close()
                self._oom = None

        self.reactor.want(watcher.fileno(), read=woke)

    def _cleanup(self) -> None:
        if self._oom is not None:
            self.reactor.forget(self._oom.fileno())
            self._oom.close()
        for process in self._processes():
            process.io.close()
        with contextlib.suppress(OSError):  # unless a newer shim listens there already
            if os.stat(self.config.socket).st_ino == self._socket_inode:
                os.unlink(self.config.socket)
        self.listener.close()
        for connection in list(self.connections):
            connection.close()
        self.journal.close()

    def log(self, event: str, **fields: Any) -> None:
        entry = {"time": time.time(), "event": event, "id": self.config.id, **fields}
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(json.dumps(entry) + "\n")
            sys.stderr.flush()

    # -- exits ------------------------------------------------------------------------------

    def _reaped(self, pid: int, status: int) -> None:
        """A child was reaped (possibly while a runtime command ran): match it later."""
        self._exits[pid] = status

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            self._exits[pid] = status
        self._match_exits()

    def _match_exits(self) -> None:
        exits, self._exits = self._exits, {}
        for pid, status in exits.items():
            process = next(
                (
                    p
                    for p in self._processes()
                    if p.pid == pid and p.status != STOPPED and not p.exit_held
                ),
                None,
            )
            if process is not None:  # other pids: runtime helpers, orphans of the container
                self._exited(process, journal.exit_status(status))

    def _exited(self, process: Process, status: int) -> None:
        now = time.time_ns()
        if process is self.init:
            running = [p for p in self.execs.values() if p.status == RUNNING]
            if running:  # announce the execs' exits first
                self._held_init_exit = (status, now)
                for p in running:
                    with contextlib.suppress(OSError):
                        os.kill(p.pid, signal.SIGKILL)
                return
            if self._host_pid:
                with contextlib.suppress(runc.RuntimeFailed):
                    self.runtime.run(["kill", "--all", self.config.id, "9"])
        self._finish(process, status, now)
        held = self._held_init_exit
        if held and self.init is not None and not any(p.status == RUNNING for p in self._execs()):
            self._held_init_exit = None
            self._finish(self.init, *held)

    def _finish(self, process: Process, status: int, at: int) -> None:
        if self._hold_exit(process, status, at):
            return
        process.status = STOPPED
        process.exit_status = status
        process.exited_at = at
        self.emit(
            "/tasks/exit",
            {
                "container_id": self.config.id,
                "id": process.exec_id or self.config.id,
                "exec_id": process.exec_id,
                "pid": process.pid,
                "exit_status": status,
                "exited_at": at,
            },
        )
        process.io.process_exited()
        waiters, process.waiters = process.waiters, []
        for waiter in waiters:
            waiter()

    def _hold_exit(self, process: Process, status: int, at: int) -> bool:
        """Whether the exit of a started init whose output is logged waits for that output to
        be in the log (see the module's doc); it is then finished once, at the output's end or
        after EXIT_DRAIN_TIMEOUT, whichever comes first."""
        if (
            process is not self.init
            or process.exit_held
            or process.status not in (RUNNING, PAUSED)
            or not process.io.logged
            or process.io.done
        ):
            return False
        process.exit_held = True

        def finish() -> None:
            if process.status == STOPPED:  # finished already (the other of the two)
                return
            if not process.io.done:
                self.log("exit_before_output_logged", pid=process.pid)
            self._finish(process, status, at)

        process.io.when_done(finish)
        self.after(EXIT_DRAIN_TIMEOUT, finish)
        return True

    # -- events -----------------------------------------------------------------------------

    def emit(self, topic: str, event: dict[str, Any]) -> int:
        """Journal an event, then send it to every subscriber; its sequence number."""
        try:
            record = self.journal.append(topic, event)
        except (OSError, journal.JournalError) as e:
            self.log("journal_failed", topic=topic, error=str(e))
            raise ShimError(protocol.INTERNAL, f"journal: {e}") from None
        wire = record.to_wire()
        for connection in list(self.connections):
            if connection.subscribed:
                connection.send(wire)
        return record.seq

    # -- requests ---------------------------------------------------------------------------

    def handle(self, connection: Connection, request: Request) -> None:
        method = getattr(self, "do_" + request.method, None)
        traced = request.params.get("traceparent")  # the daemon traces this call
        if traced:
            began, timings = time.time_ns(), list[dict[str, Any]]()
            self.runtime.timings = timings

        def answer(result: Any) -> None:
            if traced and isinstance(result, dict):  # its times, for the daemon's spans
                mine = {"name": f"shim.{request.method}", "start_ns": began}
                mine["end_ns"] = time.time_ns()
                result = {**result, "spans": [mine, *timings]}
            connection.send(protocol.Response(request.id, result).to_wire())

        try:
            if method is None:
                raise ShimError(protocol.UNIMPLEMENTED, f"unknown method {request.method!r}")
            result = method(request.params, answer, connection)
        except ShimError as e:
            connection.send(protocol.ErrorResponse(request.id, e.code, str(e)).to_wire())
        except runc.RuntimeFailed as e:
            connection.send(protocol.ErrorResponse(request.id, protocol.UNKNOWN, str(e)).to_wire())
        except (OSError, ValueError, TypeError, KeyError) as e:
            self.log("request_failed", method=request.method, error=repr(e), trace=traced)
            connection.send(
                protocol.ErrorResponse(request.id, protocol.INTERNAL, repr(e)).to_wire()
            )
        else:
            if result is not DEFER:
                answer(result)
        finally:
            self.runtime.timings = None
        self._match_exits()

    def _execs(self) -> list[Process]:
        return list(self.execs.values())

    def _processes(self) -> list[Process]:
        return ([self.init] if self.init else []) + list(self.execs.values())

    def _process(self, params: dict[str, Any]) -> Process:
        exec_id = params.get("exec_id") or ""
        if not exec_id:
            if self.init is None or self.deleted:
                raise _not_found(f'task "{self.config.id}" not found')
            return self.init
        if exec_id not in self.execs:
            raise _not_found(f"process does not exist {exec_id}")  # containerd's words
        return self.execs[exec_id]

    def _io(self, params: dict[str, Any]) -> stdio.Io:
        try:
            return stdio.Io(
                self.reactor,
                params.get("stdin") or "",
                params.get("stdout") or "",
                params.get("stderr") or "",
                bool(params.get("terminal")),
                self.config.namespace,
                self.config.id,
                bool(params.get("stdin_hold")),
            )
        except (OSError, ValueError) as e:
            raise ShimError(protocol.INVALID_ARGUMENT, f"stdio: {e}") from None

    def _console(self) -> tuple[socket.socket, str]:
        self._console_count += 1
        path = f"{self.config.socket}.{self._console_count}"
        return stdio.console_socket(path), path

    def do_ping(self, params: dict[str, Any], *_: object) -> Any:
        return {"pid": os.getpid(), "version": protocol.VERSION}

    def do_create(self, params: dict[str, Any], *_: object) -> Any:
        if self.init is not None:
            raise ShimError(protocol.ALREADY_EXISTS, f'task "{self.config.id}" already exists')
        if self._runtime_error:  # containerd's shim finds no log of runc's either
            log = os.path.join(self.config.bundle, runc.LOG)
            raise runc.RuntimeFailed(
                "OCI runtime create failed: unable to retrieve OCI runtime error "
                f"(open {log}: no such file or directory): {self._runtime_error}"
            )
        io = self._io(params)
        pid_file = os.path.join(self.config.bundle, PID_FILE)
        args = ["create", "--bundle", self.config.bundle, "--pid-file", pid_file]
        console = None
        try:
            if io.terminal:
                console, path = self._console()
                args += ["--console-socket", path]
            args.append(self.config.id)
            try:
                self.runtime.run(args, stdio=io.fds)
            except runc.RuntimeFailed as e:
                raise runc.RuntimeFailed(f"OCI runtime create failed: {e}") from None
            io.runtime_started()
            pid = int(_read(pid_file))
            if console is not None:
                io.attach_console(stdio.receive_master(console, path))
                console = None
        except BaseException:
            io.close()
            if console is not None:
                console.close()
            raise
        self._host_pid = _host_pid(self.config.bundle)
        self._watch_oom(pid)
        process = Process("", io)
        process.pid = pid
        self.init = process
        self.emit(
            "/tasks/create",
            {
                "container_id": self.config.id,
                "bundle": self.config.bundle,
                "rootfs": params.get("rootfs") or [],
                "io": {
                    "stdin": io.stdin,
                    "stdout": io.stdout,
                    "stderr": io.stderr,
                    "terminal": io.terminal,
                },
                "checkpoint": "",
                "pid": pid,
            },
        )
        return {"pid": pid, "seq": self.journal.last_seq}

    def do_start(self, params: dict[str, Any], *_: object) -> Any:
        process = self._process(params)
        _refuse(process, process is self.init, "start")
        if process is self.init:
            self.runtime.start(self.config.id, process.pid)
            process.status = RUNNING
            seq = self.emit("/tasks/start", {"container_id": self.config.id, "pid": process.pid})
            memory.mark_mergeable()  # what this shim mapped since its fork: see shim.memory
            return {"pid": process.pid, "seq": seq}
        assert self.init is not None
        if self.init.status != RUNNING:
            raise _precondition(f"cannot start an exec: init process is {self.init.status}")
        exec_id = process.exec_id
        pid_file = os.path.join(self.config.bundle, f"exec-{exec_id}.pid")
        console, path = None, ""
        try:
            if process.io.terminal:
                console, path = self._console()
            try:
                pid = self.runtime.exec(
                    self.config.id, process.spec, pid_file, process.io.fds, path
                )
            except runc.RuntimeFailed as e:
                # Nothing ran: its client's readers get their EOF now (ctr waits for them
                # before it reports the failure), and the exec stays created, as containerd's.
                process.io.close()
                raise runc.RuntimeFailed(f"OCI runtime exec failed: {e}") from None
            process.io.runtime_started()
            process.pid = pid
            if console is not None:
                process.io.attach_console(stdio.receive_master(console, path))
                console = None
        finally:
            if console is not None:
                console.close()
            with contextlib.suppress(OSError):
                os.unlink(pid_file)
        process.status = RUNNING
        seq = self.emit(
            "/tasks/exec-started",
            {"container_id": self.config.id, "exec_id": exec_id, "pid": process.pid},
        )
        return {"pid": process.pid, "seq": seq}

    def do_exec(self, params: dict[str, Any], *_: object) -> Any:
        exec_id = params.get("exec_id") or ""
        if self.init is None or self.deleted:
            raise _not_found(f'task "{self.config.id}" not found')
        if not exec_id:
            raise ShimError(protocol.INVALID_ARGUMENT, "exec id cannot be empty")
        if exec_id in self.execs:  # containerd reserves the id before it asks the state
            raise ShimError(protocol.ALREADY_EXISTS, f"id {exec_id}")
        _refuse(self.init, True, "exec")
        spec = params.get("spec")
        if not isinstance(spec, dict):
            raise ShimError(protocol.INVALID_ARGUMENT, "exec spec must be a JSON object")
        self.execs[exec_id] = Process(exec_id, self._io(params), spec)
        seq = self.emit("/tasks/exec-added", {"container_id": self.config.id, "exec_id": exec_id})
        return {"seq": seq}

    def do_state(self, params: dict[str, Any], *_: object) -> Any:
        return self._process(params).state()

    def do_pids(self, params: dict[str, Any], *_: object) -> Any:
        self._process({})
        # A stopped container's runc lists `null`: no processes, as containerd answers.
        pids = json.loads(self.runtime.run(["ps", "--format", "json", self.config.id]) or b"[]")
        pids = pids or []
        execs = {p.pid: p.exec_id for p in self.execs.values() if p.status == RUNNING}
        return [{"pid": pid, "exec_id": execs.get(pid, "")} for pid in pids]

    def do_kill(self, params: dict[str, Any], *_: object) -> Any:
        process = self._process(params)
        sig = int(params.get("signal") or signal.SIGTERM)
        # A stopped init still takes a kill of all (runc finds nothing to signal), as there.
        if process.status == STOPPED and not (process is self.init and params.get("all")):
            raise _not_found("process already finished")
        if process is self.init:
            try:
                self.runtime.kill(
                    self.config.id,
                    sig,
                    all=bool(params.get("all")),
                    pid=process.pid,
                    paused=process.status == PAUSED,
                )
            except runc.RuntimeFailed as e:
                self._reap()
                if (
                    process.status == STOPPED
                    or "not running" in str(e)
                    or "does not exist" in str(e)
                ):
                    raise _not_found(f"process already finished: {e}") from None
                raise
        else:
            if process.status == CREATED:
                raise _precondition("process not created")
            try:
                os.kill(process.pid, sig)
            except ProcessLookupError:
                raise _not_found("process already finished") from None
        return {}

    def do_resize_pty(self, params: dict[str, Any], *_: object) -> Any:
        process = self._process(params)
        self._reap()  # an exec that has exited is stopped, and refuses (containerd's words)
        _refuse(process, process is self.init, "resize")
        if not process.io.terminal:
            return {}  # containerd: nothing to resize, and no error
        process.io.resize(int(params.get("width") or 0), int(params.get("height") or 0))
        return {}

    def do_close_io(self, params: dict[str, Any], *_: object) -> Any:
        process = self._process(params)
        if params.get("stdin"):
            process.io.close_stdin()
        return {}

    def do_reopen_log(self, params: dict[str, Any], *_: object) -> Any:
        """Open the init's log (`ctrd-log://`) again by its path, creating it: kubelet renamed
        it to rotate it. Only while the container runs: a stopped one's log is left alone
        (no file is made). {"reopened": false} when the container has no such log."""
        process = self._process({})
        self._reap()
        if process.status not in (RUNNING, PAUSED):
            raise _precondition("container is not running")
        try:
            return {"reopened": process.io.reopen_log()}
        except OSError as e:
            raise ShimError(protocol.INTERNAL, f"reopen the container's log: {e}") from None

    def do_pause(self, params: dict[str, Any], *_: object) -> Any:
        process = self._process({})
        _refuse(process, True, "pause")
        self.runtime.run(["pause", self.config.id])
        process.status = PAUSED
        return {"seq": self.emit("/tasks/paused", {"container_id": self.config.id})}

    def do_resume(self, params: dict[str, Any], *_: object) -> Any:
        process = self._process({})
        _refuse(process, True, "resume")
        self.runtime.run(["resume", self.config.id])
        process.status = RUNNING
        return {"seq": self.emit("/tasks/resumed", {"container_id": self.config.id})}

    def do_update(self, params: dict[str, Any], *_: object) -> Any:
        process = self._process({})
        _refuse(process, True, "update")
        resources = json.dumps(params.get("resources") or {}).encode()
        self.runtime.run(["update", "--resources", "-", self.config.id], input=resources)
        return {}

    def do_wait(self, params: dict[str, Any], answer: Callable[[Any], None], *_: object) -> Any:
        process = self._process(params)
        if process.status == STOPPED:
            return process.exit_info()
        process.waiters.append(lambda: answer(process.exit_info()))
        return DEFER

    def do_delete(self, params: dict[str, Any], answer: Callable[[Any], None], *_: object) -> Any:
        process = self._process(params)
        _refuse(process, process is self.init, "delete")
        if process is not self.init:
            del self.execs[process.exec_id]
            if process.status == CREATED:  # never started: nothing ran, nothing exited
                process.io.close()
                return process.exit_info()
            return self._after_drain(process, answer, process.exit_info)
        if any(p.status in (RUNNING, PAUSED) for p in self.execs.values()):
            raise _precondition("cannot delete a task while its execs run")
        if process.status == CREATED:
            # Never started: its `runc init` is our child and waits alone in its container
            # (runc's `delete --force` would kill it too, then sleep 100 ms before looking).
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            self._wait_for_init(process)
        self.deleted = True
        with contextlib.suppress(runc.RuntimeFailed):
            self.runtime.delete(self.config.id)

        def deleted() -> dict[str, Any]:
            seq = self.emit(
                "/tasks/delete",
                # containerd's shim leaves the event's `id` empty for the init.
                {"container_id": self.config.id, **process.exit_info()},
            )
            for p in self.execs.values():
                p.io.close()
            self.exiting = True
            return {**process.exit_info(), "seq": seq}

        return self._after_drain(process, answer, deleted)

    def _wait_for_init(self, process: Process) -> None:
        """A created init was killed: reap it (it is our child)."""
        self._reap()
        deadline = time.monotonic() + 5
        while process.status != STOPPED and time.monotonic() < deadline:
            try:
                pid, status = os.waitpid(process.pid, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                self._exited(process, journal.exit_status(status))
                break
            time.sleep(0.005)
        if process.status != STOPPED:
            self._finish(process, 128 + signal.SIGKILL, time.time_ns())

    def _after_drain(
        self, process: Process, answer: Callable[[Any], None], result: Callable[[], Any]
    ) -> Any:
        """`result()` once the process's output has drained (or after DRAIN_TIMEOUT)."""
        if process.io.done:
            process.io.close()
            return result()
        answered = False

        def finish() -> None:
            nonlocal answered
            if answered:
                return
            answered = True
            if not process.io.done:
                self.log("io_not_drained", exec_id=process.exec_id)
            process.io.close()
            try:
                answer(result())
            except ShimError as e:
                self.log("delete_failed", error=str(e))

        process.io.when_done(finish)
        self.after(DRAIN_TIMEOUT, finish)
        return DEFER

    def do_shutdown(self, params: dict[str, Any], *_: object) -> Any:
        if self.init is not None and not self.deleted and not params.get("now"):
            return {"exiting": False}
        self.exiting = True
        return {"exiting": True}

    def do_events(
        self, params: dict[str, Any], answer: Callable[[Any], None], connection: Connection
    ) -> Any:
        after = int(params.get("after") or 0)
        answer({"last_seq": self.journal.last_seq})
        for record in self.journal.since(after):
            connection.send(record.to_wire())
        connection.subscribed = True
        return DEFER


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _host_pid(bundle: str) -> bool:
    """Whether the container shares the host's pid namespace (no pid namespace of its own)."""
    try:
        with open(os.path.join(bundle, "config.json")) as f:
            spec = json.load(f)
        namespaces = spec.get("linux", {}).get("namespaces", [])
        return not any(ns.get("type") == "pid" and not ns.get("path") for ns in namespaces)
    except (OSError, ValueError, AttributeError):
        return False


def write_files(config: Config) -> None:
    """Record where this shim listens and its pid in the bundle (atomically each)."""
    for name, text in (
        (ADDRESS_FILE, f"unix://{config.socket}"),
        (SHIM_PID_FILE, str(os.getpid())),
    ):
        path = os.path.join(config.bundle, name)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)


def serve(config: Config, listener: socket.socket) -> None:
    shim = Shim(config, listener)
    write_files(config)
    shim.log("started", pid=os.getpid(), socket=config.socket)
    shim.serve()
    shim.log("exited")
