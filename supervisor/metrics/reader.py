"""Reader processes: the containers' share of a scrape, read and formatted off the daemon's GIL.

A scrape of 1000 containers reads ~27,000 cgroup files and formats ~60,000 samples: ~0.45 s
of Python on this 2-core VM. On one of the daemon's threads that time is taken from every RPC
under the GIL and bounded by one core. The daemon therefore hands it to a few reader
processes (`python -m supervisor.metrics.reader`, one per core up to 4): it sends each a
consecutive slice of the located containers (`containers.Target`) and joins their
`containers.Part`s in order, so the output is the one `containers.render` makes in-thread.

Invariants:
- A reader is a child of the daemon that only reads cgroup and /proc files and formats text;
  it keeps nothing between scrapes but the cgroup places of the last one. It exits when its
  stdin ends: when the pool closes it, or when the daemon dies (the kernel closes the
  daemon's end of the pipe).
- The protocol is one pickle each way per scrape over the reader's stdin and stdout, pipes
  that only the daemon holds; requests are written whole before any answer is read, and a
  reader writes its answer only once it is complete, so neither side waits on the other's
  pipe buffer. A request names each container's cgroup place by a key when the reader had
  it in the previous request, so a steady scrape sends ~30 bytes a container, not its paths
  (whose pickling, and the reader's unpickling, held the daemon's writes up ~10 ms).
- A reader that fails (exits, answers an error) fails only that scrape's fast path:
  `render_parts` answers None, the caller renders in-thread, and the reader is replaced at
  the next scrape.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import structlog

import supervisor
from supervisor.metrics import containers

log = structlog.get_logger("ctrd.metrics")

MAX_READERS = 4
PIPE_SIZE = 1 << 20  # Linux's default pipe-max-size


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
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):  # a first request, places and all, fits at once
            fcntl.fcntl(self.proc.stdin.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        # The places it was sent in the last request, by id(); holding them keeps the ids.
        self._sent: dict[int, containers._Place] = {}

    def send(self, targets: list[containers.Target]) -> None:
        """The targets, each place by a key the reader knows or with the place itself."""
        assert self.proc.stdin is not None
        rows, new, sent = [], {}, {}
        for namespace, cid, stopped, place in targets:
            key = id(place)
            if self._sent.get(key) is not place:
                new[key] = place
            sent[key] = place
            rows.append((namespace, cid, stopped, key))
        self._sent = sent
        self.proc.stdin.write(pickle.dumps((rows, new), protocol=pickle.HIGHEST_PROTOCOL))
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
        return self.submit(targets)()

    def submit(
        self, targets: list[containers.Target]
    ) -> Callable[[], list[containers.Part] | None]:
        """Send the slices now; the call returned collects the parts (`render_parts`), and
        must be made: the pool is the caller's until then."""
        self._lock.acquire()
        try:
            if self._closed:
                self._lock.release()
                return lambda: None
            self._fill()
            readers = self._readers[: max(1, min(len(self._readers), len(targets)))]
            step, extra = divmod(len(targets), len(readers))
            failed: list[_Reader] = []
            sent: list[_Reader] = []
            begin = 0
            for i, reader in enumerate(readers):
                end = begin + step + (1 if i < extra else 0)
                try:
                    reader.send(targets[begin:end])
                    sent.append(reader)
                except OSError as e:
                    log.warning("metrics_reader_failed", pid=reader.proc.pid, error=str(e))
                    failed.append(reader)
                begin = end
        except BaseException:
            self._lock.release()
            raise

        def collect() -> list[containers.Part] | None:
            try:
                parts: list[containers.Part] = []
                for reader in sent:  # every answer is read: no reader is left mid-protocol
                    try:
                        parts.append(reader.receive())
                    except (OSError, EOFError, pickle.UnpicklingError, RuntimeError) as e:
                        log.warning("metrics_reader_failed", pid=reader.proc.pid, error=str(e))
                        failed.append(reader)
                for reader in failed:
                    self._readers.remove(reader)
                    reader.close()
                return None if failed else parts
            finally:
                self._lock.release()

        return collect

    def close(self) -> None:
        with self._lock:
            self._closed = True
            readers, self._readers = self._readers, []
        for reader in readers:
            reader.close()


def serve(requests: IO[bytes], answers: IO[bytes]) -> None:
    """A reader's loop until EOF: (rows, new places) in, ("ok", part) or ("error", text) out.

    A row is (namespace, id, stopped, the key of its place); the places are kept from one
    request to the next, for the keys the last request used (`_Reader.send`)."""
    places: dict[int, containers._Place] = {}
    while True:
        try:
            rows, new = pickle.load(requests)
        except EOFError:
            return
        answer: tuple[str, Any]
        try:
            places.update(new)
            targets = [containers.Target(n, c, s, places[key]) for n, c, s, key in rows]
            places = {key: places[key] for *_, key in rows}
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
