"""Running the OCI runtime (runc, or crun: they take the same command line) from the shim.

The shim is a child subreaper and reaps every child with `waitpid(-1)`, so it cannot let
anything else wait for a runtime command: `run` spawns the command and reaps until that command
is among the dead. Whatever else it reaps meanwhile (a container's process that exited, which
may be the very process the command started) is handed to `on_reaped`, so no exit is lost.

runc's own errors go to `--log` as JSON lines (its stdio may be the container's), from which
`RuntimeFailed` takes the last error message, as containerd does.

Two of runc's commands are only file operations, which the shim does itself to save starting
a Go program each time (~8 ms apiece here, a tenth of a short container's whole life):

- `runc start` opens the container's `exec.fifo` for reading: the waiting `runc init` then
  writes a byte, closes the FIFO as it execs the container's process, and the reader, having
  seen the byte and the end of the FIFO, removes it (which is what makes runc call the
  container running). `start` does the same, waiting as runc does if the init died meanwhile.
- `runc delete` of a stopped container removes its cgroups and its state directory. `delete`
  does that when nothing else is asked of runc: the container had a PID namespace of its own (so
  none of its processes outlives its init), no poststop hook, no Intel RDT group and cgroupfs
  cgroups; and only once its init is reaped.

- `runc kill` without `--all` sends the signal to the container's init, once it has checked
  that the init still runs. `kill` does that when the init is running or created but not paused
  (runc also thaws a paused container for SIGKILL); the init is the shim's child, so its pid
  cannot be reused before the shim reaps it.

An exec's process spec is not written to a file: it goes to the runtime in a memfd, as fd
PROCESS_FD, named `--process /proc/self/fd/3` (runc and crun open the path; neither passes an
fd it did not make to the process it starts). Nothing is left to remove if the shim dies.

Anything else (crun, which uses its FIFO the other way round; a state this code does not know;
a cgroup that will not go at once) is left to the runtime's own command, which also retries.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import time
from collections.abc import Callable, Sequence
from typing import Any

from shim import nsexec

LOG = "log.json"
EXEC_FIFO = "exec.fifo"  # in runc's state directory: <root>/<id>/
STATE = "state.json"
PROCESS_FD = 3  # where `exec` hands the runtime its process spec


class RuntimeFailed(Exception):
    """The runtime command failed; the message is the runtime's own error."""


