"""ctrd's own metrics: what `supervisor.metrics.counts` counted, and gauges of what the daemon
holds, made at scrape time.

`DaemonMetrics` is a collector for `registry.register`, bound to one daemon's state:

- from memory, at every scrape: the shims alive and the tasks by namespace and state (the
  task manager's table: no shim is asked);
- from the databases, at most once per `ttl` seconds (a scrape in between gets the last
  figures): content blobs and their bytes, images, snapshots and the bytes committed
  snapshots hold (usage stored at commit; an active snapshot's bytes would need a walk of its
  directory), network endpoints, their addresses and the published ports, the CRI's pods and
  containers, and the event journal's size. These are a few aggregate queries on read-only
  connections opened for the refresh, on the scrape's thread; SQLite's WAL lets them read
  beside the daemon's writers without waiting for them or holding them up.

Everything here runs on the scrape's worker thread (the registry's rule): the task table is
copied (a dict copy under the GIL), nothing awaits.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from supervisor.metrics import counts

TTL = 5.0  # seconds a database figure is served before it is read again
_KINDS = {1: "view", 2: "active", 3: "committed"}  # snapshotter.protocol.Kind
_CRI_KIND = '$."io.cri-containerd.kind"'


@dataclass(frozen=True)
class TaskView:
    """What a scrape reads of one task (from the task manager's `Task`)."""

    namespace: str
    id: str
    state: str  # created, running, paused, pausing, stopped, unknown
    shim_alive: bool


@dataclass
class Stored:
    """The figures read from the databases at one refresh."""

    blobs: int = 0
    blob_bytes: int = 0
    images: dict[str, int] = field(default_factory=dict)  # namespace -> count
    snapshots: dict[tuple[str, str], int] = field(default_factory=dict)  # (snapshotter, kind)
    snapshot_bytes: dict[str, int] = field(default_factory=dict)  # snapshotter -> bytes
    endpoints: dict[tuple[str, str], int] = field(default_factory=dict)  # (ns, network)
    addresses: dict[tuple[str, str], int] = field(default_factory=dict)
    ports: dict[tuple[str, str], int] = field(default_factory=dict)
    cri_pods: list[str] = field(default_factory=list)  # ids
    cri_containers: list[str] = field(default_factory=list)
    journal_events: int = 0
    journal_bytes: int = 0


def _read_only(path: Path) -> sqlite3.Connection | None:
    """A read-only connection to `path`, or None when it does not exist (yet)."""
    if not path.exists():
        return None
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 1000")
    return conn


def _files_size(path: Path) -> int:
    """A SQLite database's bytes on disk: the file and its write-ahead log."""
    total = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(FileNotFoundError):
            total += os.stat(f"{path}{suffix}").st_size
    return total


def read_stored(root: Path, snapshotters: Sequence[str], cri_namespace: str) -> Stored:
    """One refresh of the database figures (blocking; the scrape's thread)."""
    stored = Stored()
    meta = _read_only(root / "meta.db")
    if meta is not None:
        with contextlib.closing(meta):
            _read_meta(meta, stored, cri_namespace)
    for name in snapshotters:
        backend = _read_only(root / "snapshots" / name / "metadata.db")
        if backend is None:
            continue
        with contextlib.closing(backend):
            rows = backend.execute(
                "SELECT kind, COUNT(*), COALESCE(SUM(size), 0) FROM snapshots GROUP BY kind"
            ).fetchall()
        for kind, count, size in rows:
            stored.snapshots[(name, _KINDS.get(kind, "unknown"))] = count
            if kind == 3:
                stored.snapshot_bytes[name] = size
        stored.snapshot_bytes.setdefault(name, 0)
    events = _read_only(root / "events.db")
    if events is not None:
        with contextlib.closing(events):
            first, last = events.execute("SELECT MIN(seq), MAX(seq) FROM events").fetchone()
        stored.journal_events = 0 if first is None else last - first + 1
        stored.journal_bytes = _files_size(root / "events.db")
    return stored


def _read_meta(conn: sqlite3.Connection, stored: Stored, cri_namespace: str) -> None:
    stored.blobs, stored.blob_bytes = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(size), 0)"
        " FROM (SELECT digest, MAX(size) AS size FROM blobs GROUP BY digest)"
    ).fetchone()
    stored.images = dict(
        conn.execute("SELECT namespace, COUNT(*) FROM images GROUP BY namespace").fetchall()
    )
    stored.endpoints = {
        (ns, net): n
        for ns, net, n in conn.execute(
            "SELECT e.namespace, n.name, COUNT(*) FROM endpoints e JOIN networks n"
            " ON n.id = e.network GROUP BY e.namespace, n.name"
        )
    }
    stored.addresses = {
        (ns, net): n
        for ns, net, n in conn.execute(
            "SELECT e.namespace, n.name, COUNT(DISTINCT e.address) FROM endpoints e"
            " JOIN networks n ON n.id = e.network WHERE e.address != ''"
            " GROUP BY e.namespace, n.name"
        )
    }
    stored.ports = {
        (ns, net): n
        for ns, net, n in conn.execute(
            "SELECT p.namespace, n.name, COUNT(*) FROM ports p JOIN networks n"
            " ON n.id = p.network GROUP BY p.namespace, n.name"
        )
    }
    for cid, kind in conn.execute(
        f"SELECT id, json_extract(labels, '{_CRI_KIND}') FROM containers"
        " WHERE namespace = ? AND json_valid(labels)",
        (cri_namespace,),
    ):
        if kind == "sandbox":
            stored.cri_pods.append(cid)
        elif kind == "container":
            stored.cri_containers.append(cid)


