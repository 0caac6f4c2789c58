"""ctrd.services.logs.v1.Logs: read the logs shims keep for containers (`ctrd-log://`).

A task whose stdout and stderr are "ctrd-log://" gets a log under the root,
`<root>/logs/<namespace>/<container>/log.json`, rotated by size (`[logs]` in the config) into
`log.json.1`, `log.json.2`...; the shim writes it in docker's json-file format (see
`shim.logfile`). The log outlives its task and the daemon, and goes with its container.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import shutil
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import grpc

from shim import logfile
from supervisor import identifiers
from supervisor.api.ctrd.services.logs.v1 import logs_pb2 as pb
from supervisor.api.ctrd.services.logs.v1 import logs_pb2_grpc as pb_grpc
from supervisor.errors import InvalidArgument, NotFound
from supervisor.services import rpc

Context = grpc.aio.ServicerContext[Any, Any]
POLL = 0.1  # seconds between looks at a followed log
FILE = "log.json"


class Logs:
    """Where the logs live, and what a task's "ctrd-log://" becomes."""

    def __init__(self, root: Path, max_size: int, max_files: int) -> None:
        self.root = root
        self.max_size = max_size
        self.max_files = max_files

    def path(self, namespace: str, cid: str) -> Path:
        identifiers.validate(namespace)
        identifiers.validate(cid)
        return self.root / namespace / cid / FILE

    def resolve(self, namespace: str, cid: str, uri: str) -> str:
        """The concrete URI for a stdio path: "ctrd-log://" names this container's log, and
        "ctrd-log://?tee=/fifo" the same log with the stream also copied to that FIFO."""
        parts = urlsplit(uri)
        if parts.scheme != logfile.SCHEME or parts.netloc or parts.path.strip("/"):
            return uri
        query = [("max-size", str(self.max_size)), ("max-files", str(self.max_files))]
        tee = dict(parse_qsl(parts.query)).get("tee", "")
        if tee:
            if not tee.startswith("/"):
                raise InvalidArgument(f'"{uri}": tee must be an absolute path')
            query.append(("tee", tee))
        return f"{logfile.SCHEME}://{self.path(namespace, cid)}?{urlencode(query)}"

    def remove(self, namespace: str, cid: str) -> None:
        """A container's logs go with it."""
        shutil.rmtree(self.path(namespace, cid).parent, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(self.root / namespace)


def _files(path: Path) -> list[Path]:
    """The log's files, oldest first."""
    rotated = sorted(
        (p for p in path.parent.glob(FILE + ".*") if p.suffix[1:].isdigit()),
        key=lambda p: -int(p.suffix[1:]),
    )
    return [*rotated, path] if path.exists() else rotated


def _parse_time(text: str) -> int:
    """Nanoseconds since the epoch of an RFC 3339 time with up to nanoseconds."""
    head, _, frac = text.rstrip("Z").partition(".")
    seconds = int(dt.datetime.fromisoformat(head).replace(tzinfo=dt.UTC).timestamp())
    return seconds * 1_000_000_000 + int((frac + "000000000")[:9])


def _entries(lines: Iterator[bytes]) -> Iterator[pb.LogEntry]:
    for line in lines:
        try:
            raw = json.loads(line)
            entry = pb.LogEntry(stream=raw["stream"], data=raw["log"].encode())
            entry.time.FromNanoseconds(_parse_time(raw["time"]))
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line while the shim writes it
        yield entry


class LogsService(pb_grpc.LogsServicer):
    def __init__(self, logs: Logs, running: Callable[[str, str], bool]) -> None:
        self._logs = logs
        self._running = running

    async def Read(self, request: pb.ReadRequest, context: Context) -> AsyncIterator[pb.LogEntry]:
        ns = rpc.namespace(context)
        if not request.container_id:
            raise InvalidArgument("container id is required")
        path = self._logs.path(ns, request.container_id)
        files = await asyncio.to_thread(_files, path)
        if not files:
            raise NotFound(f'container "{request.container_id}" has no log kept by ctrd')
        since = request.since.ToNanoseconds() if request.HasField("since") else 0
        until = request.until.ToNanoseconds() if request.HasField("until") else 0

        def wanted(entry: pb.LogEntry) -> bool:
            at = entry.time.ToNanoseconds()
            return at >= since and (not until or at < until)

        def backlog() -> tuple[list[pb.LogEntry], int, int]:
            keep: deque[pb.LogEntry] | list[pb.LogEntry]
            keep = deque(maxlen=request.tail) if request.HasField("tail") else []
            inode, offset = 0, 0
            for file in files:
                with contextlib.suppress(FileNotFoundError), open(file, "rb") as f:
                    data = f.read()
                    keep.extend(e for e in _entries(iter(data.splitlines())) if wanted(e))
                    if file == path:
                        inode, offset = os.fstat(f.fileno()).st_ino, len(data)
            return list(keep), inode, offset

        entries, inode, offset = await asyncio.to_thread(backlog)
        for entry in entries:
            yield entry
        if not request.follow or until:
            return
        pending = b""
        while True:
            running = self._running(ns, request.container_id)
            data, inode, offset = await asyncio.to_thread(_more, path, inode, offset)
            pending += data
            cut = pending.rfind(b"\n") + 1
            for entry in _entries(iter(pending[:cut].splitlines())):
                if wanted(entry):
                    yield entry
            pending = pending[cut:]
            if not running and not data:
                return  # the task is gone and everything it wrote was read
            await asyncio.sleep(POLL)


def _more(path: Path, inode: int, offset: int) -> tuple[bytes, int, int]:
    """What the log has beyond `offset`; from the start of a new file after a rotation."""
    try:
        with open(path, "rb") as f:
            current = os.fstat(f.fileno()).st_ino
            if current != inode:
                inode, offset = current, 0
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return b"", inode, offset
    return data, inode, offset + len(data)