def find(binary: str) -> str:
    """The path of a runtime binary named by name or path; RuntimeFailed if there is none,
    in the words Go's os/exec gives containerd's shim."""
    if "/" in binary:
        if os.access(binary, os.X_OK) and not os.path.isdir(binary):
            return binary
        why = "permission denied" if os.path.exists(binary) else "no such file or directory"
        raise RuntimeFailed(f"fork/exec {binary}: {why}")
    for directory in os.environ.get(
        "PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    ).split(":"):
        path = os.path.join(directory or ".", binary)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    raise RuntimeFailed(f'exec: "{binary}": executable file not found in $PATH')


class Runtime:
    """One container's runtime: its binary, its state root, its log in the bundle."""

    def __init__(
        self,
        binary: str,
        root: str,
        bundle: str,
        on_reaped: Callable[[int, int], None],
        native_exec: bool = False,
    ) -> None:
        self.binary = binary
        self.native_exec = native_exec
        self.root = root
        self.bundle = bundle
        # While the shim handles a traced request: each command's name and times (wall clock,
        # ns), for its answer (`shim.task`); None otherwise, which costs nothing.
        self.timings: list[dict[str, Any]] | None = None
        self.log = os.path.join(bundle, LOG)
        self._on_reaped = on_reaped

    def run(
        self,
        args: Sequence[str],
        stdio: tuple[int, int, int] | None = None,
        input: bytes | None = None,
        process: bytes | None = None,
    ) -> bytes:
        """Run `<runtime> --root R --log L --log-format json <args>`; its stdout.

        `stdio` are the fds the command gets as 0, 1 and 2 (a container created or exec'd
        without a terminal inherits them); otherwise stdin is `input` (or empty) and stdout is
        captured. `process`, when given, is what the command reads at /proc/self/fd/PROCESS_FD.
        Raises RuntimeFailed with the runtime's error when it exits non-zero.
        """
        if self.timings is not None:  # a traced request: its runtime commands are timed
            began = time.time_ns()
            try:
                return self._run(args, stdio, input, process)
            finally:
                name = f"{os.path.basename(self.binary)} {args[0]}"
                self.timings.append({"name": name, "start_ns": began, "end_ns": time.time_ns()})
        return self._run(args, stdio, input, process)

    def exec(
        self,
        cid: str,
        process: dict[str, Any],
        pid_file: str,
        stdio: tuple[int, int, int],
        console_socket: str = "",
    ) -> int:
        """`runtime exec --detach` of `process` (an OCI process) in the container `cid`; its
        pid. The spec goes through a memfd (see the module's doc); `pid_file` is where runc
        writes the pid. runc's execs that need nothing else are the shim's (`shim.nsexec`)."""
        if self.native_exec and self._is_runc:
            pid = self._exec_natively(cid, process, stdio, console_socket)
            if pid:
                return pid
        args = ["exec", "--detach", "--process", f"/proc/self/fd/{PROCESS_FD}"]
        args += ["--pid-file", pid_file]
        if console_socket:
            args += ["--console-socket", console_socket]
        self.run([*args, cid], stdio=stdio, process=json.dumps(process).encode())
        with open(pid_file, "rb") as f:
            return int(f.read().strip())

    def _exec_natively(
        self,
        cid: str,
        process: dict[str, Any],
        stdio: tuple[int, int, int],
        console_socket: str,
    ) -> int:
        """The exec done by `shim.nsexec`: its pid, or 0 when it is runc's to do."""
        began = time.time_ns()
        try:
            with open(os.path.join(self.root, cid, STATE), "rb") as f:
                state = json.load(f)
            plan = nsexec.plan(cid, state, process, _alive, self.binary)
        except (OSError, ValueError, nsexec.Unsupported):
            return 0
        try:
            return nsexec.start(plan, stdio, console_socket)
        except nsexec.ExecFailed as e:
            raise RuntimeFailed(f"exec failed: unable to start container process: {e}") from None
        except OSError as e:
            raise RuntimeFailed(f"exec failed: {e}") from None
        finally:
            if self.timings is not None:
                self.timings.append(
                    {"name": "exec (shim)", "start_ns": began, "end_ns": time.time_ns()}
                )

    def _run(
        self,
        args: Sequence[str],
        stdio: tuple[int, int, int] | None,
        input: bytes | None,
        process: bytes | None = None,
    ) -> bytes:
        argv = [self.binary, "--root", self.root, "--log", self.log, "--log-format", "json"]
        argv += args
        out = -1
        close: list[int] = []
        try:
            if stdio is None:
                stdin = os.memfd_create("runtime-stdin", os.MFD_CLOEXEC)
                close.append(stdin)
                if input:
                    os.write(stdin, input)
                    os.lseek(stdin, 0, os.SEEK_SET)
                out = os.memfd_create("runtime-stdout", os.MFD_CLOEXEC)
                close.append(out)
                null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
                close.append(null)
                stdio = (stdin, out, null)
            actions = [(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(stdio)]
            if process is not None:
                spec = os.memfd_create("runtime-process", os.MFD_CLOEXEC)
                close.append(spec)
                _write_all(spec, process)
                actions.append((os.POSIX_SPAWN_DUP2, spec, PROCESS_FD))
            size = _size(self.log)
            try:
                pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=actions)
            except OSError as e:
                raise RuntimeFailed(f"{argv[0]}: {e.strerror}") from None
            status = self._wait(pid)
            if status != 0:
                raise RuntimeFailed(
                    self._last_error(size) or f"{argv[0]} {args[0]} exited {status}"
                )
            if out < 0:
                return b""
            os.lseek(out, 0, os.SEEK_SET)
            chunks = []
            while chunk := os.read(out, 1 << 16):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            for fd in close:
                os.close(fd)

    def start(self, cid: str, pid: int) -> None:
        """Start the created container `cid` whose init is `pid` (see the module's doc)."""
        if not (self._is_runc and self._release(cid, pid)):
            self.run(["start", cid])

    def delete(self, cid: str) -> None:
        """Delete the container `cid`, whose init has been reaped (see the module's doc)."""
        if not (self._is_runc and self._destroy(cid)):
            self.run(["delete", "--force", cid])

    def kill(self, cid: str, sig: int, *, all: bool, pid: int, paused: bool) -> None:
        """Signal the container `cid` whose init is `pid`: its init, or with `all` every process
        in its cgroup (see the module's doc). RuntimeFailed if the init no longer runs."""
        if all or paused or not self._is_runc:
            self.run(["kill", *(["--all"] if all else []), cid, str(sig)])
        elif not _alive(pid):
            raise RuntimeFailed("container not running")
        else:
            os.kill(pid, sig)

    @property
    def _is_runc(self) -> bool:
        return os.path.basename(self.binary) == "runc"

    def _release(self, cid: str, pid: int) -> bool:
        """`runc start`: read the init's byte from the exec FIFO, then remove it.

        False when there is no FIFO to read (then runc itself says why).
        """
        fifo = os.path.join(self.root, cid, EXEC_FIFO)
        try:
            # Non-blocking: the open must not wait for a writer that died, and reading returns
            # what an init wrote before it died, as runc's open-and-read does.
            fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            data = b""
            while True:
                if poller.poll(100):
                    chunk = os.read(fd, 64)
                    if not chunk:  # the writer closed it: the init exec'd (or died)
                        break
                    data += chunk
                elif not _alive(pid):  # no writer will come
                    with contextlib.suppress(BlockingIOError):
                        data += os.read(fd, 64)
                    if not data:
                        raise RuntimeFailed("container process is already dead")
                    break
        finally:
            os.close(fd)
        if not data:
            raise RuntimeFailed("cannot start an already running container")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(fifo)
        return True

    def _destroy(self, cid: str) -> bool:
        """`runc delete` of a stopped container, when nothing but removing is needed."""
        directory = os.path.join(self.root, cid)
        try:
            with open(os.path.join(directory, STATE), "rb") as f:
                state = json.load(f)
            paths = list(state["cgroup_paths"].values())
            if not _only_removal(state) or _alive(
                int(state["init_process_pid"]), int(state["init_process_start"])
            ):
                return False
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False
        for path in paths:
            try:
                os.rmdir(path)
            except FileNotFoundError:
                continue
            except OSError:  # not empty yet, or has children of its own: runc's retries
                return False
        shutil.rmtree(directory, ignore_errors=True)
        return True

    def _wait(self, pid: int) -> int:
        while True:
            try:
                reaped, status = os.waitpid(-1, 0)
            except ChildProcessError:  # cannot happen: `pid` is our child and not reaped yet
                return 255
            except InterruptedError:
                continue
            if reaped == pid:
                return os.waitstatus_to_exitcode(status)
            self._on_reaped(reaped, status)

    def _last_error(self, since: int) -> str:
        """The last error runc logged after offset `since` of its log."""
        try:
            with open(self.log, "rb") as f:
                f.seek(since)
                lines = f.read().splitlines()
        except OSError:
            return ""
        for line in reversed(lines):
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and entry.get("level") in ("error", "fatal"):
                return str(entry.get("msg", ""))
        return ""


def _only_removal(state: dict[str, Any]) -> bool:
    """Whether `runc delete` of this stopped container would only remove things."""
    config = state["config"]
    own_pids = any(ns.get("type") == "NEWPID" and not ns.get("path") for ns in config["namespaces"])
    return (
        own_pids
        and not (config.get("Hooks") or {}).get("poststop")
        and not config.get("intel_rdt")
        and not state.get("intel_rdt_path")
        and not config["cgroups"].get("systemd")
    )


def _alive(pid: int, started: int | None = None) -> bool:
    """Whether `pid` runs (a zombie does not), and is the process started at `started` (clock
    ticks after boot, as /proc/PID/stat and runc's state say) when that is given."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    fields = stat[stat.rfind(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):
        return False
    return started is None or int(fields[19]) == started


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