class DaemonMetrics(Collector):
    """The collector of ctrd's own metrics, for one daemon."""

    def __init__(
        self,
        tasks: Callable[[], list[TaskView]],
        root: Path,
        snapshotters: Sequence[str],
        cri_namespace: str,
        ttl: float = TTL,
    ) -> None:
        self._tasks = tasks
        self._root = root
        self._snapshotters = tuple(snapshotters)
        self._cri_namespace = cri_namespace
        self._ttl = ttl
        self._lock = threading.Lock()  # one refresh at a time; scrapes may overlap
        self._stored: Stored | None = None
        self._read_at = 0.0

    def stored(self) -> Stored:
        with self._lock:
            now = time.monotonic()
            if self._stored is None or now - self._read_at >= self._ttl:
                self._stored = read_stored(self._root, self._snapshotters, self._cri_namespace)
                self._read_at = now
            return self._stored

    def describe(self) -> list[Metric]:
        return [*_counted(), *_gauges([], Stored(), "")]

    def collect(self) -> Iterator[Metric]:
        yield from _counted()
        yield from _gauges(self._tasks(), self.stored(), self._cri_namespace)


def _counted() -> Iterator[Metric]:
    for counter in counts.COUNTERS:
        family = CounterMetricFamily(counter.name, counter.doc, labels=counter.labels)
        for labels, value in counter.snapshot().items():
            family.add_metric(list(labels), value)
        yield family
    for histogram in counts.HISTOGRAMS:
        bounds = [f"{b:g}" for b in histogram.buckets] + ["+Inf"]
        hist = HistogramMetricFamily(histogram.name, histogram.doc, labels=histogram.labels)
        for labels, (cumulative, total) in histogram.snapshot().items():
            hist.add_metric(list(labels), list(zip(bounds, cumulative, strict=True)), total)
        yield hist


def _gauge(name: str, doc: str, labels: Sequence[str], values: dict[Any, int]) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=list(labels))
    for key, value in values.items():
        family.add_metric(list(key) if isinstance(key, tuple) else [key], value)
    return family


