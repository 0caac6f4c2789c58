"""Reader processes: the containers' share of a scrape, read and formatted off the daemon's GIL.

A scrape of 1000 containers reads ~27,000 cgroup files and formats ~60,000 samples: ~0.45 s
of Python on this 2-core VM. On one of the daemon's threads that time is taken from every RPC
under the GIL and bounded by one core. The daemon therefore hands it to a few reader
processes (`python -m supervisor.metrics.reader`, one per core up to 4): it sends each a
consecutive slice of the located containers (`containers.Target`) and joins their
`containers.Part`s in order, so the output is the one `containers.render` makes in-thread.

Invariants:
- A reader is a child of the daemon that only reads cgroup and /proc files and formats text;
  it holds no state between scrapes but the imports. It exits when its stdin ends: when the
  pool closes it, or when the daemon dies (the kernel closes the daemon's end of the pipe).
- The protocol is one pickle each way per scrape over the reader's stdin and stdout, pipes
  that only the daemon holds; requests are written whole before any answer is read, and a
  reader writes its answer only once it is complete, so neither side waits on the other's
  pipe buffer.
- A reader that fails (exits, answers an error) fails only that scrape's fast path:
  `render_parts` answers None, the caller renders in-thread, and the reader is replaced at
  the next scrape.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

import structlog

import supervisor
from supervisor.metrics import containers

log = structlog.get_logger("ctrd.metrics")

MAX_READERS = 4


def default_size() -> int:
    """One reader per core the daemon may run on, at most MAX_READERS."""
    try:
        cores = len(os.sched_getaffinity(0))
    except OSError:
        cores = os.cpu_count() or 1
    return max(1, min(MAX_READERS, cores))


def _environment() -> dict[str, str]:
    """The daemon's environment, with the directory its own `supervisor` package came from
    first on the reader's path (a daemon run from a source tree finds it through its cwd)."""
    env = dict(os.environ)
    root = str(Path(supervisor.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


class _Reader:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor.metrics.reader"],
            env=_environment(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
            process_group=0,  # a terminal's Ctrl-C is the daemon's to handle, not the reader's
        )

    def send(self, targets: list[containers.Target]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(pickle.dumps(targets, protocol=pickle.HIGHEST_PROTOCOL))
        self.proc.stdin.flush()

    def receive(self) -> containers.Part:
        assert self.proc.stdout is not None
        status, value = pickle.load(self.proc.stdout)
        if status != "ok":
            raise RuntimeError(value)
        return containers.Part(*value)

    def close(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class ReaderPool:
    """`size` reader processes, started at the first scrape (or `start`), for one daemon."""

    def __init__(self, size: int | None = None) -> None:
        self.size = size if size is not None else default_size()
        self._readers: list[_Reader] = []
        self._lock = threading.Lock()
        self._closed = False

    def start(self) -> None:
        """Start the readers now (their imports take ~0.1 s), rather than at the first scrape."""
        with self._lock:
            self._fill()

    def _fill(self) -> None:
        while not self._closed and len(self._readers) < self.size:
            self._readers.append(_Reader())

    def pids(self) -> list[int]:
        with self._lock:
            return [r.proc.pid for r in self._readers]

    def render_parts(self, targets: list[containers.Target]) -> list[containers.Part] | None:
        """The parts of consecutive slices of `targets`, one per reader; None if a reader
        failed (it is replaced at the next call) or the pool is closed."""
        with self._lock:
            if self._closed:
                return None
            self._fill()
            readers = self._readers[: max(1, min(len(self._readers), len(targets)))]
            step, extra = divmod(len(targets), len(readers))
            slices, begin = [], 0
            for i in range(len(readers)):
                end = begin + step + (1 if i < extra else 0)
                slices.append(targets[begin:end])
                begin = end
            failed: list[_Reader] = []
            parts: list[containers.Part] = []
            sent: list[_Reader] = []
            for reader, chunk in zip(readers, slices, strict=True):
                try:
                    reader.send(chunk)
                    sent.append(reader)
                except OSError as e:
                    log.warning("metrics_reader_failed", pid=reader.proc.pid, error=str(e))
                    failed.append(reader)
            for reader in sent:  # every answer is read, so no reader is left mid-protocol
                try:
                    parts.append(reader.receive())
                except (OSError, EOFError, pickle.UnpicklingError, RuntimeError) as e:
                    log.warning("metrics_reader_failed", pid=reader.proc.pid, error=str(e))
                    failed.append(reader)
            for reader in failed:
                self._readers.remove(reader)
                reader.close()
            return None if failed else parts

    def close(self) -> None:
        with self._lock:
            self._closed = True
            readers, self._readers = self._readers, []
        for reader in readers:
            reader.close()


def serve(requests: IO[bytes], answers: IO[bytes]) -> None:
    """A reader's loop: a list of targets in, ("ok", part) or ("error", text) out, until EOF."""
    while True:
        try:
            targets = pickle.load(requests)
        except EOFError:
            return
        answer: tuple[str, Any]
        try:
            answer = ("ok", tuple(containers.render_part(targets)))
        except Exception as e:  # the daemon logs it and renders this scrape itself
            answer = ("error", f"{type(e).__name__}: {e}")
        try:
            answers.write(pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL))
            answers.flush()
        except BrokenPipeError:
            return


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
