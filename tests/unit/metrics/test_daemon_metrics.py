"""ctrd's own metrics: the counters counted where things happen, and the gauges of what the
daemon holds, read through prometheus_client's text parser from a real metadata database."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from supervisor.api.containerd.events import task_pb2
from supervisor.eventlog import EventLog
from supervisor.events import Exchange
from supervisor.metadata.db import Database
from supervisor.metrics import counts
from supervisor.metrics.daemon import DaemonMetrics, TaskView

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _scrape(metrics: DaemonMetrics) -> Samples:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(metrics)
    text = generate_latest(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _get(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _fill(conn: sqlite3.Connection) -> None:
    now = time.time_ns()
    for ns in ("default", "k8s.io"):
        conn.execute("INSERT INTO namespaces (name, created_at) VALUES (?, ?)", (ns, now))
    for ns, digest, size in (("default", "sha256:a", 100), ("k8s.io", "sha256:a", 100)):
        conn.execute(
            "INSERT INTO blobs (namespace, digest, size, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (ns, digest, size, now, now),
        )
    conn.execute(
        "INSERT INTO blobs (namespace, digest, size, created_at, updated_at)"
        " VALUES ('default', 'sha256:b', 23, ?, ?)",
        (now, now),
    )
    conn.execute(
        "INSERT INTO networks (namespace, id, name, driver, subnet, gateway, created_at)"
        " VALUES ('default', 'n1', 'front', 'bridge', '10.9.0.0/24', '10.9.0.1', ?)",
        (now,),
    )
    for cid, address in (("c1", "10.9.0.2"), ("c2", "10.9.0.3")):
        conn.execute(
            "INSERT INTO endpoints (namespace, network, container, address, created_at)"
            " VALUES ('default', 'n1', ?, ?, ?)",
            (cid, address, now),
        )
    conn.execute(
        "INSERT INTO ports (namespace, network, container, proto, host_port, container_port)"
        " VALUES ('default', 'n1', 'c1', 'tcp', 8080, 80)"
    )
    for cid, kind in (("pod1", "sandbox"), ("pod2", "sandbox"), ("ctr1", "container")):
        conn.execute(
            "INSERT INTO containers (namespace, id, labels, runtime_name, created_at, updated_at)"
            " VALUES ('k8s.io', ?, ?, 'io.containerd.runc.v2', ?, ?)",
            (cid, f'{{"io.cri-containerd.kind": "{kind}"}}', now, now),
        )


async def _daemon_state(root: Path) -> None:
    db = await Database.open(root / "meta.db")
    try:
        await db.write(_fill)
    finally:
        await db.close()
    log = await EventLog.open(root / "events.db", 3600, 1000)
    try:
        exchange = Exchange(log)
        for _ in range(3):
            await exchange.publish("default", "/tasks/oom", task_pb2.TaskOOM(container_id="c1"))
    finally:
        await log.close()


def test_gauges_read_what_the_daemon_holds(tmp_path: Path) -> None:
    published = counts.EVENTS_PUBLISHED.values.get(("/tasks/oom",), 0.0)
    asyncio.run(_daemon_state(tmp_path))
    tasks = [
        TaskView("default", "c1", "running", True),
        TaskView("default", "c2", "stopped", False),
        TaskView("k8s.io", "ctr1", "running", True),
    ]
    samples = _scrape(DaemonMetrics(lambda: tasks, tmp_path, ("overlayfs",), "k8s.io"))
    assert _get(samples, "ctrd_shims_alive") == 2
    assert _get(samples, "ctrd_tasks", namespace="default", state="running") == 1
    assert _get(samples, "ctrd_tasks", namespace="default", state="stopped") == 1
    assert _get(samples, "ctrd_content_blobs") == 2  # a digest shared by namespaces once
    assert _get(samples, "ctrd_content_bytes") == 123
    assert _get(samples, "ctrd_network_endpoints", namespace="default", network="front") == 2
    net = {"namespace": "default", "network": "front"}
    assert _get(samples, "ctrd_network_addresses_in_use", **net) == 2
    assert _get(samples, "ctrd_network_published_ports", **net) == 1
    assert _get(samples, "ctrd_cri_pods", state="not_running") == 2
    assert _get(samples, "ctrd_cri_containers", state="running") == 1
    assert _get(samples, "ctrd_event_journal_events") == 3
    assert _get(samples, "ctrd_event_journal_bytes") > 0
    assert _get(samples, "ctrd_events_published_total", topic="/tasks/oom") == published + 3


def test_database_figures_are_read_again_only_after_the_ttl(tmp_path: Path) -> None:
    asyncio.run(_daemon_state(tmp_path))
    metrics = DaemonMetrics(list, tmp_path, (), "k8s.io", ttl=3600)
    first = metrics.stored()
    with sqlite3.connect(tmp_path / "meta.db") as conn:
        conn.execute("DELETE FROM blobs")
    assert metrics.stored() is first
    assert DaemonMetrics(list, tmp_path, (), "k8s.io", ttl=0).stored().blobs == 0


def test_counters_and_histograms_are_served_from_zero_and_move(tmp_path: Path) -> None:
    metrics = DaemonMetrics(list, tmp_path, (), "k8s.io")  # an empty root: no databases yet
    before = _scrape(metrics)
    assert ("ctrd_gc_runs_total", frozenset()) in before
    assert ("ctrd_task_starts_total", frozenset({("result", "error")})) in before
    assert ("ctrd_content_bytes", frozenset()) in before
    counts.TASK_STEP_SECONDS.observe(0.003, "shim")
    counts.PULL_BYTES.inc(by=10)
    after = _scrape(metrics)
    shim = {"step": "shim"}
    assert _get(after, "ctrd_task_start_step_seconds_count", **shim) == (
        _get(before, "ctrd_task_start_step_seconds_count", **shim) + 1
    )
    assert _get(after, "ctrd_task_start_step_seconds_bucket", le="0.005", **shim) == (
        _get(before, "ctrd_task_start_step_seconds_bucket", le="0.005", **shim) + 1
    )
    assert _get(after, "ctrd_task_start_step_seconds_bucket", le="0.0025", **shim) == (
        _get(before, "ctrd_task_start_step_seconds_bucket", le="0.0025", **shim)
    )
    assert (
        _get(after, "ctrd_image_pull_bytes_total")
        == _get(before, "ctrd_image_pull_bytes_total") + 10
    )


def test_counting_never_loads_prometheus_client() -> None:
    """Every daemon imports the counting side; prometheus_client only one serving /v1/metrics."""
    code = (
        "import sys, supervisor.metrics.counts, supervisor.events, supervisor.runtime.manager;"
        "sys.exit('prometheus_client' in sys.modules)"
    )
    repo = Path(__file__).parents[3]
    assert subprocess.run([sys.executable, "-c", code], cwd=repo).returncode == 0


def test_label_values_past_the_limit_are_counted_as_other() -> None:
    counter = counts.Counter("ctrd_test_total", "test", ["topic"], limit=2)
    for topic in ("/a", "/b", "/c", "/d", "/a"):
        counter.inc(topic)
    assert counter.snapshot() == {("/a",): 2.0, ("/b",): 1.0, ("other",): 2.0}
