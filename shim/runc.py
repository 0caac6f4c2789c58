"""Running the OCI runtime (runc, or crun: they take the same command line) from the shim.

The shim is a child subreaper and reaps every child with `waitpid(-1)`, so it cannot let
anything else wait for a runtime command: `run` spawns the command and reaps until that command
is among the dead. Whatever else it reaps meanwhile (a container's process that exited, which
may be the very process the command started) is handed to `on_reaped`, so no exit is lost.

runc's own errors go to `--log` as JSON lines (its stdio may be the container's), from which
`RuntimeFailed` takes the last error message, as containerd does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence

LOG = "log.json"


class RuntimeFailed(Exception):
    """The runtime command failed; the message is the runtime's own error."""


def find(binary: str) -> str:
    """The path of a runtime binary named by name or path; RuntimeFailed if there is none."""
    if "/" in binary:
        if os.access(binary, os.X_OK):
            return binary
        raise RuntimeFailed(f'runtime "{binary}" is not an executable file')
    for directory in os.environ.get(
        "PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    ).split(":"):
        path = os.path.join(directory or ".", binary)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    raise RuntimeFailed(f'runtime "{binary}" binary not installed: not found in $PATH')


class Runtime:
    """One container's runtime: its binary, its state root, its log in the bundle."""

    def __init__(
        self,
        binary: str,
        root: str,
        bundle: str,
        on_reaped: Callable[[int, int], None],
    ) -> None:
        self.binary = binary
        self.root = root
        self.bundle = bundle
        self.log = os.path.join(bundle, LOG)
        self._on_reaped = on_reaped

    def run(
        self,
        args: Sequence[str],
        stdio: tuple[int, int, int] | None = None,
        input: bytes | None = None,
    ) -> bytes:
        """Run `<runtime> --root R --log L --log-format json <args>`; its stdout.

        `stdio` are the fds the command gets as 0, 1 and 2 (a container created or exec'd
        without a terminal inherits them); otherwise stdin is `input` (or empty) and stdout is
        captured. Raises RuntimeFailed with the runtime's error when it exits non-zero.
        """
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


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