def _gauges(tasks: list[TaskView], stored: Stored, cri_namespace: str) -> Iterator[Metric]:
    by_state: dict[tuple[str, str], int] = {}
    for t in tasks:
        by_state[(t.namespace, t.state)] = by_state.get((t.namespace, t.state), 0) + 1
    yield GaugeMetricFamily(
        "ctrd_shims_alive", "Shims the daemon is connected to.",
        value=sum(1 for t in tasks if t.shim_alive),
    )  # fmt: skip
    yield _gauge("ctrd_tasks", "Tasks by namespace and state.", ["namespace", "state"], by_state)
    yield GaugeMetricFamily("ctrd_content_blobs", "Blobs in the content store.", value=stored.blobs)
    yield GaugeMetricFamily(
        "ctrd_content_bytes", "Bytes of the blobs in the content store.", value=stored.blob_bytes
    )
    yield _gauge("ctrd_images", "Images by namespace.", ["namespace"], stored.images)
    yield _gauge(
        "ctrd_snapshots", "Backend snapshots by snapshotter and kind.", ["snapshotter", "kind"],
        stored.snapshots,
    )  # fmt: skip
    yield _gauge(
        "ctrd_snapshot_committed_bytes",
        "Bytes on disk of the committed snapshots (their usage at commit), by snapshotter.",
        ["snapshotter"],
        stored.snapshot_bytes,
    )
    net = ["namespace", "network"]
    yield _gauge("ctrd_network_endpoints", "Endpoints by network.", net, stored.endpoints)
    yield _gauge(
        "ctrd_network_addresses_in_use", "Addresses held by endpoints, by network.", net,
        stored.addresses,
    )  # fmt: skip
    yield _gauge(
        "ctrd_network_published_ports", "Host ports published, by network.", net, stored.ports
    )
    running = {t.id for t in tasks if t.namespace == cri_namespace and t.state == "running"}
    yield _gauge(
        "ctrd_cri_pods",
        "CRI pod sandboxes, by whether a task of theirs runs (a pause process: only pods "
        "that share a PID namespace have one).",
        ["state"],
        _split(stored.cri_pods, running),
    )
    yield _gauge(
        "ctrd_cri_containers",
        "CRI containers, by whether their task runs.",
        ["state"],
        _split(stored.cri_containers, running),
    )
    yield GaugeMetricFamily(
        "ctrd_event_journal_events", "Events kept in the event journal.",
        value=stored.journal_events,
    )  # fmt: skip
    yield GaugeMetricFamily(
        "ctrd_event_journal_bytes", "Bytes on disk of the event journal (with its WAL).",
        value=stored.journal_bytes,
    )  # fmt: skip


def _split(ids: list[str], running: set[str]) -> dict[str, int]:
    up = sum(1 for i in ids if i in running)
    return {"running": up, "not_running": len(ids) - up}


def task_views(tasks: Callable[[], list[Any]]) -> Callable[[], list[TaskView]]:
    """The scrape's view of a task manager's `all()`: the init's state from its events, as
    `Task.init_state` tells it (a shim that just died is being buried: still running)."""

    def views() -> list[TaskView]:
        out = []
        for t in tasks():
            state = "running" if t.dead else (t.status or "unknown")
            if "" in t.exits:
                state = "stopped"
            alive = t.client is not None and not t.dead and t.gone is None
            out.append(TaskView(t.namespace, t.id, state, alive))
        return out

    return views


class OwnMetrics:
    """The gRPC server's metrics (a `Tap` for the registrar) and ctrd's own, registered for one
    daemon until `unregister`."""

    def __init__(
        self, tasks: Callable[[], list[Any]], root: Path, snapshotters: Sequence[str], cri: str
    ) -> None:
        from supervisor.metrics.grpc import GrpcMetrics
        from supervisor.metrics.registry import register

        self.grpc = GrpcMetrics()
        self._unregister = [
            register(self.grpc),
            register(DaemonMetrics(task_views(tasks), root, snapshotters, cri)),
        ]

    def unregister(self) -> None:
        for unregister in self._unregister:
            unregister()
