"""ctrd's own counters and histograms, counted where things happen, without prometheus_client.

The parts of the daemon that count (the task manager, the exchange, the collector, pull and
push) import this module and nothing else of `supervisor.metrics`: it is plain Python, costs a
dict update per count, and keeps prometheus_client (~70 ms to import) out of a daemon that
serves no metrics. `supervisor.metrics.daemon` turns these into metric families at scrape
time.

The numbers are the process's, like client libraries' default registries: a counter only
grows, from the process's start. Counts happen on the event loop; a scrape reads them from
its own thread (dict copies under the GIL), so no lock is taken on the counting side.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

Labels = tuple[str, ...]


class Counter:
    """A counter family: a value per label values, made at its first count (or at zero from
    the start: an unlabelled counter, and the label values in `seed`)."""

    def __init__(
        self,
        name: str,
        doc: str,
        labels: Sequence[str] = (),
        seed: Sequence[Labels] = (),
        limit: int = 0,
    ) -> None:
        self.name = name
        self.doc = doc
        self.labels = tuple(labels)
        self.values: dict[Labels, float] = dict.fromkeys(seed if labels else [()], 0.0)
        # Label values a client chooses (an event's topic) are counted under "other" past
        # `limit` distinct ones: a series per value would grow without bound.
        self._limit = limit

    def inc(self, *labels: str, by: float = 1.0) -> None:
        value = self.values.get(labels)
        if value is None and self._limit and len(self.values) >= self._limit:
            labels = ("other",) * len(labels)
            value = self.values.get(labels)
        self.values[labels] = (value or 0.0) + by

    def snapshot(self) -> dict[Labels, float]:
        return dict(self.values)


class _Series:
    __slots__ = ("counts", "sum")

    def __init__(self, size: int) -> None:
        self.counts = [0] * size  # per bucket, the last one +Inf
        self.sum = 0.0


class Histogram:
    """A histogram family over fixed upper bounds (+Inf implied), per label values."""

    def __init__(
        self,
        name: str,
        doc: str,
        buckets: Sequence[float],
        labels: Sequence[str] = (),
        seed: Sequence[Labels] = (),
    ) -> None:
        self.name = name
        self.doc = doc
        self.labels = tuple(labels)
        self.buckets = tuple(buckets)
        self.series: dict[Labels, _Series] = {
            key: _Series(len(self.buckets) + 1) for key in (seed if labels else [()])
        }

    def observe(self, value: float, *labels: str) -> None:
        series = self.series.get(labels)
        if series is None:
            series = self.series[labels] = _Series(len(self.buckets) + 1)
        series.counts[bisect.bisect_left(self.buckets, value)] += 1
        series.sum += value

    def snapshot(self) -> dict[Labels, tuple[list[int], float]]:
        """Per label values: the cumulative counts (one per bound, then +Inf) and the sum."""
        out = {}
        for labels, series in list(self.series.items()):
            cumulative, total = [], 0
            for count in list(series.counts):
                total += count
                cumulative.append(total)
            out[labels] = (cumulative, series.sum)
        return out


# Buckets: a start's steps take 1 ms to a few seconds; a GC run 1 ms to a minute.
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
GC_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0)

# The steps of a task's start, in order: the root filesystem mounted (snapshot), the bundle
# written (bundle), the shim forked and connected (shim), the container's network made ready
# (network; only for containers that have one, and only the wait past the steps before, which
# it overlaps), `runc create` (create), and the init started (start).
STEPS = ("snapshot", "bundle", "shim", "network", "create", "start")

RESULTS = (("ok",), ("error",))
TASK_CREATES = Counter(
    "ctrd_task_creates_total", "Tasks created, by result (ok, error).", ["result"], RESULTS
)
TASK_STARTS = Counter(
    "ctrd_task_starts_total",
    "Task init processes started, by result (ok, error).",
    ["result"],
    RESULTS,
)
TASK_STEP_SECONDS = Histogram(
    "ctrd_task_start_step_seconds",
    "Time of each step of a task's creation and start that succeeded (snapshot, bundle, shim, "
    "network, create, start).",
    STEP_BUCKETS,
    ["step"],
    [(step,) for step in STEPS if step != "network"],
)
EXITS_RECOVERED = Counter(
    "ctrd_task_exits_recovered_total",
    "Exits that happened while no daemon ran, found in the shims' journals at a restart.",
)
EVENTS_PUBLISHED = Counter(
    "ctrd_events_published_total",
    "Events published on the exchange, by topic (past 64 topics, the others as 'other').",
    ["topic"],
    limit=64,
)
GC_RUNS = Counter("ctrd_gc_runs_total", "Garbage collections run.")
GC_SECONDS = Histogram("ctrd_gc_duration_seconds", "Time of each garbage collection.", GC_BUCKETS)
GC_KINDS = ("blobs", "leases", "ingests", "snapshots", "files")
GC_REMOVED = Counter(
    "ctrd_gc_removed_total",
    "What garbage collections removed, by kind (blobs, leases, ingests, snapshots: records; "
    "files: blob files, ingest directories and backend snapshots on disk).",
    ["kind"],
    [(kind,) for kind in GC_KINDS],
)
GC_FREED_BYTES = Counter(
    "ctrd_gc_freed_content_bytes_total", "Bytes of content blobs removed by garbage collections."
)
PULLS = Counter(
    "ctrd_image_pulls_total", "Image pulls, by result (ok, error).", ["result"], RESULTS
)
PULL_BYTES = Counter(
    "ctrd_image_pull_bytes_total",
    "Bytes fetched from registries by pulls (manifests, configs and layers; blobs the content "
    "store had already are not fetched).",
)
PUSHES = Counter(
    "ctrd_image_pushes_total", "Image pushes, by result (ok, error).", ["result"], RESULTS
)
PUSH_BYTES = Counter(
    "ctrd_image_push_bytes_total",
    "Bytes uploaded to registries by pushes (blobs the registry had or mounted are not sent).",
)

COUNTERS = (
    TASK_CREATES, TASK_STARTS, EXITS_RECOVERED, EVENTS_PUBLISHED, GC_RUNS, GC_REMOVED,
    GC_FREED_BYTES, PULLS, PULL_BYTES, PUSHES, PUSH_BYTES,
)  # fmt: skip
HISTOGRAMS = (TASK_STEP_SECONDS, GC_SECONDS)
